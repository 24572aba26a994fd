"""Event streams as a resource: caps per token and in all, revoked tokens, and streams
that wait without holding a thread (a real quanta-serve for the first two)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from tests.support import REPO
from tests.support.hostile import ADMIN_TOKEN, TOKEN, Server
from tests.support.jobs import TINY_SOURCE
from tests.support.waiting import wait_until


class OpenStream:
    """A raw GET of an event stream, left open: its status line and what came so far."""

    def __init__(self, server: Server, job_id: str, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          f"Authorization: Bearer {token}\r\n\r\n".encode())
        self.data = b""
        while b"\r\n\r\n" not in self.data:
            self.data += self.sock.recv(65536)
        self.status = int(self.data.split(b" ", 2)[1])

    def read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        self.sock.settimeout(1)
        while marker not in self.data and time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            self.data += chunk
        return self.data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("streams")
    with Server(tmp, max_streams_per_token=2, max_streams=3, stream_auth_recheck_s=1,
                requeue_interval_s=0) as running:
        yield running


def queued_job(server: Server, token: str = TOKEN) -> str:
    """A job no worker takes (the service runs none): its stream stays open."""
    response = httpx.post(f"{server.base}/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE},
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def open_with_status(server: Server, token: str, job_id: str, want: int = 200,
                     timeout: float = 30) -> OpenStream:
    """A stream opened once the server answers `want` (a closed stream's slot comes back
    only when the server sees it gone: until then a new one is refused with 429)."""

    def opened() -> OpenStream | None:
        stream = OpenStream(server, job_id, token)
        if stream.status == want:
            return stream
        stream.close()
        return None

    return wait_until(opened, timeout, f"a stream of job {job_id} answered {want}",
                      interval=0.3)


def test_streams_are_capped_per_token_and_in_all(server: Server) -> None:
    mine, admins = queued_job(server), queued_job(server, ADMIN_TOKEN)
    streams: list[OpenStream] = []  # all closed at the end, even on failure: slots are shared

    def opened(job_id: str, token: str) -> OpenStream:
        streams.append(OpenStream(server, job_id, token))
        return streams[-1]

    try:
        first, second = opened(mine, TOKEN), opened(mine, TOKEN)
        assert (first.status, second.status) == (200, 200)
        third = opened(mine, TOKEN)
        assert third.status == 429, third.data
        assert b"QUANTA_MAX_STREAMS_PER_TOKEN" in third.read_until(b"}", 5)
        other = opened(admins, ADMIN_TOKEN)  # another token: 3 open in all
        assert other.status == 200
        over = opened(admins, ADMIN_TOKEN)
        assert over.status == 429 and b"QUANTA_MAX_STREAMS" in over.read_until(b"}", 5)
        for stream in (third, over):
            stream.close()
        first.close()  # its slot comes back once the server sees it gone
        again = open_with_status(server, TOKEN, mine, 200)
        streams.append(again)
        assert again.status == 200
    finally:
        for stream in streams:
            stream.close()


def _token(server: Server, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "api.serve", "token", *args], env=server.env,
                          cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def test_a_revoked_tokens_stream_ends(server: Server) -> None:
    secret = _token(server, "create", "bob")
    job = queued_job(server, secret)
    # the test above's streams may still hold slots until the server sees them closed
    stream = open_with_status(server, secret, job, 200)
    try:
        assert b"event: status" in stream.read_until(b"event: status", 30), stream.data
        _token(server, "revoke", "bob")
        data = stream.read_until(b"token revoked", 30)
        assert b"event: end" in data and b"token revoked" in data, data[-500:]
    finally:
        stream.close()


def test_waiting_streams_hold_no_thread_of_the_pool(settings: Any, db: Any) -> None:
    """Sixty streams keep polling while the routes' whole thread pool is busy: they never
    wait for a slot of it."""
    from api import events
    from quanta_jobs import crud

    job = crud.create_job(db, "source", dict(TINY_SOURCE))
    db.commit()
    from quanta_jobs.db import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine(settings.database_url))
    polls: list[float] = []
    original = events._poll

    def counting(*args: Any) -> Any:
        polls.append(time.monotonic())
        return original(*args)

    async def main() -> None:
        events._poll = counting  # type: ignore[assignment]
        try:
            anyio.to_thread.current_default_thread_limiter().total_tokens = 1
            async with anyio.create_task_group() as group:
                async def follow() -> None:
                    async for _ in events.stream(sessions, job.id, poll_s=0.05):
                        pass

                for _ in range(60):
                    group.start_soon(follow)
                with anyio.fail_after(60):  # every stream has polled once: all are waiting
                    while len(polls) < 60:
                        await anyio.sleep(0.01)
                began = time.monotonic()
                # the routes' only thread, busy for a while: the time it is busy IS what
                # is tested (how many polls run in it), 1 s is ~20 polls of each stream
                await anyio.to_thread.run_sync(time.sleep, 1.0)
                busy = [t for t in polls if began <= t <= began + 1.0]
                group.cancel_scope.cancel()
            # with the polls on the routes' pool, none could run in that window
            assert len(busy) >= 10, f"only {len(busy)} polls while the pool was busy"
        finally:
            events._poll = original  # type: ignore[assignment]

    anyio.run(main)


def test_stream_slots_count_per_token_and_in_all() -> None:
    from api.events import StreamSlots
    from quanta_jobs.errors import TooManyRequests

    slots = StreamSlots(per_token=1, total=2)
    slots.take("a")
    with pytest.raises(TooManyRequests, match="PER_TOKEN"):
        slots.take("a")
    slots.take("b")
    with pytest.raises(TooManyRequests, match="QUANTA_MAX_STREAMS\\)"):
        slots.take("c")
    slots.give_back("a")
    slots.take("c")
    assert slots.open == {"b": 1, "c": 1}


