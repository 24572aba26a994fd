"""One writer per job folder, with real workers: two `python -m worker.main` processes
on PostgreSQL, each through its own TCP relay, and the API (in process, its sweeper
every second) on the database directly.

The broker is Redis (a private queue). A worker that holds a job is cut off from the
database (its relay drops every connection and refuses new ones), or frozen with
SIGSTOP past the staleness threshold and then woken. The sweeper, judging staleness by
the database's clock, gives the job to the other worker, which resumes it from the
first attempt's checkpoints in its own folders. The cut-off worker stops the job by
itself once its heartbeats have not got through for `heartbeat_loss_s` (less than
`stale_after_s`); the frozen one stops as it wakes. Only the attempt the database says
won is promoted: the job's folder holds
exactly the files of an uninterrupted run.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.databases import REDIS_SERVER
from tests.support.jobs import TINY_SOURCE, wait_job
from tests.support.net import TcpRelay, port_open
from tests.support.processes import WorkerProcess, service_env
from tests.support.waiting import wait_until

#: Two TensorFlow workers start, and three jobs train: slow on a busy machine.
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(1800)]
NAMES = ("writer1", "writer2")


@pytest.fixture(scope="module")
def service(postgres_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[SimpleNamespace]:
    from fastapi.testclient import TestClient

    from api.main import create_app
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.migrate import upgrade
    from quanta_jobs.settings import Settings

    if not port_open("127.0.0.1", 6379):  # two workers starting at once need a real broker
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    upgrade(postgres_url)
    tmp = tmp_path_factory.mktemp("writers")
    values: dict[str, Any] = {
        "database_url": postgres_url,
        "broker_url": REDIS_SERVER,
        "queue": f"quanta-writers-{uuid.uuid4().hex[:8]}",
        "artifacts_dir": tmp / "artifacts", "uploads_dir": tmp / "uploads",
        "heartbeat_s": 0.5, "heartbeat_loss_s": 2, "stale_after_s": 5,
        "cancel_poll_s": 0.2, "requeue_interval_s": 1, "db_retry_s": 5,
        "checkpoint_interval_s": 0,  # every epoch: the takeover resumes from one
        "migrate_on_start": False,
    }
    settings = Settings(**values)
    settings.ensure_dirs()
    relays = {name: TcpRelay(("127.0.0.1", 5432)) for name in NAMES}
    workers = {}
    for name in NAMES:
        url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{relays[name].port}")
        workers[name] = WorkerProcess(service_env(**{**values, "database_url": url}),
                                      tmp / f"{name}.log", name)
    engine = make_engine(postgres_url)
    client = TestClient(create_app(settings))
    client.__enter__()
    box = SimpleNamespace(settings=settings, relays=relays, workers=workers, client=client,
                          sessions=make_sessionmaker(engine))
    try:
        for worker in workers.values():
            worker.wait_ready(timeout=600)
        yield box
    finally:
        client.__exit__(None, None, None)
        for name, worker in workers.items():
            worker.process.send_signal(signal.SIGCONT)
            relays[name].up()
            worker.stop()
            relays[name].close()
        engine.dispose()


def logs(service: SimpleNamespace) -> str:
    return "\n".join(f"--- {name} ---\n{w.text()[-4000:]}" for name, w in service.workers.items())


def submit(service: SimpleNamespace, kind: str, spec: dict[str, Any]) -> str:
    response = service.client.post("/v1/jobs", json={"kind": kind, "spec": spec})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def succeeded(service: SimpleNamespace, job_id: str, timeout: float = 600) -> dict[str, Any]:
    job = wait_job(service.client, job_id, timeout=timeout)
    assert job["status"] == "succeeded", f"{job}\n{logs(service)}"
    return job


def transfer_spec(source_id: str) -> dict[str, Any]:
    """Epochs of 1024 samples: the cut-off worker is still training when it stops."""
    return {"source_task": "digits", "target_task": "digits", "layer_to_transfer": 0,
            "source_weights": {"job": source_id}, "nb_of_target_epochs": 4,
            "nb_of_target_samples": 1024, "width_multiplier": 0.0625, "seed": 2}


@pytest.fixture(scope="module")
def reference(service: SimpleNamespace) -> dict[str, Any]:
    """An uninterrupted run of the spec the tests interrupt."""
    source_id = submit(service, "source", {**TINY_SOURCE, "nb_of_epochs": 1})
    succeeded(service, source_id)
    job = succeeded(service, submit(service, "transfer", transfer_spec(source_id)))
    job["source_id"] = source_id
    return job


def files(service: SimpleNamespace, job_id: str) -> dict[str, bytes]:
    root = service.settings.artifacts_dir / job_id
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file()}


def until_job(service: SimpleNamespace, read: Callable[[], Any], there: Callable[[Any], bool],
              status: Callable[[Any], str], timeout: float, what: str) -> Any:
    """What `read` returns once `there(it)`; fails at once if the job ended meanwhile, and
    with the workers' logs either way (they say what happened instead)."""

    def check() -> Any:
        value = read()
        if there(value):
            return value
        assert status(value) in ("queued", "running"), f"{value}\n{logs(service)}"
        return None

    try:
        return wait_until(check, timeout, what, interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(service)}") from None


