"""Database reads and writes of jobs, uploads and artifacts (no HTTP, no Celery).

Status changes are not here: they go through `quanta_jobs.job_state`.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, delete, func, select, type_coerce, update
from sqlalchemy.orm import Session, aliased
from sqlalchemy.types import NullType

from quanta_jobs.errors import Conflict, NotFound
from quanta_jobs.job_state import TERMINAL, ConcurrentChange, JobKind, JobStatus, transition
from quanta_jobs.models import Artifact, Job, JobEvent, Upload, utcnow


def create_job(session: Session, kind: str, spec: dict[str, Any], *, owner: str = "",
               idempotency_key: str | None = None) -> Job:
    """Insert a queued job; the caller commits, then enqueues (never the other way).

    With `idempotency_key`, raises IntegrityError when `owner` already used that key.
    """
    job = Job(kind=kind, status=JobStatus.QUEUED.value, spec=spec, owner=owner,
              idempotency_key=idempotency_key)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str, *, owner: str | None = None) -> Job:
    """The job, or NotFound; with `owner`, another owner's job is NotFound too."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        raise NotFound(f"no job with id '{job_id}'")
    return job


def job_by_idempotency_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def count_queued(session: Session, owner: str) -> int:
    """Jobs of `owner` waiting for a worker (the per-token cap counts these): a study's
    jobs each count, the study itself (which no worker runs) does not."""
    return int(session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.owner == owner, Job.status == JobStatus.QUEUED.value,
               Job.kind != JobKind.STUDY.value)) or 0)


#: What a page of the job list shows of each job, read as plain rows (no ORM objects).
LIST_COLUMNS = (Job.id, Job.kind, Job.status, Job.spec, Job.created_at, Job.started_at,
                Job.finished_at, Job.updated_at, Job.attempts, Job.handbacks,
                Job.cancel_requested,
                Job.worker, Job.parent_id, Job.study_run, Job.progress, Job.result, Job.error)
#: A row of `list_job_rows`: the columns' values as the ORM would give them.
JobRow = namedtuple("JobRow", [c.key for c in LIST_COLUMNS])  # type: ignore[misc]
_FILTERS = ("parent_id", "owner", "status", "kind")


def _json_value(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _time_value(value: Any) -> datetime | None:
    if isinstance(value, str):  # SQLite's text form
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _job_row(row: Any) -> JobRow:
    (job_id, kind, status, spec, created_at, started_at, finished_at, updated_at, attempts,
     handbacks, cancel_requested, worker, parent_id, study_run, progress, result, error,
     _total) = row
    return JobRow(job_id, kind, status, _json_value(spec), _time_value(created_at),
                  _time_value(started_at), _time_value(finished_at), _time_value(updated_at),
                  attempts, handbacks, cancel_requested, worker, parent_id, study_run,
                  _json_value(progress), _json_value(result), error)


@lru_cache(maxsize=len(_FILTERS) ** 2)
def _page_query(filters: tuple[str, ...]) -> Any:
    """The page's statement for one set of filters, built once (values are parameters).

    The total comes with every row: an uncorrelated count subquery, which the database
    computes once, from an index where it can. The JSON and time columns are read as
    the driver gives them, and `_job_row` converts them as `Job`'s column types would,
    at a fraction of their cost per value (a page has hundreds of them).
    """
    counted = aliased(Job)  # its own FROM: never correlated with the rows' query
    total = (select(func.count()).select_from(counted)
             .where(*(getattr(counted, f) == bindparam(f) for f in filters)).scalar_subquery())
    raw = {"spec", "progress", "result", "created_at", "started_at", "finished_at",
           "updated_at"}
    columns = [type_coerce(c, NullType()).label(c.key) if c.key in raw else c
               for c in LIST_COLUMNS]
    return (select(*columns, total).where(*(getattr(Job, f) == bindparam(f) for f in filters))
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(bindparam("limit")).offset(bindparam("offset")))


def list_job_rows(
    session: Session,
    *,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
    owner: str | None = None,
    parent_id: str | None = None,
) -> tuple[list[JobRow], int]:
    """Jobs newest first (ties broken by id so pages never overlap), as `JobRow`s, and
    the total count, in one query; only a page past the end needs a second one."""
    values = {"parent_id": parent_id, "owner": owner, "status": status, "kind": kind}
    given = {name: value for name, value in values.items() if value is not None}
    found = session.execute(_page_query(tuple(given)),
                            {**given, "limit": limit, "offset": offset}).all()
    if found:
        return [_job_row(row) for row in found], int(found[0][-1])
    if offset == 0:
        return [], 0
    count = select(func.count()).select_from(Job).where(
        *(getattr(Job, name) == value for name, value in given.items()))
    return [], int(session.scalar(count) or 0)


def cancel_job(session: Session, job: Job) -> Job:
    """Cancel a queued job at once, or flag a running one for the worker's cooperative check."""
    if job.status == JobStatus.QUEUED:
        try:
            return transition(session, job, JobStatus.CANCELLED)
        except ConcurrentChange:  # a worker started it meanwhile: cancel it as running
            job = get_job(session, job.id)
            session.refresh(job)
    if job.status == JobStatus.RUNNING:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING.value)
            .values(cancel_requested=True, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.refresh(job)
        if job.status in TERMINAL:  # it finished meanwhile
            raise Conflict(f"job '{job.id}' already {job.status}; nothing to cancel")
        return job
    raise Conflict(f"job '{job.id}' already {job.status}; nothing to cancel")


def jobs_to_enqueue(session: Session, *, older_than: datetime, limit: int = 100) -> list[str]:
    """Ids of queued jobs whose message never reached the broker (broker was down)."""
    query = (
        select(Job.id)
        .where(
            Job.status == JobStatus.QUEUED.value,
            Job.enqueued_at.is_(None),
            Job.created_at < older_than,
        )
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def delete_job(session: Session, job: Job) -> list[str]:
    """Delete an ended job, and a study's jobs, with their artifacts and events (the
    caller commits, then removes the folders); returns the ids deleted."""
    children = list(session.scalars(select(Job.id).where(Job.parent_id == job.id)))
    ids = [*children, job.id]
    session.execute(delete(JobEvent).where(JobEvent.root_id.in_(ids) | JobEvent.job_id.in_(ids)))
    session.execute(delete(Artifact).where(Artifact.job_id.in_(ids)))
    session.execute(delete(Job).where(Job.id.in_(children)))
    session.execute(delete(Job).where(Job.id == job.id))
    session.expunge(job)
    return ids


def jobs_using_upload(session: Session, upload_id: str) -> list[str]:
    """Queued or running jobs whose spec names the upload (they would fail without it)."""
    rows = session.execute(select(Job.id, Job.spec).where(
        Job.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)))).all()
    return [job_id for job_id, spec in rows if _names_upload(spec, upload_id)]


