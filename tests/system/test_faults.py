"""Fault injection with real processes: a private Redis that the tests stop and start,
two real workers (`python -m worker.main`), one of which is killed with SIGKILL in the
middle of training, and an API that is restarted while a job waits for the broker.

The API runs in process (TestClient, with its re-send loop every second) on the
workers' SQLite database. Jobs train the tiny network on `digits`.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.jobs import TINY_SOURCE, wait_job
from tests.support.net import free_port
from tests.support.processes import WorkerProcess, service_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.redis


class RedisServer:
    """A private `redis-server` on its own port, never the shared one."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, 20, f"redis-server on port {self.port} answering PING",
                   interval=0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    from quanta_jobs.migrate import upgrade
    from quanta_jobs.settings import Settings

    tmp = tmp_path_factory.mktemp("faults")
    redis_server = RedisServer(tmp)
    redis_server.start()
    values = {
        "database_url": f"sqlite:///{tmp / 'quanta.db'}",
        "broker_url": redis_server.url,
        "queue": f"quanta-faults-{uuid.uuid4().hex[:8]}",
        "artifacts_dir": tmp / "artifacts",
        "uploads_dir": tmp / "uploads",
        "heartbeat_s": 0.5,
        "stale_after_s": 3,
        "cancel_poll_s": 0.2,
        "requeue_interval_s": 1,
        "checkpoint_interval_s": 0,  # every epoch: the tests resume from a given one
    }
    settings = Settings(**values)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    env = service_env(**values)
    workers = {name: WorkerProcess(env, tmp / f"{name}.log", name) for name in ("fw1", "fw2")}
    service = SimpleNamespace(settings=settings, redis=redis_server, workers=workers,
                              client=None, tmp=tmp)
    start_api(service)
    try:
        for worker in workers.values():
            worker.wait_ready()
        yield service
    finally:
        stop_api(service)
        for worker in workers.values():
            worker.stop()
        redis_server.stop()


def start_api(service: SimpleNamespace) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    service.client = TestClient(create_app(service.settings))
    service.client.__enter__()


def stop_api(service: SimpleNamespace) -> None:
    if service.client is not None:
        service.client.__exit__(None, None, None)
        service.client = None


def logs(service: SimpleNamespace) -> str:
    return "\n".join(f"--- {name} ---\n{w.text()[-3000:]}" for name, w in service.workers.items())


def submit(service: SimpleNamespace, kind: str, spec: dict[str, Any]) -> str:
    response = service.client.post("/v1/jobs", json={"kind": kind, "spec": spec})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def succeeded(service: SimpleNamespace, job_id: str, timeout: float = 180) -> dict[str, Any]:
    job = wait_job(service.client, job_id, timeout=timeout)
    assert job["status"] == "succeeded", f"{job}\n{logs(service)}"
    return job


