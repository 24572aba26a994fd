"""Limits that hold when the requests come at once: real concurrent clients against a real
`quanta-serve` API (no workers, so queued jobs stay queued) on SQLite and on PostgreSQL.

Before the owner's lock (`quanta_jobs.owner_lock`), 30 uploads of 157 KB at once under a
1 MB quota stored 19, and 40 submissions at once under a cap of 10 queued jobs left 12.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from quanta_jobs.migrate import upgrade
from tests.support.databases import empty_tables
from tests.support.files import npz_bytes
from tests.support.jobs import TINY_SOURCE
from tests.support.live_service import LiveService, running_service
from tests.support.waiting import wait_until

QUOTA = 1_000_000
QUEUE_CAP = 10


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveService]:
    """An API alone, with a 1 MB storage quota and a cap of 10 queued jobs."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'quanta.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        upgrade(url)
        empty_tables(url)
    with running_service(tmp_path / "service", workers=0, database_url=url,
                         max_stored_bytes_per_owner=QUOTA,
                         max_queued_per_owner=QUEUE_CAP) as live:
        yield live


def at_once(count: int, send: object) -> list[httpx.Response]:
    """`count` calls of `send(client)`, each from its own thread and connection."""
    def one(_: int) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            return send(client)  # type: ignore[operator]

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_uploads_stay_within_the_storage_quota(api: LiveService) -> None:
    dataset = npz_bytes(n=1450)  # 157 KB: six fit in the quota, thirty do not
    assert 150_000 < len(dataset) < 160_000
    answers = at_once(30, lambda client: client.post(
        f"{api.url}/v1/uploads", files={"file": ("d.npz", dataset)}))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {201, 507}, [a.text for a in answers if a.status_code not in (201, 507)]
    stored = httpx.get(f"{api.url}/v1/uploads", params={"limit": 100}).json()
    assert stored["total"] == codes.count(201)
    assert 1 <= stored["total"] <= QUOTA // len(dataset)
    assert sum(u["size"] for u in stored["items"]) <= QUOTA
    refused = next(a for a in answers if a.status_code == 507).json()["detail"]
    assert "QUANTA_MAX_STORED_BYTES_PER_OWNER" in refused
    # the refused ones left no hold behind: the room they asked for is free again
    for upload in stored["items"]:
        assert httpx.delete(f"{api.url}/v1/uploads/{upload['id']}").status_code == 204
    again = at_once(6, lambda client: client.post(
        f"{api.url}/v1/uploads", files={"file": ("d.npz", dataset)}))
    assert [a.status_code for a in again] == [201] * 6


def test_concurrent_submissions_stay_within_the_queue_cap(api: LiveService) -> None:
    answers = at_once(40, lambda client: client.post(
        f"{api.url}/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE}))
    codes = [a.status_code for a in answers]
    assert codes.count(201) == QUEUE_CAP, codes
    assert codes.count(429) == 40 - QUEUE_CAP, [a.text for a in answers if a.status_code >= 500]
    queued = httpx.get(f"{api.url}/v1/jobs", params={"status": "queued", "limit": 100}).json()
    assert queued["total"] == QUEUE_CAP
    refused = next(a for a in answers if a.status_code == 429).json()["detail"]
    assert "QUANTA_MAX_QUEUED_PER_OWNER" in refused


def partial_uploads(folder: Path) -> list[Path]:
    return [p for p in folder.glob(".upload.*.partial") if p.stat().st_size > 0]


def test_an_upload_counts_while_it_streams_and_a_killed_api_leaves_nothing(
        tmp_path: Path) -> None:
    """A 3 MB upload half sent holds its 3 MB: a 1.2 MB upload beside it does not fit in
    the 4 MB quota. `kill -9` of the API mid-upload then leaves its partial file and its
    hold; the API started again removes the file and frees the hold at once."""
    settings = {"max_stored_bytes_per_owner": 4_000_000, "max_queued_per_owner": QUEUE_CAP}
    first = LiveService(tmp_path, workers=0, **settings)
    try:
        first.wait_ready()
        boundary = "quanta-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"big.npz\"\r\n\r\n").encode() + b"\0" * 3_000_000 + \
            f"\r\n--{boundary}--\r\n".encode()
        slow = socket.create_connection(("127.0.0.1", first.port))
        slow.sendall((f"POST /v1/uploads HTTP/1.1\r\nHost: 127.0.0.1:{first.port}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:1_500_000])
        uploads = tmp_path / "uploads"
        wait_until(lambda: partial_uploads(uploads), 120,
                   "the half-sent upload's partial file appearing")
        beside = httpx.post(f"{first.url}/v1/uploads",
                            files={"file": ("d.npz", npz_bytes(n=11_000))}, timeout=60)
        assert beside.status_code == 507, beside.text
        assert "in progress" in beside.json()["detail"]
        first.process.kill()  # SIGKILL: no cleanup of its own
        first.process.wait(30)
        slow.close()
        assert partial_uploads(uploads), "the killed API's partial file should still be there"
    finally:
        first.stop()
    with running_service(tmp_path, workers=0, **settings) as second:
        assert not list(uploads.glob(".upload.*.partial"))
        again = httpx.post(f"{second.url}/v1/uploads",
                           files={"file": ("d.npz", npz_bytes(n=11_000))}, timeout=60)
        assert again.status_code == 201, again.text
