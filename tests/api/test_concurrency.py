"""A real server (`quanta-serve --workers 0`, uvicorn) on PostgreSQL with tokens: 200
concurrent submissions with repeated idempotency keys, and oversized bodies sent over
raw sockets (413 without the server reading, or holding, what the client sends)."""

from __future__ import annotations

import select
import socket
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.support.databases import REDIS_SERVER
from tests.support.hostile import MiB, rss_bytes
from tests.support.jobs import TINY_SOURCE
from tests.support.live_service import LiveService
from tests.support.net import port_open

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
TOKEN = "load-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 1024 * 1024


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveService]:
    """One API (no workers) on PostgreSQL and Redis for the module: its tests only send it
    requests, and each keeps to jobs and keys of its own."""
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    queue = f"quanta-load-{uuid.uuid4().hex[:8]}"
    live = LiveService(tmp_path_factory.mktemp("server"), workers=0,
                       args=("--log-level", "INFO"), database_url=postgres_url,
                       broker_url=REDIS_SERVER, queue=queue, api_tokens=f"load:{TOKEN}",
                       max_queued_per_owner=1000, max_upload_bytes=MAX_UPLOAD,
                       requeue_interval_s=0)
    try:
        live.wait_ready(timeout=120)
        yield live
    finally:
        live.stop(grace=30)
        import redis

        redis.Redis.from_url(REDIS_SERVER).delete(queue)


def test_concurrent_submissions_with_idempotency_keys(server: LiveService, postgres_url: str,
                                                      capsys: Any) -> None:
    """100 requests with unique keys and 5 copies of each of 20 keys, 32 at a time: 120
    jobs, each repeated key answered with one job, no server error."""
    from quanta_jobs.db import make_engine

    body = {"kind": "source", "spec": {**TINY_SOURCE, "show_only_build": True}}
    run = uuid.uuid4().hex[:6]
    requests: list[str] = []
    for group in range(20):  # the copies of a key next to each other, so that they race
        requests += [f"{run}-repeat-{group}"] * 5
        requests += [f"{run}-unique-{group * 5 + i}" for i in range(5)]

    latencies: list[float] = []
    errors: list[str] = []

    def post(key: str) -> tuple[str, int, str, bool]:
        began = time.monotonic()
        try:
            response = client.post("/v1/jobs", json=body, headers={**AUTH,
                                                                   "Idempotency-Key": key})
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return key, 0, "", False
        latencies.append(time.monotonic() - began)
        job_id = response.json().get("id", "") if response.status_code < 300 else ""
        return (key, response.status_code, job_id,
                response.headers.get("idempotent-replayed") == "true")

    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    began = time.monotonic()
    with httpx.Client(base_url=server.base, timeout=60, limits=limits) as client, \
            ThreadPoolExecutor(32) as pool:
        results = list(pool.map(post, requests))
    elapsed = time.monotonic() - began

    statuses = Counter(status for _, status, _, _ in results)
    assert errors == [] and not any(status >= 500 or status == 0 for status in statuses), \
        (statuses, errors[:5], server.text()[-3000:])
    assert statuses == {201: 120, 200: 80}, statuses
    by_key: dict[str, set[str]] = {}
    for key, status, job_id, replayed in results:
        by_key.setdefault(key, set()).add(job_id)
        assert replayed is (status == 200)
    assert all(len(ids) == 1 for ids in by_key.values())
    assert len({next(iter(ids)) for ids in by_key.values()}) == 120
    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM jobs WHERE owner = 'load' AND "
                                  "idempotency_key LIKE :run"), {"run": f"{run}-%"}).scalar()
    engine.dispose()
    assert count == 120
    log = server.text()
    assert "Traceback" not in log
    races = log.count("Idempotency-Key race lost")  # inserts refused by UNIQUE(owner, key)
    with capsys.disabled():
        print(f"\n200 concurrent POST /v1/jobs (32 at a time) on PostgreSQL in {elapsed:.1f}s: "
              f"{dict(statuses)}, {len(errors)} transport errors, 0 server errors, 120 jobs; "
              f"latency median {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms; {races} duplicate inserts refused by "
              "the unique constraint")


def send_until_answered(port: int, head: bytes, chunks: Iterator[bytes]) -> tuple[int, int]:
    """Send `head`, then `chunks` until the server answers; (status, body bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sent = 0
    answer = b""
    try:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break  # the server stopped reading
            sent += len(chunk)
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    return int(answer.split(b" ", 2)[1]), sent


def chunked(total: int, size: int = 64 * 1024, prefix: bytes = b"") -> Iterator[bytes]:
    """A chunked-encoding body of `total` bytes (after `prefix`), never ending on its own."""
    if prefix:
        yield f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n"
    block = b"x" * size
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + block + b"\r\n"
    yield b"0\r\n\r\n"


def head(path: str, content_type: str, length: int | None = None) -> bytes:
    size = (f"Content-Length: {length}" if length is not None
            else "Transfer-Encoding: chunked")
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {content_type}\r\n{size}\r\n\r\n").encode()


def test_oversized_bodies_are_refused_without_reading_them(server: LiveService,
                                                           capsys: Any) -> None:
    before = rss_bytes(server.process.pid)
    huge = 256 * 1024 * 1024
    # a declared length over the limit: 413 at once, nothing read
    status, sent = send_until_answered(server.port, head("/v1/jobs", "application/json", huge),
                                       chunked(huge))
    assert status == 413
    status, sent_upload_declared = send_until_answered(
        server.port, head("/v1/uploads", "multipart/form-data; boundary=b", huge),
        chunked(huge))
    assert status == 413
    # no length (chunked): counted as it arrives, cut off at the limit
    status, sent_json = send_until_answered(server.port, head("/v1/jobs", "application/json"),
                                            chunked(huge, prefix=b'{"kind": "source", "x": "'))
    assert status == 413
    part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="w.weights.h5"'
            b"\r\n\r\n")
    status, sent_upload = send_until_answered(
        server.port, head("/v1/uploads", "multipart/form-data; boundary=b"),
        chunked(huge, prefix=part))
    assert status == 413
    grown = (rss_bytes(server.process.pid) - before) / MiB
    for sent_bytes in (sent, sent_upload_declared, sent_json, sent_upload):
        assert sent_bytes < 64 * 1024 * 1024  # the server stopped reading long before 256 MiB
    assert grown < 48, f"the server grew by {grown:.0f} MiB"
    response = httpx.get(f"{server.base}/v1/uploads", headers=AUTH)
    assert response.status_code == 200 and response.json()["total"] == 0  # nothing kept
    with capsys.disabled():
        print(f"\noversized bodies (256 MiB offered): 413 after {sent_json >> 10} KiB of JSON "
              f"and {sent_upload >> 10} KiB of upload were accepted by the socket; server "
              f"memory grew {grown:.1f} MiB")
