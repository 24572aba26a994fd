"""A job's live progress as numbered events: status changes and finished epochs.

Workers (and the API, when it cancels) append events; `GET /v1/jobs/{id}/events` reads
them back as Server-Sent Events. Events are numbered by `seq` within their root (a
study for its children, else the job itself). A new `seq` is `max + 1` of its root,
and the unique (root, seq) index makes two writers that picked the same number
collide: the second waits for the first to commit, fails, and picks the next. So
`seq` order is commit order, and a reader that asks for `seq > last` never skips an
event that commits later with a smaller number.

Each event is written in a transaction of its own, after the status or progress it
reports is committed: recording never holds a lock on a job row, and a failure to
record never undoes the change it reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quanta_jobs.models import Job, JobEvent, utcnow
from quanta_spec import layer_label
from quanta_spec.jobs import JobKind

log = logging.getLogger(__name__)

STATUS = "status"
EPOCH = "epoch"
#: Attempts at a free `seq` when writers of one root collide.
_TRIES = 20


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    job_id: str
    data: dict[str, Any]
    created_at: datetime


def root_of(job: Job) -> str:
    """The job whose stream carries this job's events: its study, or itself."""
    return job.parent_id or job.id


def coordinates(job: Job) -> dict[str, Any]:
    """Which job an event is about: id, kind, study, and for a transfer its layer and run."""
    data: dict[str, Any] = {"job": job.id, "kind": job.kind, "parent": job.parent_id}
    if job.kind == JobKind.TRANSFER and "layer_to_transfer" in (job.spec or {}):
        data["layer"] = layer_label(job.spec["layer_to_transfer"])
        data["run"] = job.study_run if job.study_run is not None else None
    return data


def status_data(job: Job, **extra: Any) -> dict[str, Any]:
    """The body of a `status` event for the job as it is now."""
    data = {**coordinates(job), "status": job.status, "attempt": job.attempts,
            "worker": job.worker, "cancel_requested": job.cancel_requested}
    if job.error:
        data["error"] = job.error
    return {**data, **extra}


def epoch_data(job: Job, progress: dict[str, Any]) -> dict[str, Any]:
    """The body of an `epoch` event from a worker's progress record.

    For a study's child, `run` is the run in the study (the child's own run is 0).
    """
    data = {**coordinates(job), "attempt": job.attempts}
    data.update({k: v for k, v in progress.items() if k != "history"})
    if job.study_run is not None:
        data["run"] = job.study_run + int(progress.get("run", 0))
    return data


def record(session: Session, job: Job, kind: str, data: dict[str, Any]) -> int | None:
    """Append an event about `job` and commit; returns its `seq` (None if it failed).

    `session` must have nothing pending: this commits. Never raises: an event is
    informative, and what it reports is already committed.
    """
    root = root_of(job)
    for _ in range(_TRIES):
        next_seq = (
            select(func.coalesce(func.max(JobEvent.seq), 0) + 1)
            .where(JobEvent.root_id == root)
            .scalar_subquery()
        )
        statement = insert(JobEvent).values(
            root_id=root, job_id=job.id, seq=next_seq, kind=kind, data=data,
            created_at=utcnow(),
        ).returning(JobEvent.seq)
        try:
            seq = session.execute(statement).scalar_one()
            session.commit()
            return int(seq)
        except IntegrityError:  # another writer took this seq first: take the next one
            session.rollback()
        except Exception:
            session.rollback()
            log.warning("event %s of job %s not recorded", kind, job.id, exc_info=True)
            return None
    log.warning("event %s of job %s not recorded: too many concurrent writers", kind, job.id)
    return None


def record_status(session: Session, job: Job, **extra: Any) -> int | None:
    """Record the job's current status (reloaded first) as a `status` event."""
    session.refresh(job)
    return record(session, job, STATUS, status_data(job, **extra))


def fetch(session: Session, job: Job, after: int, limit: int = 500) -> list[Event]:
    """Events of `job`'s stream with `seq > after`, in order.

    A study's stream holds its own events and its children's; any other job's stream
    holds its own only (a child's stream is a subset of its study's).
    """
    query = select(JobEvent.seq, JobEvent.kind, JobEvent.job_id, JobEvent.data,
                   JobEvent.created_at)
    if job.kind == JobKind.STUDY:
        query = query.where(JobEvent.root_id == job.id)
    else:
        query = query.where(JobEvent.job_id == job.id, JobEvent.root_id == root_of(job))
    query = query.where(JobEvent.seq > literal(after)).order_by(JobEvent.seq).limit(limit)
    return [Event(int(seq), kind, job_id, data, created_at)
            for seq, kind, job_id, data, created_at in session.execute(query)]
