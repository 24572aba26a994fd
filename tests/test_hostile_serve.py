"""`quanta-serve`'s workers, seen from outside: what their processes hold, and what
happens when the kernel kills one (a real serve process, real worker processes)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

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
