"""End to end with real parts: a Celery worker subprocess, a real broker, real training.

Once with Redis (`redis://127.0.0.1:6379/5`, a queue of our own, purged first) and
once with the embedded SQLite broker. The API runs in-process (TestClient) on the
worker's SQLite database. Jobs train the tiny network (width 0.0625) on `digits`,
so each takes a few seconds on a CPU.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.databases import REDIS_SERVER
from tests.support.files import hdf5_bytes
from tests.support.jobs import TINY_SOURCE, wait_job
from tests.support.net import port_open
from tests.support.processes import WorkerProcess, service_env
from tests.support.reference_files import reference_weights_bytes
from tests.support.waiting import wait_until

EPOCHS = 2


def make_service(tmp: Path, broker: str, name: str) -> SimpleNamespace:
    """Settings, migrated database, purged queue, a ready worker and an API client."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from quanta_jobs.migrate import upgrade
    from quanta_jobs.queue import make_celery
    from quanta_jobs.settings import Settings

    if broker == "redis":
        if not port_open("127.0.0.1", 6379):
            pytest.skip("Redis is not reachable on 127.0.0.1:6379")
        broker_url = REDIS_SERVER
    else:
        broker_url = f"sqla+sqlite:///{tmp / 'broker.db'}"
    values = {
        "database_url": f"sqlite:///{tmp / 'quanta.db'}",
        "broker_url": broker_url,
        "queue": f"quanta-test-{uuid.uuid4().hex[:10]}",
        "artifacts_dir": tmp / "artifacts",
        "uploads_dir": tmp / "uploads",
        "cancel_poll_s": 0.1,
        "heartbeat_s": 1,
        "requeue_interval_s": 0,
    }
    settings = Settings(**values)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    celery = make_celery(settings)
    with celery.connection_for_write() as conn:
        conn.default_channel.queue_purge(settings.queue)
    worker = WorkerProcess(service_env(**values), tmp / f"{name}.log", name)
    worker.wait_ready()
    client = TestClient(create_app(settings))
    client.__enter__()
    return SimpleNamespace(settings=settings, worker=worker, client=client, celery=celery,
                           broker=broker)


def close_service(service: SimpleNamespace) -> None:
    service.client.__exit__(None, None, None)
    service.worker.stop()
    with service.celery.connection_for_write() as conn:
        conn.default_channel.queue_purge(service.settings.queue)
        if service.broker == "redis":
            conn.default_channel.client.delete(service.settings.queue)


@pytest.fixture(scope="module", params=["redis", "sqla"])
def service(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    tmp = tmp_path_factory.mktemp(f"e2e-{request.param}")
    service = make_service(tmp, request.param, f"e2e-{request.param}")
    try:
        yield service
    finally:
        close_service(service)


def submit(client: Any, kind: str, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json={"kind": kind, "spec": spec})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def transfer_spec(weights: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"source_task": "digits", "target_task": "digits", "source_weights": weights,
            "layer_to_transfer": 0, "nb_of_target_epochs": EPOCHS, "nb_of_target_samples": 64,
            "width_multiplier": 0.0625, "seed": 2, **extra}


def finished(service: SimpleNamespace, job_id: str, expected: str = "succeeded") -> dict[str, Any]:
    job = wait_job(service.client, job_id)
    assert job["status"] == expected, f"{job}\n--- worker log ---\n{service.worker.text()[-3000:]}"
    return job


@pytest.fixture(scope="module")
def trained(service: SimpleNamespace) -> dict[str, Any]:
    """A source job then a transfer job on its weights, both succeeded."""
    source_id = submit(service.client, "source", TINY_SOURCE)
    source = finished(service, source_id)
    transfer_id = submit(service.client, "transfer", transfer_spec({"job": source_id}))
    transfer = finished(service, transfer_id)
    return {"source": source, "transfer": transfer}


def test_source_job_reports_progress_and_files(service: SimpleNamespace,
                                               trained: dict[str, Any]) -> None:
    job = trained["source"]
    assert job["attempts"] == 1 and job["worker"].startswith("e2e-")
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    progress = job["progress"]
    assert (progress["run"], progress["nb_of_runs"]) == (0, 1)
    assert (progress["epoch"], progress["nb_of_epochs"]) == (EPOCHS, EPOCHS)
    assert progress["fraction"] == 1.0 and "loss" in progress["metrics"]
    assert "categorical_accuracy" in job["result"]["test_metrics"]
    paths = {a["path"] for a in service.client.get(f"/v1/jobs/{job['id']}/artifacts")
             .json()["items"]}
    # The seed's files, and Keras's model summary as an artifact the result names.
    assert job["result"]["model_summary"] == "model_summary.txt"
    assert paths == {f"digits_training/{name}" for name in (
        "source.keras", "source.weights.h5", "training_metrics_of_source.jsonl",
        "testing_metrics_of_source.jsonl")} | {"model_summary.txt"}


def test_transfer_job_files_in_the_seed_layout(service: SimpleNamespace,
                                               trained: dict[str, Any]) -> None:
    job = trained["transfer"]
    assert set(job["progress"]["quantas"]) == {"0"}
    assert set(job["result"]["runs"][0]["quantas"]["0"]) == {"source", "target"}
    listing = service.client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]
    seed_layout = {f"digits_to_digits/{name}_r_0_l_0.{ext}" for name, ext
                   in (("source", "keras"), ("target", "keras"), ("quantas", "jsonl"),
                       ("testing_metrics_of_source", "jsonl"),
                       ("testing_metrics_of_target", "jsonl"),
                       ("training_metrics_of_target", "jsonl"))}
    # ... and the service's plot of the quantas per epoch (worker.job_plots.transfer_plot).
    assert {a["path"] for a in listing} == seed_layout | {"plots/quantas.png"}


