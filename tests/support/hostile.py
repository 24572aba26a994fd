"""A real `quanta-serve` in a subprocess, and a client that behaves like an attacker.

The hostile-client tests (tests/api/test_body_limits.py, test_stream_limits.py, and
tests/worker/test_serve_workers.py) measure what the server process does
(its resident memory, its answers, how soon) while raw sockets stream bodies at it, so
they need a real uvicorn with real framing, not the in-process TestClient.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.live_service import LiveService

TOKEN = "alice-secret-token-0123456789"
ADMIN_TOKEN = "admin-secret-token-0123456789"
MiB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class Server(LiveService):
    """`quanta-serve` with SQLite, two tokens (alice's and an admin's) and `workers` workers
    (none by default: queued jobs stay queued)."""

    def __init__(self, tmp: Path, workers: int = 0, **settings: Any) -> None:
        values: dict[str, Any] = {"api_tokens": f"alice:{TOKEN},root:{ADMIN_TOKEN}:admin",
                                  "requeue_interval_s": 1, **settings}
        super().__init__(tmp, workers, args=("--log-level", "WARNING"), stop_timeout=20,
                         **values)

    def log(self) -> str:
        return self.text()

    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    def headers(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@dataclass
class Attack:
    """What came back from one streamed request."""

    status: int | None  # None: the connection was closed without an answer
    sent: int  # body bytes the server let us send before answering
    seconds: float
    peak_rss_growth: int
    response: bytes


def stream_body(server: Server, path: str, headers: dict[str, str], total: int,
                chunk: int = 256 * 1024, chunked: bool = True, first: bytes = b"") -> Attack:
    """POST `total` bytes to `path` over a raw socket, `chunked` (no Content-Length) or
    with a Content-Length, watching for an answer between writes; `first` starts the
    body (a multipart preamble). Samples the server's RSS as it goes."""
    base_rss = server.rss()
    peak = base_rss
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setblocking(False)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    pending = ("\r\n".join(lines) + "\r\n\r\n").encode()
    filler = b"x" * chunk
    sent = 0
    response = b""
    began = time.monotonic()
    closed = False
    finished = False
    try:
        while time.monotonic() - began < 120:
            readable, writable, _ = select.select([sock], [sock] if not finished else [],
                                                  [], 1.0)
            peak = max(peak, server.rss())
            if readable:
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
                if not data:
                    closed = True
                    break
                response += data
                if b"\r\n\r\n" in response and _complete(response):
                    break
                continue
            if writable and not finished:
                if not pending:
                    if sent >= total:
                        pending = b"0\r\n\r\n" if chunked else b""
                        finished = True
                        if not pending:
                            continue
                    else:
                        piece = (first + filler)[: min(chunk, total - sent)] if sent == 0 \
                            else filler[: min(chunk, total - sent)]
                        sent += len(piece)
                        pending = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
                                   if chunked else piece)
                try:
                    written = sock.send(pending)
                    pending = pending[written:]
                except (BlockingIOError, InterruptedError):
                    pass
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
    finally:
        seconds = time.monotonic() - began
        peak = max(peak, server.rss())
        sock.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else None
    assert status is not None or closed, "no answer within the time allowed"
    return Attack(status, sent, seconds, peak - base_rss, response)


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True