def _names_upload(value: Any, upload_id: str) -> bool:
    if isinstance(value, dict):
        return value.get("upload") == upload_id or any(
            _names_upload(v, upload_id) for v in value.values())
    if isinstance(value, list):
        return any(_names_upload(v, upload_id) for v in value)
    return False


def create_upload(
    session: Session, *, upload_id: str, kind: str, filename: str, path: str, size: int,
    sha256: str, owner: str = "", idempotency_key: str | None = None,
) -> Upload:
    upload = Upload(
        id=upload_id, kind=kind, filename=filename, path=path, size=size, sha256=sha256,
        owner=owner, idempotency_key=idempotency_key,
    )
    session.add(upload)
    session.flush()
    return upload


def get_upload(session: Session, upload_id: str, *, owner: str | None = None) -> Upload:
    """The upload, or NotFound; with `owner`, another owner's upload is NotFound too."""
    upload = session.get(Upload, upload_id)
    if upload is None or (owner is not None and upload.owner != owner):
        raise NotFound(f"no upload with id '{upload_id}'")
    return upload


def upload_by_idempotency_key(session: Session, owner: str, key: str) -> Upload | None:
    return session.scalar(
        select(Upload).where(Upload.owner == owner, Upload.idempotency_key == key))


def list_uploads(
    session: Session, *, kind: str | None = None, limit: int = 50, offset: int = 0,
    owner: str | None = None,
) -> tuple[list[Upload], int]:
    query = select(Upload)
    count = select(func.count()).select_from(Upload)
    if owner is not None:
        query, count = query.where(Upload.owner == owner), count.where(Upload.owner == owner)
    if kind is not None:
        query, count = query.where(Upload.kind == kind), count.where(Upload.kind == kind)
    query = query.order_by(Upload.created_at.desc(), Upload.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(query)), int(session.scalar(count) or 0)


@dataclass(frozen=True)
class ArtifactInfo:
    path: str
    size: int
    sha256: str


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(
        session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.path))
    )


def get_artifact(session: Session, job_id: str, path: str) -> Artifact | None:
    return session.scalar(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.path == path)
    )


def replace_artifacts(session: Session, job_id: str, files: Iterable[ArtifactInfo]) -> None:
    """Record what a job's folder holds now (a retry rewrites the folder, so start over)."""
    for old in list_artifacts(session, job_id):
        session.delete(old)
    session.flush()
    for info in files:
        session.add(Artifact(job_id=job_id, path=info.path, size=info.size, sha256=info.sha256))
    session.flush()