def test_submit_while_the_broker_is_down_then_restart_the_api(
        faults: SimpleNamespace, capsys: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Redis down: the POST still records the job (201, queued); the API is restarted
    meanwhile, tries to re-send the job and fails; Redis comes back: the job is
    dispatched and runs."""
    caplog.set_level(logging.WARNING, logger="quanta_jobs.queue")
    faults.redis.stop()
    try:
        broker_outage(faults, capsys, caplog)
    finally:  # the module's next tests need their broker, even after a failure here
        if faults.redis.process is None:
            faults.redis.start()


def broker_outage(faults: SimpleNamespace, capsys: Any,
                  caplog: pytest.LogCaptureFixture) -> None:
    """The outage itself, Redis stopped (the test starts it again whatever happens)."""
    began = time.monotonic()
    response = faults.client.post("/v1/jobs", json={"kind": "source", "spec": {
        **TINY_SOURCE, "show_only_build": True}})
    post_s = time.monotonic() - began
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert response.json()["status"] == "queued"
    ready = faults.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["broker"] != "ok"
    stop_api(faults)  # restarting the API loses nothing: the database holds the job
    caplog.clear()  # the POST's own failed send is not the new API's
    start_api(faults)
    # The new API's sweeper tries to re-send the job (once it is a few seconds old), and
    # fails: the job stays queued.
    wait_until(lambda: any(f"job {job_id}" in r.getMessage() and "broker unreachable"
                           in r.getMessage() for r in caplog.records),
               60, f"the restarted API trying to re-send job {job_id} and failing")
    assert faults.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    faults.redis.start()
    back = time.monotonic()
    job = succeeded(faults, job_id, timeout=90)
    dispatched = time.monotonic() - back
    assert job["attempts"] == 1
    with capsys.disabled():
        print(f"\nbroker outage: POST answered 201 in {post_s:.2f}s with Redis down; job ran "
              f"{dispatched:.1f}s after Redis came back (API restarted meanwhile)")


def transfer_spec(source_id: str) -> dict[str, Any]:
    """1024 samples: an epoch takes about a second, long enough to be killed inside."""
    return {"source_task": "digits", "target_task": "digits", "layer_to_transfer": 0,
            "source_weights": {"job": source_id}, "nb_of_target_epochs": 3,
            "nb_of_target_samples": 1024, "width_multiplier": 0.0625, "seed": 2}


def jsonl_files(service: SimpleNamespace, job_id: str) -> dict[str, bytes]:
    root = service.settings.artifacts_dir / job_id
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.jsonl")}


def test_sigkill_during_epoch_2_resumes_on_another_worker(faults: SimpleNamespace,
                                                          capsys: Any) -> None:
    """A worker killed (SIGKILL) during epoch 2 of 3: the job is taken over once its
    heartbeat is stale, resumes on the other worker from epoch 1's checkpoint, and ends
    with exactly the files of an uninterrupted run."""
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.models import Job

    source_id = submit(faults, "source", {**TINY_SOURCE, "nb_of_epochs": 1})
    succeeded(faults, source_id)
    reference = succeeded(faults, submit(faults, "transfer", transfer_spec(source_id)))

    job_id = submit(faults, "transfer", transfer_spec(source_id))
    engine = make_engine(faults.settings.database_url)
    sessions = make_sessionmaker(engine)

    def past_epoch_1() -> Job | None:
        """The job once epoch 1 finished (its checkpoint is saved before its progress)."""
        with sessions() as session:
            job = session.get(Job, job_id)
        return job if job.status == "running" and (job.progress or {}).get("epoch", 0) >= 1 \
            else None

    try:
        job = wait_until(past_epoch_1, 120, f"job {job_id} running past epoch 1",
                         interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(faults)}") from None
    victim = job.worker.split("@")[0]
    faults.workers[victim].process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    faults.workers[victim].process.wait(10)
    with sessions() as session:
        at_kill = session.get(Job, job_id).progress["epoch"]
    engine.dispose()
    assert at_kill == 1, "the kill came after epoch 2 ended; the machine is too fast"
    state = json.loads((faults.settings.checkpoints_path / job_id / "1" / "run_0" /
                        "state.json").read_text())
    assert len(state["history"]) == 1  # what the next attempt resumes from

    survivor = next(name for name in faults.workers if name != victim)
    wait_job(faults.client, job_id, ("running",), timeout=60)

    def on_survivor() -> bool:
        worker = faults.client.get(f"/v1/jobs/{job_id}").json()["worker"]
        return bool(worker and worker.startswith(survivor))

    try:
        wait_until(on_survivor, 60, f"job {job_id} running on {survivor}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(faults)}") from None
    resumed_after = time.monotonic() - killed
    job = succeeded(faults, job_id, timeout=120)
    finished_after = time.monotonic() - killed

    assert job["attempts"] == 2 and job["worker"].startswith(survivor)
    assert "resuming an earlier attempt (run_0 after epoch 1)" in faults.workers[survivor].text()
    assert jsonl_files(faults, job_id) == jsonl_files(faults, reference["id"])  # byte for byte
    assert len(jsonl_files(faults, job_id)) == 4
    assert job["result"]["runs"] == reference["result"]["runs"]  # quantas and metrics
    listing = faults.client.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert listing["partial"] is False
    assert {a["path"] for a in listing["items"]} == {
        a["path"] for a in faults.client.get(f"/v1/jobs/{reference['id']}/artifacts")
        .json()["items"]}
    assert not (faults.settings.checkpoints_path / job_id).exists()
    with capsys.disabled():
        print(f"\nSIGKILL during epoch 2/3: taken over by {survivor} {resumed_after:.1f}s after "
              f"the kill (stale after {faults.settings.stale_after_s:g}s), finished "
              f"{finished_after:.1f}s after it; attempts={job['attempts']}; JSONL identical")
