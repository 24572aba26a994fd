"""The service through a bucket: two hosts that share only PostgreSQL and the S3 server.

Each "host" is a `Settings` with folders of its own (in process: real training, real
PostgreSQL, moto's server in its own process for the bucket). A job trained on host A is
served by the API of host B from the bucket (whole, ranged, archived), a job stopped on
host A resumes on host B from the checkpoint A pushed, and a transfer on host B reads
the source weights A wrote. The several-host test (`test_several_hosts.py`) does the
same with real processes in network namespaces; this one checks the store's wiring
piece by piece, quickly. `move_prefix` and `Mirror` are checked on both backends.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quanta_jobs.store import ArtifactStore, LocalStore, Mirror
from tests.support.jobs import TINY_SOURCE, after_epoch, new_job, watch_epochs
from tests.support.s3server import BUCKET

WORKER_A, WORKER_B = "worker@host-a", "worker@host-b"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the store's promotion and mirror, on both backends ----------------------------------

def contents(store: ArtifactStore, prefix: str) -> dict[str, bytes]:
    out = {}
    for info in store.list(prefix):
        with store.get(info.key) as reader:
            out[info.key[len(prefix) + 1:]] = reader.read()
    return out


def test_move_prefix_replaces_the_target_and_removes_the_source(store: ArtifactStore) -> None:
    store.put("staging/a.txt", b"new a")
    store.put("staging/sub/b.bin", b"new b")
    store.put("final/a.txt", b"old a")
    store.put("final/stale.txt", b"from an older attempt")
    assert store.move_prefix("staging", "final") == 2
    assert contents(store, "final") == {"a.txt": b"new a", "sub/b.bin": b"new b"}
    assert store.list("staging") == []
    # The digest moves with the object (what the worker recorded is what a reader checks).
    info = store.stat("final/sub/b.bin", digest=True)
    assert info is not None and info.sha256 == sha(b"new b")
    assert store.move_prefix("staging", "final") == 0  # a second promoter finds it done
    assert contents(store, "final") == {"a.txt": b"new a", "sub/b.bin": b"new b"}


def test_mirror_sends_only_what_changed_and_removes_what_is_gone(store: ArtifactStore,
                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "work"
    (folder / "run_0").mkdir(parents=True)
    (folder / "run_0" / "state.json").write_text("{}")
    (folder / "weights.h5").write_bytes(b"w" * 1000)
    mirror = Mirror(store, "ckpt/1", folder)
    if isinstance(store, LocalStore):
        assert not mirror.in_place  # another folder than the store's: copied like a bucket
    first = mirror.push()
    assert {i.key: i.sha256 for i in first} == {
        "ckpt/1/run_0/state.json": sha(b"{}"), "ckpt/1/weights.h5": sha(b"w" * 1000)}
    sent: list[str] = []
    put = store.put

    def counting(key: str, source: Any, **kw: Any) -> Any:
        sent.append(key)
        return put(key, source, **kw)

    store.put = counting  # type: ignore[method-assign]
    (folder / "run_0" / "state.json").write_text('{"epoch": 1}')
    (folder / "weights.h5").unlink()
    second = mirror.push()
    assert sent == ["ckpt/1/run_0/state.json"]
    assert [i.key for i in second] == ["ckpt/1/run_0/state.json"]
    assert contents(store, "ckpt/1") == {"run_0/state.json": b'{"epoch": 1}'}


# --- two hosts, one bucket -----------------------------------------------------------------

@pytest.fixture
def hosts(postgres_url: str, s3_endpoint: str, tmp_path: Path
          ) -> Iterator[Callable[[str], Any]]:
    """`host(name)`: a JobRunner and an API client with that host's own folders, the
    database and the bucket (a prefix of this test's own) shared."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.migrate import upgrade
    from quanta_jobs.settings import Settings
    from worker.runner import JobRunner

    upgrade(postgres_url)
    prefix = f"hosts-{uuid.uuid4().hex[:10]}"
    made: dict[str, Any] = {}
    direct = make_engine(postgres_url)
    clients = []

    def host(name: str) -> Any:
        if name in made:
            return made[name]
        root = tmp_path / name
        settings = Settings(
            database_url=postgres_url, artifacts_dir=root / "artifacts",
            uploads_dir=root / "uploads", checkpoints_dir=root / "checkpoints",
            store_cache_dir=root / "cache", store_url=f"s3://{BUCKET}/{prefix}",
            s3_endpoint_url=s3_endpoint, s3_part_bytes=5 * 1024 * 1024,
            broker_url=f"sqla+sqlite:///{root / 'broker.db'}", migrate_on_start=False,
            requeue_interval_s=0, heartbeat_s=0.5, cancel_poll_s=0.1,
            # A stopping worker hands its job back at the next batch: the resumed attempt
            # starts where the checkpoint in the bucket left it (after epoch 1).
            checkpoint_interval_s=0, shutdown_wait_s=0)
        runner = JobRunner(settings)
        runner.direct = make_sessionmaker(direct)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        runner.client, runner.root = client, root
        made[name] = runner
        return runner

    yield host
    for client in clients:
        client.__exit__(None, None, None)
    for runner in made.values():
        runner.engine.dispose()
    direct.dispose()


def local_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_job_of_host_a_is_served_by_host_b_from_the_bucket(hosts: Callable[[str], Any]
                                                             ) -> None:
    a, b = hosts("a"), hosts("b")
    job_id = new_job(a, "source", {**TINY_SOURCE, "nb_of_epochs": 2})
    assert a.run(job_id, WORKER_A).status == "succeeded"
    # Host A kept nothing of the job once the bucket had it; host B never had anything.
    assert [f for f in local_files(a.root) if job_id in f] == []
    assert local_files(b.root / "artifacts") == []
    listing = b.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    assert {"digits_training/source.weights.h5", "digits_training/source.keras"} <= {
        item["path"] for item in listing}
    downloaded = {}
    for item in listing:
        response = b.client.get(item["url"])
        assert response.status_code == 200, item
        assert sha(response.content) == item["sha256"]
        assert response.headers["etag"] == f'"{item["sha256"]}"'
        downloaded[item["path"]] = response.content
    weights = "digits_training/source.weights.h5"
    url = f"/v1/jobs/{job_id}/artifacts/{weights}"
    whole = downloaded[weights]
    part = b.client.get(url, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206 and part.content == whole[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{len(whole)}"
    tail = b.client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole[-10:]
    past = b.client.get(url, headers={"Range": f"bytes={len(whole)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(whole)}"
    head = b.client.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole)
    archive = b.client.get(f"/v1/jobs/{job_id}/archive")
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        assert {n: zipped.read(n) for n in zipped.namelist()} == downloaded
    # Deleting the job (on either host) removes its objects from the bucket.
    from quanta_jobs import attempts

    store = attempts.artifacts_store(b.settings)
    assert store.list(job_id)
    assert b.client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert store.list(job_id) == []


def test_a_job_stopped_on_host_a_resumes_on_host_b(hosts: Callable[[str], Any],
                                                   caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Host A stops after epoch 1 of 3 (its worker shuts down): the job goes back to the
    queue, and host B, with empty folders, resumes it from the checkpoint in the bucket."""
    from quanta import training

    monkeypatch.setattr(training, "CANCEL_CHECK_S", 0.0)
    a, b = hosts("a"), hosts("b")
    job_id = new_job(a, "source", {**TINY_SOURCE, "nb_of_epochs": 3})
    after_epoch(a, 1, a.shutting_down.set)  # its checkpoint is in the bucket by then
    assert a.run(job_id, WORKER_A).status == "queued"
    epochs = watch_epochs(b)
    with caplog.at_level(logging.INFO):
        assert b.run(job_id, WORKER_B).status == "succeeded"
    assert "resuming an earlier attempt (source after epoch 1) from attempt 1" in caplog.text
    assert epochs == [2, 3]
    listing = b.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    metrics = next(i for i in listing if i["path"].endswith("training_metrics_of_source.jsonl"))
    lines = b.client.get(metrics["url"]).text
    assert set(json.loads(lines)) == {"0", "1", "2"}  # all three epochs, as uninterrupted
    # No absolute path of host A in the files host B finished.
    for item in listing:
        if item["path"].endswith((".json", ".jsonl", ".txt")):
            assert str(a.root) not in b.client.get(item["url"]).text
    # Both attempts' checkpoints and staging folders are gone from the bucket.
    from quanta_jobs import attempts

    assert attempts.checkpoints_store(b.settings).list(job_id) == []
    assert attempts.artifacts_store(b.settings).list(attempts.root_prefix(job_id)) == []


def test_a_transfer_on_host_b_reads_the_source_host_a_trained(hosts: Callable[[str], Any]
                                                               ) -> None:
    """The source weights come from the bucket into host B's cache, verified against the
    SHA-256 the database recorded; a damaged cached copy is fetched again."""
    a, b = hosts("a"), hosts("b")
    source = new_job(a, "source", {**TINY_SOURCE, "nb_of_epochs": 1})
    assert a.run(source, WORKER_A).status == "succeeded"
    spec = {"source_task": "digits", "target_task": "digits", "layer_to_transfer": 6,
            "source_weights": {"job": source}, "nb_of_target_epochs": 1,
            "nb_of_target_samples": 64, "width_multiplier": 0.0625, "seed": 3}
    submitted = b.client.post("/v1/jobs", json={"kind": "transfer", "spec": spec})
    assert submitted.status_code == 201, submitted.text
    transfer = submitted.json()["id"]
    cached = b.root / "cache" / "artifacts" / source / "digits_training" / "source.weights.h5"
    assert cached.is_file()  # the API checked the file's network from its own copy
    with open(cached, "r+b") as handle:  # damaged on host B's disk
        handle.seek(os.path.getsize(cached) // 2)
        handle.write(b"\0" * 64)
    assert b.run(transfer, WORKER_B).status == "succeeded"
    original = a.client.get(
        f"/v1/jobs/{source}/artifacts/digits_training/source.weights.h5").content
    assert cached.read_bytes() == original  # fetched again, not trained from the damage
    assert b.client.get(f"/v1/jobs/{transfer}").json()["status"] == "succeeded"


def test_an_upload_goes_to_the_bucket_and_is_deleted_from_it(hosts: Callable[[str], Any]
                                                              ) -> None:
    from quanta_jobs.store import store_from_settings
    from tests.support.files import npz_bytes

    b = hosts("b")
    data = npz_bytes()
    response = b.client.post("/v1/uploads", files={"file": ("tiny.npz", data)},
                             data={"kind": "dataset"})
    assert response.status_code == 201, response.text
    upload = response.json()
    store = store_from_settings(b.settings, "uploads")
    stored = store.list(upload["id"], digests=True)
    assert [(i.size, i.sha256) for i in stored] == [(len(data), sha(data))]
    assert local_files(b.root / "uploads") == []  # nothing kept on the API's disk
    assert not any(p.is_file() for p in (b.root / "cache").rglob("*"))
    assert b.client.delete(f"/v1/uploads/{upload['id']}").status_code == 204
    assert store.list(upload["id"]) == []


def test_a_worker_start_drops_the_work_folders_of_ended_jobs(hosts: Callable[[str], Any]
                                                              ) -> None:
    """What a killed worker left in its host's cache goes once its job has ended (or is
    gone); a queued or running job's folders stay (another worker may be writing them)."""
    from quanta_jobs import attempts
    from quanta_jobs.job_state import JobStatus, transition
    from quanta_jobs.models import Job

    a = hosts("a")
    ended, running = (new_job(a, "source", TINY_SOURCE) for _ in range(2))
    with a.direct() as session:
        for job_id, status in ((ended, JobStatus.SUCCEEDED), (running, JobStatus.RUNNING)):
            job = session.get(Job, job_id)
            transition(session, job, JobStatus.RUNNING, worker=WORKER_A)
            if status is JobStatus.SUCCEEDED:
                transition(session, job, status, owner=WORKER_A)
        session.commit()
    gone = uuid.uuid4().hex
    folders = {}
    for job_id in (ended, running, gone):
        files = attempts.AttemptFiles(a.settings, job_id, 1)
        for folder in (files.output, files.checkpoints):
            (folder / "run_0").mkdir(parents=True)
            (folder / "run_0" / "state.json").write_text("{}")
        folders[job_id] = (files.output, files.checkpoints)
    with a.direct() as session:
        assert attempts.drop_ended_work(session, a.settings) == 2
    assert [p.exists() for p in folders[ended] + folders[gone]] == [False] * 4
    assert all(p.exists() for p in folders[running])
