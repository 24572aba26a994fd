"""The job state machine, and the worker's claim rules (no TensorFlow needed for these)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from quanta_jobs.job_state import (
    ALLOWED,
    TERMINAL,
    ConcurrentChange,
    IllegalTransition,
    JobStatus,
    check_transition,
    transition,
)
from tests.support.jobs import TINY_SOURCE

LEGAL = {("queued", "running"), ("queued", "cancelled"), ("running", "succeeded"),
         ("running", "failed"), ("running", "cancelled"), ("running", "queued")}


@pytest.mark.parametrize("old", list(JobStatus))
@pytest.mark.parametrize("new", list(JobStatus))
def test_transition_table(old: JobStatus, new: JobStatus) -> None:
    if (old.value, new.value) in LEGAL:
        check_transition("j", old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_transition("j", old, new)


def test_terminal_states_have_no_exit() -> None:
    assert all(not ALLOWED[status] for status in TERMINAL)


def test_transition_stamps_times_and_attempts(finished_job: Any, db: Any) -> None:
    job = finished_job("source", TINY_SOURCE, status="queued")
    transition(db, job, JobStatus.RUNNING, worker="w@h")
    assert job.status == "running" and job.attempts == 1 and job.started_at and job.worker
    transition(db, job, JobStatus.QUEUED)
    assert job.worker is None and job.attempts == 1
    transition(db, job, JobStatus.RUNNING, worker="w@h")
    assert job.attempts == 2 and job.finished_at is None
    transition(db, job, JobStatus.SUCCEEDED)
    db.commit()
    assert job.finished_at is not None and job.finished_at >= job.started_at
    with pytest.raises(IllegalTransition):
        transition(db, job, JobStatus.RUNNING)


def test_concurrent_change_loses(finished_job: Any, app: Any) -> None:
    """Two sessions claim the same queued job: exactly one wins."""
    job_id = finished_job("source", TINY_SOURCE, status="queued").id
    from quanta_jobs.models import Job

    with app.state.sessionmaker() as one, app.state.sessionmaker() as two:
        first, second = one.get(Job, job_id), two.get(Job, job_id)
        transition(one, first, JobStatus.RUNNING, worker="a")
        one.commit()
        with pytest.raises(ConcurrentChange):
            transition(two, second, JobStatus.RUNNING, worker="b")


def test_cancel_racing_a_finish_is_409(client: Any, finished_job: Any) -> None:
    job = finished_job("source", TINY_SOURCE, status="cancelled")
    assert client.post(f"/v1/jobs/{job.id}/cancel").status_code == 409


# --- the worker's claim rules (worker.runner without running the library) ------------
@pytest.fixture
def runner(settings: Any) -> Any:
    from worker.runner import JobRunner

    settings.ensure_dirs()
    return JobRunner(settings.model_copy(update={"max_attempts": 2}))


def test_runner_skips_jobs_that_are_not_queued(runner: Any, finished_job: Any) -> None:
    for status in ("succeeded", "failed", "cancelled"):
        job = finished_job("source", TINY_SOURCE, {}, status=status)
        assert runner.run(job.id, "me@host").status == "skipped"
    assert runner.run("nosuchjob", "me@host").status == "missing"


def test_runner_leaves_a_job_running_elsewhere(runner: Any, finished_job: Any) -> None:
    job = finished_job("source", TINY_SOURCE, status="running")  # worker test@host, fresh
    assert runner.run(job.id, "me@host").status == "skipped"


def test_runner_gives_up_after_max_attempts(runner: Any, finished_job: Any, db: Any) -> None:
    from quanta_jobs.models import Job

    job = finished_job("source", TINY_SOURCE, status="running")
    db.get(Job, job.id).attempts = 2
    db.commit()
    # our own name: the previous incarnation of this worker died while running it
    outcome = runner.run(job.id, "test@host")
    assert outcome.status == "failed"
    db.expire_all()
    assert "gave up after 2 attempts" in db.get(Job, job.id).error


def test_runner_fails_job_whose_upload_vanished(runner: Any, client: Any, upload: Any,
                                                settings: Any, db: Any) -> None:
    """References are resolved again by the worker; a missing file fails the job clearly."""
    from quanta_jobs.models import Job
    from tests.support.files import npz_bytes

    dataset = upload("mine.npz", npz_bytes()).json()["id"]
    job_id = client.post("/v1/jobs", json={"kind": "source", "spec": {
        **TINY_SOURCE, "source_task": {"upload": dataset}}}).json()["id"]
    (settings.uploads_path / dataset / "mine.npz").unlink()
    outcome = runner.run(job_id, "me@host")
    assert outcome.status == "failed"
    job = db.get(Job, job_id)
    db.refresh(job)
    assert job.status == "failed" and "missing on the server" in job.error
    assert job.attempts == 1 and job.finished_at is not None


def test_stale_running_job_is_taken_over(runner: Any, finished_job: Any, db: Any) -> None:
    """A running job whose worker stopped beating goes back to queued, then runs here."""
    from quanta_jobs.models import Job

    job = finished_job("source", {**TINY_SOURCE, "source_task": "npz:/gone.npz"},
                       status="running")
    stored = db.get(Job, job.id)
    stored.heartbeat_at = stored.heartbeat_at - timedelta(hours=1)
    stored.spec = {**TINY_SOURCE, "source_task": {"upload": "gone"}}
    db.commit()
    outcome = runner.run(job.id, "me@host")
    db.expire_all()
    job = db.get(Job, job.id)
    # it was claimed again (attempt 2), then failed on the vanished upload
    assert outcome.status == "failed" and job.attempts == 2 and job.worker == "me@host"


def test_cancel_racing_a_worker_start_flags_the_running_job(finished_job: Any, app: Any) -> None:
    """The cancel loaded the job queued, but a worker claimed it first: flag it instead."""
    from quanta_jobs import crud
    from quanta_jobs.models import Job

    job_id = finished_job("source", TINY_SOURCE, status="queued").id
    with app.state.sessionmaker() as api_side, app.state.sessionmaker() as worker_side:
        seen = api_side.get(Job, job_id)
        transition(worker_side, worker_side.get(Job, job_id), JobStatus.RUNNING, worker="w")
        worker_side.commit()
        job = crud.cancel_job(api_side, seen)
        api_side.commit()
        assert job.status == "running" and job.cancel_requested is True


def test_transition_with_owner_refuses_a_job_taken_over(finished_job: Any, db: Any) -> None:
    job = finished_job("source", TINY_SOURCE, status="running")  # worker test@host
    with pytest.raises(ConcurrentChange):
        transition(db, job, JobStatus.SUCCEEDED, owner="old@host")
    db.expire_all()
    transition(db, job, JobStatus.SUCCEEDED, owner="test@host")


def _age_heartbeat(db: Any, job_id: str, **fields: Any) -> None:
    from quanta_jobs.models import Job

    stored = db.get(Job, job_id)
    stored.heartbeat_at = stored.heartbeat_at - timedelta(hours=1)
    for name, value in fields.items():
        setattr(stored, name, value)
    db.commit()


def test_api_sweeper_recovers_jobs_of_lost_workers(app: Any, finished_job: Any, db: Any) -> None:
    from api.main import resend_pending
    from quanta_jobs.models import Job

    fresh = finished_job("source", TINY_SOURCE, status="running").id
    retry = finished_job("source", TINY_SOURCE, status="running").id
    cancel = finished_job("source", TINY_SOURCE, status="running").id
    give_up = finished_job("source", TINY_SOURCE, status="running").id
    _age_heartbeat(db, retry)
    _age_heartbeat(db, cancel, cancel_requested=True)
    _age_heartbeat(db, give_up, attempts=app.state.settings.max_attempts)
    assert resend_pending(app) == 1  # the retried job, sent to the broker again
    db.expire_all()
    states = {job_id: db.get(Job, job_id) for job_id in (fresh, retry, cancel, give_up)}
    assert states[fresh].status == "running"
    assert states[retry].status == "queued" and states[retry].worker is None
    assert states[retry].enqueued_at is not None
    assert states[cancel].status == "cancelled" and "was lost" in states[cancel].result["message"]
    assert states[give_up].status == "failed" and "gave up" in states[give_up].error


def test_progress_with_a_nan_metric_is_served(client: Any, finished_job: Any, db: Any) -> None:
    """A diverging run reports NaN loss: stored as null (PostgreSQL JSON has no NaN)."""
    from quanta_jobs.models import Job
    from worker.runner import clean_metrics

    metrics = clean_metrics({"loss": float("nan"), "categorical_accuracy": 0.5})
    assert metrics == {"loss": None, "categorical_accuracy": 0.5}
    job = finished_job("transfer", {"layer_to_transfer": 0}, status="running")
    db.get(Job, job.id).progress = {
        "run": 0, "nb_of_runs": 2, "epoch": 1, "nb_of_epochs": 3, "fraction": 1 / 6,
        "metrics": metrics, "quantas": {"0": {"source": 0.9, "target": 0.1}}}
    db.commit()
    body = client.get(f"/v1/jobs/{job.id}").json()
    assert body["progress"]["metrics"]["loss"] is None
    assert body["progress"]["quantas"]["0"]["source"] == 0.9
