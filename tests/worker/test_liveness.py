"""A worker's liveness probe and its takeover after a crash, with real worker processes on
PostgreSQL and the embedded broker: `quanta-worker --check` passes all through a job that
lasts many heartbeats (the solo pool never answers a broker ping while it trains, the
heartbeat thread does), fails once the worker is killed, and a worker started again
under the same name (QUANTA_WORKER_NAME, the one source both read) takes its job back
within 2 heartbeats of the kill (or its own start), not at the sweeper's staleness limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO
from tests.support.processes import service_env
from tests.support.waiting import wait_until

HEARTBEAT_S = 0.5
NAME = "gpu0@liveness-test"
#: A source job of a few hundred short epochs: many heartbeats long on any machine.
LONG_SOURCE = {"source_task": "digits", "nb_of_epochs": 400, "nb_of_samples": 64,
               "width_multiplier": 0.0625, "seed": 3}

pytestmark = pytest.mark.postgres


@pytest.fixture
def env(postgres_url: str, tmp_path: Path) -> dict[str, str]:
    from quanta_jobs.migrate import upgrade

    upgrade(postgres_url)
    return service_env(
        database_url=postgres_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifacts_dir=tmp_path / "artifacts", heartbeat_s=HEARTBEAT_S,
        stale_after_s=600,  # the sweeper's limit: a takeover within it is the worker's own
        checkpoint_interval_s=0, worker_name=NAME, queue=f"liveness-{os.getpid()}")


class Worker:
    """`python -m worker.main` named by QUANTA_WORKER_NAME alone (no --name)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in kill()/stop()
        self.process = subprocess.Popen([sys.executable, "-m", "worker.main", "--loglevel",
                                         "INFO"], env=env, cwd=REPO, stdout=self._out,
                                        stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._out.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.main", "--check"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def wait(condition: Callable[[], Any], timeout: float, what: str,
         log: Path | None = None) -> Any:
    """`wait_until`, with the worker's log tail in the message (what it did instead)."""
    try:
        return wait_until(condition, timeout, what)
    except AssertionError as exc:
        tail = f":\n{log.read_text(errors='replace')[-3000:]}" if log else ""
        raise AssertionError(f"{exc}{tail}") from None


def job_row(env: dict[str, str], job_id: str) -> Any:
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.models import Job

    engine = make_engine(env["QUANTA_DATABASE_URL"])
    try:
        with make_sessionmaker(engine)() as session:
            return session.get(Job, job_id)
    finally:
        engine.dispose()


def submit(env: dict[str, str], spec: dict[str, Any]) -> str:
    from quanta_jobs import crud
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.queue import enqueue, make_celery
    from quanta_jobs.settings import Settings

    settings = Settings(**{k[len("QUANTA_"):].lower(): v for k, v in env.items()
                           if k.startswith("QUANTA_")})
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            job = crud.create_job(session, "source", spec)
            session.commit()
            assert enqueue(make_celery(settings), session, [str(job.id)]) == 1
            return str(job.id)
    finally:
        engine.dispose()


def test_check_names_the_worker_it_probes(env: dict[str, str]) -> None:
    """No worker under the name: unhealthy, one line naming it (never a traceback)."""
    done = check(env)
    assert done.returncode == 1
    assert NAME in done.stderr and "no heartbeat" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_holds_through_a_long_job_and_a_restart_takes_the_job_back(
        env: dict[str, str], workers: list[Worker], tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    workers.append(Worker(env, log))
    wait(lambda: check(env).returncode == 0, 120, "the worker's first heartbeat", log)
    job_id = submit(env, LONG_SOURCE)
    wait(lambda: (job_row(env, job_id).progress or {}).get("epoch", 0) >= 2, 120,
         "the job's second epoch", log)
    # Healthy all through the job: probed over many more heartbeats than the probe allows
    # to miss (3), while the solo pool is busy training.
    began = time.monotonic()
    probes = 0
    while time.monotonic() - began < 8 * HEARTBEAT_S * 3:
        done = check(env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{NAME}: alive")
        probes += 1
    row = job_row(env, job_id)
    assert (row.status, row.worker, row.attempts) == ("running", NAME, 1), row.status
    assert probes >= 3

    # Killed mid-job: the probe fails once the heartbeat is 3 beats old.
    epoch_at_kill = job_row(env, job_id).progress["epoch"]
    workers[0].kill()
    killed = time.monotonic()
    done = wait(lambda: (d := check(env)).returncode == 1 and d, 30, "an unhealthy probe")
    assert "last heartbeat" in done.stderr and NAME in done.stderr

    # Started again under the same name: it takes the job back itself and resumes it from
    # its checkpoint, long before the sweeper's 600 s.
    workers.append(Worker(env, tmp_path / "worker2.log"))
    wait(lambda: job_row(env, job_id).attempts == 2, 180, "the job taken back",
         tmp_path / "worker2.log")
    taken_back = time.monotonic() - killed
    log2 = tmp_path / "worker2.log"
    text = wait(lambda: "resuming an earlier attempt" in (t := log2.read_text(errors="replace"))
                and t, 60, "the resumed attempt", log2)
    assert "was running it when it stopped; taken back (queued)" in text
    row = wait(lambda: (r := job_row(env, job_id)).status != "queued" and r, 60, "a restart")
    assert (row.status, row.worker) == ("running", NAME)
    first = wait(lambda: (job_row(env, job_id).progress or {}).get("epoch"), 60, "an epoch")
    assert first > epoch_at_kill - 1  # resumed, not started again
    # Bound: the worker's start (TensorFlow's import) plus 2 heartbeats, far from 600 s.
    assert taken_back < 120, taken_back


def test_check_reads_the_worker_name_as_the_worker_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """--name wins, then QUANTA_WORKER_NAME, then gpuN; the host is added when missing."""
    import socket

    from worker.main import worker_name

    host = socket.gethostname()
    assert worker_name("w1", "0", "gpu3@lab") == f"w1@{host}"
    assert worker_name(None, "0", "gpu3@lab") == "gpu3@lab"
    assert worker_name(None, "2", "") == f"gpu2@{host}"
    assert worker_name(None, None, "gpu5") == f"gpu5@{host}"