def running_after_epoch_1(service: SimpleNamespace, job_id: str) -> Any:
    """The job's row once its epoch 1 ended, on a worker."""
    from quanta_jobs.models import Job

    def read() -> Any:
        with service.sessions() as session:
            return session.get(Job, job_id)

    return until_job(service, read,
                     lambda job: job.status == "running" and (job.progress or {}).get(
                         "epoch", 0) >= 1, lambda job: job.status, 600,
                     f"job {job_id} running past epoch 1")


def wait_taken_over(service: SimpleNamespace, job_id: str, by: str) -> float:
    """Seconds until the job runs on worker `by` (the takeover's duration is reported)."""
    began = time.monotonic()
    until_job(service, lambda: service.client.get(f"/v1/jobs/{job_id}").json(),
              lambda body: body["status"] == "running"
              and (body["worker"] or "").startswith(by),
              lambda body: body["status"], 300, f"job {job_id} taken over by {by}")
    return time.monotonic() - began


def check_one_writer(service: SimpleNamespace, reference: dict[str, Any], job_id: str,
                     survivor: str) -> dict[str, Any]:
    from quanta_jobs import attempts

    job = succeeded(service, job_id)
    assert job["attempts"] == 2 and job["worker"].startswith(survivor)
    assert f"job {job_id}: resuming an earlier attempt" in service.workers[survivor].text()
    ours, theirs = files(service, job_id), files(service, reference["id"])
    assert set(ours) == set(theirs)  # no file of the lost attempt's, none missing
    assert {p: b for p, b in ours.items() if p.endswith(".jsonl")} == \
        {p: b for p, b in theirs.items() if p.endswith(".jsonl")}  # byte for byte
    assert job["result"]["runs"] == reference["result"]["runs"]
    listing = service.client.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert {a["path"] for a in listing["items"]} == set(ours)
    store = attempts.artifacts_store(service.settings)
    assert not store.names(attempts.root_prefix(job_id))  # the loser's went too
    assert not (service.settings.checkpoints_path / job_id).exists()
    return job


def test_a_worker_cut_off_from_the_database_stops_and_the_other_wins(
        service: SimpleNamespace, reference: dict[str, Any], capsys: Any) -> None:
    job_id = submit(service, "transfer", transfer_spec(reference["source_id"]))
    victim = running_after_epoch_1(service, job_id).worker.split("@")[0]
    survivor = next(name for name in NAMES if name != victim)
    service.relays[victim].down()
    cut = time.monotonic()
    taken_after = wait_taken_over(service, job_id, survivor)
    job = check_one_writer(service, reference, job_id, survivor)
    text = service.workers[victim].text()
    assert "no heartbeat got through" in text, logs(service)
    assert f"job {job_id}: succeeded" not in text  # it never recorded an outcome,
    assert f"job {job_id}: recording its end" not in text  # nor finished training
    service.relays[victim].up()
    with capsys.disabled():
        print(f"\ndatabase cut off from {victim} after epoch 1: it stopped the job itself, "
              f"{survivor} took it over {taken_after:.1f}s after the cut (stale after "
              f"{service.settings.stale_after_s:g}s by the database's clock) and won; "
              f"attempts={job['attempts']}; files identical to an uninterrupted run "
              f"({time.monotonic() - cut:.0f}s in all)")


def test_a_frozen_worker_wakes_up_and_stops(service: SimpleNamespace,
                                            reference: dict[str, Any], capsys: Any) -> None:
    job_id = submit(service, "transfer", transfer_spec(reference["source_id"]))
    victim = running_after_epoch_1(service, job_id).worker.split("@")[0]
    survivor = next(name for name in NAMES if name != victim)
    before = len(service.workers[victim].text())
    service.workers[victim].process.send_signal(signal.SIGSTOP)
    taken_after = wait_taken_over(service, job_id, survivor)
    service.workers[victim].process.send_signal(signal.SIGCONT)
    job = check_one_writer(service, reference, job_id, survivor)
    # Once awake, it finds the job is not its own any more and stops.
    try:
        woke = wait_until(lambda: (t := service.workers[victim].text()[before:]) and (
            "no heartbeat got through" in t or "'lost'" in t) and t, 120,
            f"{victim}, woken, saying its attempt was lost", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(service)}") from None
    assert f"job {job_id}: succeeded" not in woke
    assert not Path(service.settings.artifacts_dir, ".attempts", job_id, "1").exists()
    with capsys.disabled():
        print(f"\n{victim} frozen (SIGSTOP) after epoch 1: {survivor} took the job over "
              f"{taken_after:.1f}s later and won; woken (SIGCONT), {victim} stopped its "
              f"attempt; attempts={job['attempts']}; files identical to an uninterrupted run")