def test_quantas_jsonl_content(service: SimpleNamespace, trained: dict[str, Any]) -> None:
    url = f"/v1/jobs/{trained['transfer']['id']}/artifacts/digits_to_digits/quantas_r_0_l_0.jsonl"
    response = service.client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jsonl")
    lines = response.text.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"0"}  # keyed by the transferred layer's number
    quantas = record["0"]["quantas"]
    assert len(quantas["source"]) == len(quantas["target"]) == EPOCHS + 1
    assert len(record["0"]["quanta_weights"]) == EPOCHS + 1
    for lam_s, lam_t in zip(quantas["source"], quantas["target"], strict=True):
        assert lam_s + lam_t == pytest.approx(1.0, abs=1e-5)
    training = service.client.get(url.replace("quantas_", "training_metrics_of_target_")).json()
    assert set(training) == {str(e) for e in range(EPOCHS)}


def test_downloaded_target_model_loads(service: SimpleNamespace, trained: dict[str, Any],
                                       tmp_path: Path) -> None:
    url = f"/v1/jobs/{trained['transfer']['id']}/artifacts/digits_to_digits/target_r_0_l_0.keras"
    response = service.client.get(url)
    assert response.status_code == 200
    path = tmp_path / "target.keras"
    path.write_bytes(response.content)
    import keras

    import quanta

    model = keras.saving.load_model(path)
    assert len(quanta.quanta_layers(model)) == 1


def test_archive_holds_every_artifact(service: SimpleNamespace, trained: dict[str, Any]) -> None:
    job_id = trained["transfer"]["id"]
    listing = service.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    archive = zipfile.ZipFile(io.BytesIO(service.client.get(f"/v1/jobs/{job_id}/archive").content))
    assert sorted(archive.namelist()) == sorted(a["path"] for a in listing)


def test_continue_from_a_previous_transfer_run(service: SimpleNamespace,
                                               trained: dict[str, Any]) -> None:
    if service.broker != "redis":
        pytest.skip("the reload path is broker-independent; run once")
    spec = transfer_spec({"job": trained["source"]["id"]},
                         train_from_previous_training={"job": trained["transfer"]["id"]})
    continued = finished(service, submit(service.client, "transfer", spec))

    def weights(job_id: str) -> list[list[float]]:
        url = f"/v1/jobs/{job_id}/artifacts/digits_to_digits/quantas_r_0_l_0.jsonl"
        return json.loads(service.client.get(url).text.splitlines()[0])["0"]["quanta_weights"]

    before, after = weights(trained["transfer"]["id"]), weights(continued["id"])
    # The target starts where the earlier run ended, not from the initial (1.1, -1.1).
    assert after[0] == pytest.approx(before[-1], abs=1e-6)
    assert after[0] != pytest.approx([1.1, -1.1], abs=1e-4)


