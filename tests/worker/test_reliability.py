"""The worker's side of reliability, in process (real training, real PostgreSQL):
database outages during and after training, an outage longer than the retries, the
wall-time limit, the hand-back on shutdown resuming from its checkpoint, and `.keras`
files with Python code refused by Keras' safe mode.

The worker reaches PostgreSQL through a TCP relay that the tests cut and restore, so
an outage is a real one (connections dropped mid-query, new ones refused).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from tests.support.jobs import TINY_SOURCE, after_epoch, new_job, watch_epochs
from tests.support.net import TcpRelay
from tests.support.waiting import wait_until

WORKER = "inproc@test"


@pytest.fixture(scope="module")
def pg(postgres_url: str) -> str:
    from quanta_jobs.migrate import upgrade

    upgrade(postgres_url)
    return postgres_url


@pytest.fixture
def relay(pg: str) -> Iterator[TcpRelay]:
    relay = TcpRelay(("127.0.0.1", 5432))
    yield relay
    relay.close()


@pytest.fixture
def make_runner(pg: str, relay: TcpRelay, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """A JobRunner whose database goes through `relay`, and a direct session for checks."""
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.settings import Settings
    from worker.runner import JobRunner

    runners: list[Any] = []
    direct = make_engine(pg)

    def make(**overrides: Any) -> Any:
        values: dict[str, Any] = {
            "database_url": pg.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}"),
            "artifacts_dir": tmp_path / "artifacts", "uploads_dir": tmp_path / "uploads",
            "heartbeat_s": 0.5, "cancel_poll_s": 0.1, "db_retry_s": 30,
            "checkpoint_interval_s": 0,  # every epoch: the tests resume from a given one
            **overrides,
        }
        runner = JobRunner(Settings(**values))
        runner.direct = make_sessionmaker(direct)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.engine.dispose()
    direct.dispose()


def row(runner: Any, job_id: str) -> Any:
    from quanta_jobs.models import Job

    with runner.direct() as session:
        return session.get(Job, job_id)


def artifact_paths(runner: Any, job_id: str) -> list[str]:
    from quanta_jobs import crud

    with runner.direct() as session:
        return [a.path for a in crud.list_artifacts(session, job_id)]


SOURCE_FILES = {"digits_training/source.keras", "digits_training/source.weights.h5",
                "digits_training/training_metrics_of_source.jsonl",
                "digits_training/testing_metrics_of_source.jsonl"}


def assert_recorded_files(runner: Any, job_id: str) -> None:
    """The index lists exactly the files of the job's folder, the seed's among them."""
    root = runner.settings.artifacts_dir / job_id
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(artifact_paths(runner, job_id)) == on_disk
    assert on_disk >= SOURCE_FILES


def test_training_survives_a_database_outage(make_runner: Callable[..., Any], relay: TcpRelay,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """The database goes away after epoch 1 of 2 and comes back 3 s after the final
    write first tried: progress and heartbeats fail meanwhile, training goes on, the
    final write waits and succeeds."""
    runner = make_runner()
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 2})
    outage: dict[str, float] = {}

    def cut() -> None:
        relay.down()
        outage["began"] = time.monotonic()

    finish = runner._finish

    def finish_later(*args: Any) -> Any:
        if "final" not in outage:
            outage["final"] = time.monotonic()
            threading.Timer(3.0, relay.up).start()
        return finish(*args)

    runner._finish = finish_later
    after_epoch(runner, 1, cut)
    with caplog.at_level(logging.INFO):
        outcome = runner.run(job_id, WORKER)
    took = time.monotonic() - outage["began"]
    assert outcome.status == "succeeded", outcome
    job = row(runner, job_id)
    assert (job.status, job.attempts, job.error) == ("succeeded", 1, None)
    assert "categorical_accuracy" in job.result["test_metrics"]
    assert_recorded_files(runner, job_id)
    assert "recording its end: database unreachable" in caplog.text
    assert "recording its end: done after" in caplog.text
    assert "progress of job" in caplog.text  # the epoch-2 progress write gave up
    assert not (runner.settings.checkpoints_path / job_id).exists()
    assert time.monotonic() - outage["final"] > 2.5  # it waited for the database
    print(f"\nfinal write retried through a {took:.1f}s database outage; job succeeded")


def test_an_outage_longer_than_the_retries_loses_nothing(make_runner: Callable[..., Any],
                                                         relay: TcpRelay) -> None:
    """The final write gives up (db_retry_s=1.5): the outcome stays on disk with the
    attempt's files, the job stays running; when the worker starts again under the same
    name and takes the job back, it records that outcome without training again."""
    runner = make_runner(db_retry_s=1.5)
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 1})
    after_epoch(runner, 1, relay.down)
    executions = []
    execute = runner._execute

    def counting(*args: Any, **kwargs: Any) -> Any:
        executions.append(1)
        return execute(*args, **kwargs)

    runner._execute = counting
    outcome = runner.run(job_id, WORKER)
    assert outcome.status == "unrecorded", outcome
    saved = runner.settings.artifacts_dir / ".attempts" / job_id / "1.outcome.json"
    assert saved.is_file()
    assert not (runner.settings.artifacts_dir / job_id).exists()  # not promoted
    relay.up()
    assert row(runner, job_id).status == "running"  # as if its worker died
    again = runner.run(job_id, WORKER)  # the same worker, restarted: takes it back
    assert again.status == "succeeded", again
    assert len(executions) == 1  # recorded from disk, not trained twice
    job = row(runner, job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)  # the attempt that trained
    assert "categorical_accuracy" in job.result["test_metrics"]
    assert_recorded_files(runner, job_id)
    assert not saved.parent.exists()
    assert not (runner.settings.checkpoints_path / job_id).exists()


def test_wall_time_limit_fails_the_job(make_runner: Callable[..., Any]) -> None:
    runner = make_runner(max_job_seconds=1)
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 100_000})
    began = time.monotonic()
    outcome = runner.run(job_id, WORKER)
    assert time.monotonic() - began < 300  # not the 100,000 epochs
    assert outcome.status == "failed"
    job = row(runner, job_id)
    assert job.status == "failed" and job.finished_at is not None
    assert job.error == "exceeded the wall-time limit of 1 s (QUANTA_MAX_JOB_SECONDS)"
    assert not (runner.settings.checkpoints_path / job_id).exists()


def test_shutdown_hands_back_and_the_next_attempt_resumes(make_runner: Callable[..., Any],
                                                          caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """SIGTERM's path (shutting_down) during epoch 2 of 3, told to stop at the next batch
    (QUANTA_SHUTDOWN_WAIT_S=0): the job goes back to the queue with its checkpoint; the
    next attempt resumes after epoch 1 and ends with every epoch."""
    import json

    from quanta import training

    # Ask before every batch: these epochs are shorter than the usual 0.25 s between asks.
    monkeypatch.setattr(training, "CANCEL_CHECK_S", 0.0)
    runner = make_runner(shutdown_wait_s=0)
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 3})
    after_epoch(runner, 1, runner.shutting_down.set)
    assert runner.run(job_id, WORKER).status == "queued"
    assert row(runner, job_id).status == "queued"
    state = runner.settings.checkpoints_path / job_id / "1" / "source" / "state.json"
    assert len(json.loads(state.read_text())["history"]) == 1
    runner.shutting_down.clear()
    epochs = watch_epochs(runner)
    with caplog.at_level(logging.INFO):
        assert runner.run(job_id, WORKER).status == "succeeded"
    assert "resuming an earlier attempt (source after epoch 1) from attempt 1" in caplog.text
    assert epochs == [2, 3]  # epoch 1 was not trained again
    job = row(runner, job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)
    metrics = runner.settings.artifacts_dir / job_id / "digits_training" / \
        "training_metrics_of_source.jsonl"
    assert set(json.loads(metrics.read_text())) == {"0", "1", "2"}


def test_a_warm_shutdown_saves_the_epoch_in_progress(make_runner: Callable[..., Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A planned restart loses nothing: with checkpoints far apart (an hour), a shutdown
    during epoch 2 of 4 lets epoch 2 end, saves it although the interval has not passed,
    and hands the job back; the next attempt trains epochs 3 and 4 only."""
    import json

    from quanta import training

    monkeypatch.setattr(training, "CANCEL_CHECK_S", 0.0)
    runner = make_runner(checkpoint_interval_s=3600, shutdown_wait_s=60)
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 4})
    after_epoch(runner, 1, runner.shutting_down.set)
    assert runner.run(job_id, WORKER).status == "queued"
    state = runner.settings.checkpoints_path / job_id / "1" / "source" / "state.json"
    assert len(json.loads(state.read_text())["history"]) == 2  # epoch 2 ended and was saved
    assert row(runner, job_id).handbacks == 1
    runner.shutting_down.clear()
    epochs = watch_epochs(runner)
    assert runner.run(job_id, WORKER).status == "succeeded"
    assert epochs == [3, 4]


