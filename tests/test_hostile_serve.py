"""`quanta-serve`'s workers, seen from outside: what their processes hold, and what
happens when the kernel kills one (a real serve process, real worker processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from hostile import ADMIN_TOKEN, TOKEN, Server


def worker_pids(server: Server) -> list[int]:
    """The serve process's worker children (`python -m worker.main`)."""
    found = subprocess.run(["pgrep", "-P", str(server.process.pid), "-f", "worker.main"],
                           capture_output=True, text=True).stdout.split()
    return sorted(int(pid) for pid in found)


def wait_for(condition: object, timeout: float, what: str, server: Server) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout}s\n{server.log()[-4000:]}")


def test_workers_do_not_hold_the_api_tokens(tmp_path: Path) -> None:
    with Server(tmp_path, workers=1) as server:
        wait_for(lambda: worker_pids(server), 30, "a worker started", server)
        (pid,) = worker_pids(server)
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"QUANTA_DATABASE_URL=" in environ  # it has what it needs
        assert b"QUANTA_API_TOKENS" not in environ
        assert TOKEN.encode() not in environ and ADMIN_TOKEN.encode() not in environ
        api_environ = Path(f"/proc/{server.process.pid}/environ").read_bytes()
        assert TOKEN.encode() in api_environ  # the API does


def test_a_killed_worker_is_restarted_and_readyz_counts_it(tmp_path: Path) -> None:
    """SIGKILL (what the kernel's out-of-memory killer sends) a worker of a real
    quanta-serve: /readyz sees it gone, the serve process starts it again, and /readyz
    counts it once it beats."""
    with Server(tmp_path, workers=1, heartbeat_s=1) as server:
        def workers() -> int | None:
            return httpx.get(f"{server.base}/readyz", timeout=5).json().get("workers")

        wait_for(lambda: workers() == 1, 120, "/readyz counted the worker", server)
        (first,) = worker_pids(server)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: workers() == 0, 30, "/readyz saw the worker gone", server)
        wait_for(lambda: worker_pids(server) and worker_pids(server) != [first], 30,
                 "a new worker process", server)
        wait_for(lambda: workers() == 1, 120, "/readyz counted the new worker", server)
        assert server.process.poll() is None
    log = server.log()
    assert "killed by signal 9" in log and "restarted worker0" in log, log[-3000:]


def test_workers_die_with_a_killed_quanta_serve(tmp_path: Path) -> None:
    """`kill -9` of quanta-serve once left its workers running as orphans that kept taking
    jobs beside the restarted service's workers of the same names; now each gets SIGTERM
    from the kernel as its parent dies (PR_SET_PDEATHSIG) and stops."""
    with Server(tmp_path, workers=1) as server:
        wait_for(lambda: worker_pids(server), 30, "a worker started", server)
        (pid,) = worker_pids(server)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)

        def gone() -> bool:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            except FileNotFoundError:
                return True
            return state == "Z"  # ended, waiting to be reaped by init

        wait_for(gone, 120, f"the orphaned worker {pid} stopped", server)