def test_corrupt_weights_fail_while_another_job_succeeds(service: SimpleNamespace) -> None:
    if service.broker != "redis":
        pytest.skip("failure handling is broker-independent; run once")
    refused = service.client.post("/v1/uploads", files={"file": ("w.weights.h5", hdf5_bytes())})
    assert refused.status_code == 422 and "no 'layers' group" in refused.text
    # The network's layers (the upload check passes) with a head of 100 classes: the worker
    # finds they do not fit the 10 classes of digits.
    wrong = reference_weights_bytes(nb_classes=100)
    upload = service.client.post("/v1/uploads", files={"file": ("w.weights.h5", wrong)})
    assert upload.status_code == 201 and upload.json()["kind"] == "weights"
    bad = submit(service.client, "transfer", transfer_spec({"upload": upload.json()["id"]}))
    good = submit(service.client, "source", {**TINY_SOURCE, "nb_of_epochs": 1})
    failed = finished(service, bad, "failed")
    assert "source weights" in failed["error"] and "internal error" not in failed["error"]
    assert str(service.settings.uploads_path) not in failed["error"]  # no server paths
    assert failed["finished_at"] and failed["attempts"] == 1
    finished(service, good)


def test_cancel_a_running_job(service: SimpleNamespace) -> None:
    if service.broker != "redis":
        pytest.skip("cancellation is broker-independent; run once")
    job_id = submit(service.client, "source", {**TINY_SOURCE, "nb_of_samples": None,
                                               "nb_of_epochs": 500})
    running = wait_job(service.client, job_id, ("running",), timeout=60)
    assert running["status"] == "running"
    # at least one epoch done: progress is reported
    running = wait_until(lambda: (j := service.client.get(f"/v1/jobs/{job_id}").json())
                         ["progress"] and j, 120, f"job {job_id} reporting an epoch's progress")
    progress = running["progress"]
    assert progress["nb_of_epochs"] == 500 and 1 <= progress["epoch"] < 500
    assert 0 < progress["fraction"] < 1 and "loss" in progress["metrics"]
    response = service.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    job = finished(service, job_id, "cancelled")
    assert job["progress"]["epoch"] < 250  # stopped mid-training, not at its end
    assert job["finished_at"] and "cancelled" in job["result"]["message"]
    assert service.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_worker_stops_a_job_taken_from_it(service: SimpleNamespace) -> None:
    """After a takeover (stale heartbeat, another worker claimed it), the first worker
    stops at its next check and leaves the job alone."""
    if service.broker != "redis":
        pytest.skip("broker-independent; run once")
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.job_state import JobStatus, transition
    from quanta_jobs.models import Job

    job_id = submit(service.client, "source", {**TINY_SOURCE, "nb_of_samples": None,
                                               "nb_of_epochs": 500})
    assert wait_job(service.client, job_id, ("running",), timeout=60)["status"] == "running"
    engine = make_engine(service.settings.database_url)
    with make_sessionmaker(engine)() as session:
        job = session.get(Job, job_id)
        transition(session, job, JobStatus.QUEUED, owner=job.worker)  # what the sweeper does
        transition(session, job, JobStatus.RUNNING, worker="other@host")  # another worker
        session.commit()
        wait_until(lambda: "taken from us" in service.worker.text(), 120,
                   "the first worker saying the job was taken from it")
        session.expire_all()
        job = session.get(Job, job_id)
        assert (job.status, job.worker, job.attempts) == ("running", "other@host", 2)
        transition(session, job, JobStatus.CANCELLED, owner="other@host")
        session.commit()
    engine.dispose()


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_warm_worker_takes_jobs_one_after_another(service: SimpleNamespace,
                                                     trained: dict[str, Any]) -> None:
    """Jobs posted one after another to an idle warm worker each start after they were
    created and end; how soon is measured by bench/post_to_start.py, not here."""
    for _ in range(5):
        job_id = submit(service.client, "source", {**TINY_SOURCE, "show_only_build": True})
        job = finished(service, job_id)
        assert _stamp(job["created_at"]) <= _stamp(job["started_at"])
        assert _stamp(job["started_at"]) <= _stamp(job["finished_at"])


def test_worker_shutdown_hands_a_running_job_back(tmp_path: Path) -> None:
    """SIGTERM during training: the job goes back to queued (and to the broker) at once."""
    service = make_service(tmp_path, "redis", "e2e-stop")
    try:
        job_id = submit(service.client, "source", {**TINY_SOURCE, "nb_of_samples": None,
                                                   "nb_of_epochs": 500})
        job = wait_job(service.client, job_id, ("running",), timeout=60)
        assert job["status"] == "running"
        wait_until(lambda: service.client.get(f"/v1/jobs/{job_id}").json()["progress"], 120,
                   f"job {job_id} training (an epoch's progress reported)")
        assert service.worker.stop(timeout=30) == 0  # stopped by itself, not killed
        job = service.client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "queued" and job["worker"] is None and job["attempts"] == 1
        with service.celery.connection_for_write() as conn:
            assert conn.default_channel._size(service.settings.queue) == 1
    finally:
        close_service(service)