def test_a_shutdown_stops_at_its_wait_when_the_epoch_is_long(make_runner: Callable[..., Any],
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """An epoch that would not end within QUANTA_SHUTDOWN_WAIT_S is cut at the batch after
    the wait: the worker never outstays its stop timeout."""
    from quanta import training

    monkeypatch.setattr(training, "CANCEL_CHECK_S", 0.0)
    runner = make_runner(shutdown_wait_s=0.05)
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 2,
                                        "nb_of_samples": 1024})
    original = runner._progress_hook

    def slow(job_id: str, *owner: Any) -> Callable[[Any], None]:
        runner.shutting_down.set()  # stopping from the first batch on
        return original(job_id, *owner)

    runner._progress_hook = slow
    began = time.monotonic()
    assert runner.run(job_id, WORKER).status == "queued"
    assert time.monotonic() - began < 30
    assert row(runner, job_id).progress in (None, {})  # no epoch ended: cut within epoch 1


@pytest.mark.slow  # three stops and a fourth run of a real job: about a minute
def test_workers_stopped_on_purpose_spend_no_attempts(make_runner: Callable[..., Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Three deliberate stops (restarts, deploys) of a job allowed one attempt: each hands it
    back, none counts against max_attempts, and it still succeeds; a crash still counts."""
    from sqlalchemy import update

    from quanta import training
    from quanta_jobs.models import Job
    from quanta_jobs.recovery import recover

    monkeypatch.setattr(training, "CANCEL_CHECK_S", 0.0)
    runner = make_runner(max_attempts=1, shutdown_wait_s=0)
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 4})
    for epoch in (1, 2, 3):  # each attempt resumes, trains one epoch and is stopped
        after_epoch(runner, epoch, runner.shutting_down.set)
    for _ in range(3):
        assert runner.run(job_id, WORKER).status == "queued"
        runner.shutting_down.clear()
    job = row(runner, job_id)
    assert (job.attempts, job.handbacks, job.failed_attempts) == (3, 3, 0)
    assert runner.run(job_id, WORKER).status == "succeeded"
    assert (row(runner, job_id).attempts, row(runner, job_id).handbacks) == (4, 3)
    # A crash (its worker lost) with the one attempt spent fails the job.
    crashed = new_job(runner, "source", TINY_SOURCE)
    with runner.direct() as session:
        session.execute(update(Job).where(Job.id == crashed).values(
            status="running", attempts=4, handbacks=3, worker="gone"))
        session.commit()
        job = session.get(Job, crashed)
        assert recover(session, job, runner.settings).value == "failed"
        session.commit()
        assert "gave up after 1 attempts" in job.error


def test_keras_files_with_code_are_refused_by_safe_mode(make_runner: Callable[..., Any],
                                                        tmp_path: Path) -> None:
    """A .keras with a Lambda layer (code that would run at load) slipped past the upload
    check: the worker checks it again before loading and refuses it, the library's loader
    (Keras' safe mode) would refuse it too, and the code never runs."""
    import keras

    from quanta_jobs.models import Upload

    runner = make_runner()
    canary = tmp_path / "pwned"
    inputs = keras.Input((8, 8, 1))
    code = eval(f"lambda x: (open({str(canary)!r}, 'w').close(), x)[1]")  # no closure
    outputs = keras.layers.Lambda(code)(inputs)
    canary.unlink(missing_ok=True)  # written once while building the model here
    folder = runner.settings.uploads_path / "evil"
    folder.mkdir(parents=True)
    keras.Model(inputs, outputs).save(folder / "model.keras")
    with runner.direct() as session:
        session.add(Upload(id="evil", kind="model", filename="model.keras",
                           path="evil/model.keras", size=1, sha256="0" * 64))
        session.commit()
    job_id = new_job(runner, "source", {**TINY_SOURCE, "train_from_previous_training":
                                        {"upload": "evil"}})
    assert runner.run(job_id, WORKER).status == "failed"
    error = row(runner, job_id).error
    assert "lambda" in error.lower() and "train_from_previous_training" in error, error
    assert not canary.exists()
    from quanta.errors import QuantaError
    from quanta.sources import load_previous

    with pytest.raises(QuantaError, match="safe_mode"):
        load_previous(folder / "model.keras")
    assert not canary.exists()
    assert str(runner.settings.uploads_path) not in error
    keras.saving.load_model(folder / "model.keras", safe_mode=False)  # the file IS armed
    assert canary.exists()


def test_retry_db_backs_off_and_gives_up() -> None:
    from worker.db_retry import DatabaseUnavailable, retry_db

    sleeps: list[float] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return "ok"

    assert retry_db(flaky, what="test", budget_s=60, sleep=sleeps.append) == "ok"
    assert sleeps == [0.25, 0.5, 1.0]

    def down() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    with pytest.raises(DatabaseUnavailable, match="unreachable after"):
        retry_db(down, what="test", budget_s=0.3)

    def bug() -> None:
        raise ValueError("not a connection problem")

    with pytest.raises(ValueError):  # anything else is raised at once
        retry_db(bug, what="test", budget_s=60, sleep=sleeps.append)


def test_unclaimable_job_goes_back_to_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database is down at claim time for longer than the retries: the task rejects
    its message with requeue, so the job is not lost from the broker."""
    from celery.exceptions import Reject

    from worker import tasks
    from worker.db_retry import DatabaseUnavailable

    class Down:
        def run(self, job_id: str, worker: str) -> Any:
            raise DatabaseUnavailable("job x: claim: database unreachable")

    monkeypatch.setattr(tasks, "runner", lambda: Down())
    with pytest.raises(Reject) as caught:
        tasks.run_job.run("x")
    assert caught.value.requeue is True


def test_the_worker_keeps_as_many_traced_models_as_configured(
        make_runner: Callable[..., Any]) -> None:
    from quanta.traced_models import DEFAULT_SIZE
    from quanta.transfer import TRACED_MODELS

    TRACED_MODELS.resize(3)
    try:
        runner = make_runner(traced_models=0)
        outcome = runner.run(new_job(runner, "source", TINY_SOURCE), WORKER)
        assert outcome.status == "succeeded"
        assert TRACED_MODELS.size == 0 and not TRACED_MODELS.items
    finally:  # the process-wide cache, as other tests expect it
        TRACED_MODELS.resize(DEFAULT_SIZE)


def test_an_outcome_the_database_never_heard_of_is_recorded_by_the_sweeper(
        make_runner: Callable[..., Any], relay: TcpRelay) -> None:
    """The last attempt (max_attempts=1) finishes while the database is down for longer
    than the retries: its outcome stays on disk with its files. Once the job is stale,
    the sweeper, which used to fail such a job and delete its folder, records the
    outcome and promotes the attempt's files instead."""
    from quanta_jobs.recovery import recover_stale_jobs

    runner = make_runner(db_retry_s=1.0, max_attempts=1, stale_after_s=2.0,
                         heartbeat_loss_s=1.5)
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 1})
    after_epoch(runner, 1, relay.down)
    assert runner.run(job_id, WORKER).status == "unrecorded"
    saved = runner.settings.artifacts_dir / ".attempts" / job_id / "1.outcome.json"
    assert saved.is_file()
    relay.up()
    recovered: list[str] = []

    def settled() -> bool:
        """The sweeper's pass, as the API runs it, until the job is no longer running
        (stale after 2 s, by the database)."""
        if row(runner, job_id).status != "running":
            return True
        with runner.direct() as session:
            recovered.extend(recover_stale_jobs(session, runner.settings))
        return False

    wait_until(settled, 60, f"job {job_id} no longer running once its heartbeat is stale",
               interval=0.2)
    job = row(runner, job_id)
    assert (job.status, job.attempts, job.error) == ("succeeded", 1, None)
    assert "categorical_accuracy" in job.result["test_metrics"]
    assert recovered == []  # recorded, not put back in the queue
    assert_recorded_files(runner, job_id)
    assert not saved.parent.exists()
    assert not (runner.settings.checkpoints_path / job_id).exists()


def test_a_full_disk_fails_the_job_saying_so(make_runner: Callable[..., Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC at the writes of the job's files (every atomic write fsyncs): the job
    fails at once with "disk full", one attempt, no retry, no internal error."""
    import errno
    import os

    runner = make_runner()
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 2})
    ours = (str(runner.settings.artifacts_dir), str(runner.settings.checkpoints_path))
    real_fsync = os.fsync
    refused: list[str] = []

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(ours):
            refused.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    outcome = runner.run(job_id, WORKER)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert refused, "no write of the job reached the disk"
    assert outcome.status == "failed", outcome
    job = row(runner, job_id)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.error.startswith("disk full"), job.error
    assert "internal error" not in job.error
    assert str(runner.settings.artifacts_dir) not in job.error


def test_outputs_are_hashed_outside_any_transaction(make_runner: Callable[..., Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The SHA-256 of every output is computed before the final transaction opens, so a
    job with large files never holds the job's row locked while it reads them."""
    import threading

    from sqlalchemy import event

    from quanta_jobs import store

    runner = make_runner()
    job_id = new_job(runner, "source", {**TINY_SOURCE, "nb_of_epochs": 1})
    open_here: dict[int, int] = {}

    def began(conn: Any) -> None:
        open_here[threading.get_ident()] = open_here.get(threading.get_ident(), 0) + 1

    def ended(conn: Any) -> None:
        open_here[threading.get_ident()] = open_here.get(threading.get_ident(), 1) - 1

    event.listen(runner.engine, "begin", began)
    event.listen(runner.engine, "commit", ended)
    event.listen(runner.engine, "rollback", ended)
    hashed_in: list[int] = []
    real = store.sha256_file

    def sha256_file(path: Any) -> Any:
        hashed_in.append(open_here.get(threading.get_ident(), 0))
        return real(path)

    monkeypatch.setattr(store, "sha256_file", sha256_file)
    assert runner.run(job_id, WORKER).status == "succeeded"
    assert len(hashed_in) == len(artifact_paths(runner, job_id)) > 0
    assert set(hashed_in) == {0}, "hashed inside a transaction"
