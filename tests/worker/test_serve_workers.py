"""`quanta-serve`'s workers, seen from outside: what their processes hold, and what
happens when the kernel kills one (a real serve process, real worker processes)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.hostile import ADMIN_TOKEN, TOKEN, Server
from tests.support.live_service import running_service
from tests.support.waiting import wait_until


def worker_pids(server: Server) -> list[int]:
    """The serve process's worker children (`python -m worker.main`)."""
    found = subprocess.run(["pgrep", "-P", str(server.process.pid), "-f", "worker.main"],
                           capture_output=True, text=True).stdout.split()
    return sorted(int(pid) for pid in found)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, server: Server) -> None:
    """`wait_until`, with the service's log tail in the message (what it did instead)."""
    try:
        wait_until(condition, timeout, what, interval=0.3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{server.log()[-4000:]}") from None


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


# --- slow clients ----------------------------------------------------------------------


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (what it sent first, such
    as a 503, is read and skipped)."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_slow_headers_and_too_many_connections_cannot_hold_the_server(tmp_path: Path) -> None:
    """60 clients sending their headers a byte at a time are closed after
    QUANTA_HEADER_TIMEOUT_S; past QUANTA_MAX_CONNECTIONS a connection gets 503 at once;
    a normal client is served all along. (Before: all held after 30 s.)"""
    with running_service(tmp_path, workers=0, header_timeout_s=8, max_connections=50) as live:
        slow = []
        for _ in range(45):
            sock = socket.create_connection(("127.0.0.1", live.port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            slow.append(sock)
        assert httpx.get(f"{live.url}/healthz", timeout=10).status_code == 200  # 46th
        extra = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(10)]
        refused: list[bytes] = []
        waiting, deadline = list(extra), time.monotonic() + 5  # the refused answer at once
        while len(refused) < 5 and time.monotonic() < deadline:
            answered, _, _ = select.select(waiting, [], [], deadline - time.monotonic())
            for sock in answered:
                refused.append(sock.recv(200))
                waiting.remove(sock)
        assert len(refused) == 5, refused  # 50 open at most: the 51st and later
        assert all(r.startswith(b"HTTP/1.1 503") and b"QUANTA_MAX_CONNECTIONS" in r
                   for r in refused)
        started = time.monotonic()
        for i, sock in enumerate(slow):
            if i % 5 == 0:  # a byte now and then does not keep a head alive
                with contextlib.suppress(OSError):
                    sock.sendall(b"s")
            assert closed_by_server(sock, within=30), "a slow head was held past 30 s"
        assert time.monotonic() - started < 30
        for sock in slow + extra:
            sock.close()
        assert httpx.get(f"{live.url}/healthz", timeout=10).status_code == 200
