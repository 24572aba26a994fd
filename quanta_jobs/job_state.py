"""THE one place that changes a job's status, for the API and the workers alike.

The statuses themselves (`JobStatus`, `TERMINAL`) are `quanta_spec.jobs`, shared with
the client; this module adds the table of legal changes and the change itself.

Every change is a compare-and-swap (`UPDATE ... WHERE status = <expected>`), so two
processes racing on one job (a cancel and a worker starting it, or a message
delivered twice) cannot both win: the loser gets `ConcurrentChange`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from quanta_jobs.models import Job, db_now, utcnow
from quanta_spec.jobs import TERMINAL, JobKind, JobStatus

__all__ = ["ALLOWED", "TERMINAL", "ConcurrentChange", "IllegalTransition", "JobKind",
           "JobStatus", "check_transition", "transition"]

#: The only legal status changes. running -> queued is a retry after a lost worker.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    """A status change the table forbids (a bug, or a request that came too late)."""

    def __init__(self, job_id: str, old: str, new: str) -> None:
        super().__init__(f"job {job_id}: cannot go from {old} to {new}")
        self.job_id, self.old, self.new = job_id, old, new


class ConcurrentChange(IllegalTransition):
    """Someone else changed the job's status between our read and our write."""

    def __init__(self, job_id: str, old: str, new: str) -> None:
        super().__init__(job_id, old, new)
        self.args = (f"job {job_id}: status changed concurrently (expected {old}, wanted {new})",)


def check_transition(job_id: str, old: str, new: str) -> None:
    """Raise `IllegalTransition` unless `old -> new` is in `ALLOWED`."""
    if JobStatus(new) not in ALLOWED[JobStatus(old)]:
        raise IllegalTransition(job_id, old, new)


def transition(
    session: Session, job: Job, new: JobStatus, *, owner: str | None = None,
    attempt: int | None = None, **fields: Any
) -> Job:
    """Move `job` to `new` if it is still in the status we loaded; the caller commits.

    With `owner`, also only if the job's `worker` is still `owner`: a worker that lost
    its job (it was taken over after its heartbeat went stale) cannot finish it; with
    `attempt`, only if `attempts` is still that number (a worker restarted under the same
    name is another attempt). The heartbeat a job starts with is the database's clock.
    Sets the timestamps that go with the change (started_at and attempts+1 when it
    starts running, finished_at when it ends) plus any extra column in `fields`.
    """
    old = job.status
    check_transition(job.id, old, new)
    now: datetime = utcnow()
    values: dict[str, Any] = {"status": new.value, "updated_at": now, **fields}
    if new is JobStatus.RUNNING:
        values.setdefault("started_at", now)
        values.setdefault("heartbeat_at", db_now())
        values["attempts"] = Job.attempts + 1
        values.setdefault("error", None)
    elif new is JobStatus.QUEUED:
        values.setdefault("worker", None)
        values.setdefault("progress", None)
    else:
        values.setdefault("finished_at", now)
    where = [Job.id == job.id, Job.status == old]
    if owner is not None:
        where.append(Job.worker == owner)
    if attempt is not None:
        where.append(Job.attempts == attempt)
    result = session.execute(
        update(Job)
        .where(*where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ConcurrentChange(job.id, old, new)
    session.refresh(job)
    return job
