"""Studies: one request that fans out into a transfer job per (layer, run).

A study is a job of kind `study` that no worker runs itself. Its children are ordinary
transfer jobs (`parent_id` = the study, `study_run` = their run in the study), queued
through the broker like any job, so every idle worker takes one. The study starts
running when its first child does (`start_study`), and when its last child ends a
worker claims the study (`claim_study_end`), computes the statistics and plots
(`worker.study_end`) and ends it, exactly once.

This module is the database side, shared by the API and the workers: creating the
children, reporting progress, cancelling, starting and claiming a study, and noticing
a study whose last child ended without anyone finishing it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from quanta_jobs import crud, job_events
from quanta_jobs.errors import Conflict
from quanta_jobs.job_state import TERMINAL, ConcurrentChange, JobKind, JobStatus, transition
from quanta_jobs.models import Job, db_now, utcnow
from quanta_jobs.queue import enqueue, request_study_end
from quanta_jobs.settings import Settings
from quanta_spec import RemoteStudySpec, layer_label
from quanta_spec.specs import entry_order

log = logging.getLogger(__name__)

KIND = JobKind.STUDY.value
ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
#: How long a study may wait, every child ended, before the API asks a worker to end it.
STUCK_AFTER_S = 30.0


def study_spec(study: Job) -> RemoteStudySpec:
    return RemoteStudySpec.model_validate(study.spec)


def add_children(session: Session, study: Job) -> list[Job]:
    """Insert the study's children, run by run (so a study cut short still covers every
    layer); they inherit its owner. The caller commits, then calls `enqueue_children`.
    With `until`, these are the first `min_runs` runs of each layer; `quanta_jobs.adaptive_runs`
    adds the others as runs end."""
    spec = study_spec(study)
    children = []
    for run in range(spec.first_runs):
        for layer in spec.study_layers:
            child = Job(kind=JobKind.TRANSFER.value, status=JobStatus.QUEUED.value,
                        spec=spec.child_spec(layer, run).model_dump(mode="json"),
                        parent_id=study.id, study_run=run, owner=study.owner)
            session.add(child)
            children.append(child)
    # The study itself is never sent to the broker: mark it so the re-sender leaves it.
    study.enqueued_at = utcnow()
    session.flush()
    return children


def enqueue_children(celery: Celery, session: Session, study: Job) -> int:
    """Send every queued child to the broker; those it misses stay for the re-sender."""
    ids = session.scalars(
        select(Job.id).where(Job.parent_id == study.id, Job.status == JobStatus.QUEUED.value,
                             Job.enqueued_at.is_(None))
        .order_by(Job.study_run, Job.created_at))
    return enqueue(celery, session, ids)


def list_children(session: Session, study_id: str, *, status: str | None = None,
                  limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
    """Children in study order: run by run, layer by layer."""
    where = [Job.parent_id == study_id]
    if status is not None:
        where.append(Job.status == status)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(select(Job).where(*where).order_by(Job.study_run, Job.created_at,
                                                              Job.id)
                           .limit(limit).offset(offset))
    return list(rows), int(total)


def study_progress(session: Session, study: Job) -> dict[str, Any]:
    """Children done (ended in any way) of all, by status and by layer, and the share of
    all their epochs done."""
    return studies_progress(session, [study.id])[study.id]


def studies_progress(session: Session, study_ids: list[str]) -> dict[str, dict[str, Any]]:
    """`study_progress` of several studies in one query (a page of the job list)."""
    layer = Job.spec["layer_to_transfer"]  # a number, or a user network's layer name
    fraction = Job.progress["fraction"].as_float()  # not each child's whole progress
    rows = session.execute(select(Job.parent_id, Job.status, layer, fraction)
                           .where(Job.parent_id.in_(study_ids))).all() if study_ids else []
    by_study: dict[str, list[tuple[str, int, Any]]] = {study_id: [] for study_id in study_ids}
    for parent_id, status, layer_number, done in rows:
        by_study[parent_id].append((status, layer_number, done))
    return {study_id: _progress(children) for study_id, children in by_study.items()}


def _progress(children: list[tuple[str, int, Any]]) -> dict[str, Any]:
    counts = {s.value: 0 for s in JobStatus}
    terminal = {s.value for s in TERMINAL}
    by_layer: dict[str, dict[str, int]] = {}
    work = 0.0
    for status, layer_number, fraction in children:
        layer = layer_label(layer_number)
        entry = by_layer.setdefault(layer, {"total": 0, "done": 0, **dict.fromkeys(counts, 0)})
        entry["total"] += 1
        entry[status] += 1
        counts[status] += 1
        if status in terminal:
            entry["done"] += 1
            work += 1.0
        elif status == JobStatus.RUNNING.value and fraction:
            work += float(fraction)
    total = len(children)
    done = sum(counts[s.value] for s in TERMINAL)
    order = sorted(by_layer, key=entry_order)
    return {"done": done, "total": total, "fraction": work / total if total else 0.0,
            **counts, "by_layer": {k: by_layer[k] for k in order}}


def unfinished_children(session: Session, study_id: str) -> int:
    return int(session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.parent_id == study_id, Job.status.in_(ACTIVE))) or 0)


def _end_cancelled(session: Session, study: Job) -> bool:
    """Cancel the study if no child is left running; True if this call ended it."""
    session.refresh(study)
    if study.status in TERMINAL or unfinished_children(session, study.id):
        return False
    try:
        transition(session, study, JobStatus.CANCELLED,
                   result={"message": "cancelled", "progress": study_progress(session, study)})
        session.commit()
    except ConcurrentChange:
        return False
    return True


def cancel_study(session: Session, study: Job) -> Job:
    """Cancel a study: queued children at once, running ones at their next batch.

    The study itself ends `cancelled` once no child is running any more: at once when
    none was, else when the worker of the last running child stops it.
    """
    if study.status in TERMINAL:
        raise Conflict(f"study '{study.id}' already {study.status}; nothing to cancel")
    # Flag the study first: a worker that ends the last child then cancels it too,
    # instead of computing its statistics.
    session.execute(update(Job).where(Job.id == study.id, Job.status.in_(ACTIVE))
                    .values(cancel_requested=True, updated_at=utcnow())
                    .execution_options(synchronize_session=False))
    session.commit()
    changed = []
    children = session.scalars(select(Job).where(Job.parent_id == study.id,
                                                 Job.status.in_(ACTIVE))).all()
    for child in children:
        try:
            changed.append(crud.cancel_job(session, child))
            session.commit()
        except Conflict:  # it ended meanwhile
            session.rollback()
    ended = _end_cancelled(session, study)
    for child in changed:
        job_events.record_status(session, child)
    if ended:
        job_events.record_status(session, study)
    session.refresh(study)
    return study


def cancelled_children(session: Session, study_id: str) -> list[str]:
    """Ids of the study's jobs that ended cancelled (their checkpoints can go)."""
    return list(session.scalars(select(Job.id).where(
        Job.parent_id == study_id, Job.status == JobStatus.CANCELLED.value)))


def after_cancel(session: Session, celery: Celery, job: Job) -> None:
    """After a job was cancelled through the API (committed): tell its stream, and if it
    was a study's last unfinished child, have a worker end the study."""
    job_events.record_status(session, job)
    if job.parent_id is None or job.status not in TERMINAL:
        return
    if unfinished_children(session, job.parent_id) == 0:
        request_study_end(celery, [job.parent_id])


def stuck_studies(session: Session, settings: Settings,
                  quiet_s: float = STUCK_AFTER_S) -> list[str]:
    """Studies not ended although every child ended more than `quiet_s` ago, and that no
    worker is ending (never claimed, or its claim is stale: that worker died)."""
    now = utcnow()
    stale = session.scalar(select(db_now(settings.stale_after_s)))  # the database's clock
    quiet = now - timedelta(seconds=quiet_s)
    candidates = session.scalars(
        select(Job).where(Job.kind == KIND, Job.status.in_(ACTIVE))
        .order_by(Job.created_at).limit(100)).all()
    stuck = []
    for study in candidates:
        if study.worker is not None and (study.heartbeat_at or now) >= stale:
            continue
        if unfinished_children(session, study.id):
            continue
        last = session.scalar(select(func.max(Job.finished_at))
                              .where(Job.parent_id == study.id))
        if last is None or last < quiet:
            stuck.append(study.id)
    return stuck


def resend_stuck_studies(session: Session, celery: Celery, settings: Settings) -> int:
    """Ask a worker to end each stuck study; returns how many were sent."""
    return request_study_end(celery, stuck_studies(session, settings))


def start_study(session: Session, study_id: str) -> bool:
    """A child started running: the study, if still queued, runs too (committed); True if
    this call started it (another child may have been first)."""
    study = session.get(Job, study_id)
    if study is None or study.status != JobStatus.QUEUED:
        return False
    try:
        transition(session, study, JobStatus.RUNNING)
        session.commit()
    except ConcurrentChange:  # another child started it first
        return False
    log.info("study %s: running", study_id)
    return True


def claim_study_end(session: Session, settings: Settings, study_id: str, me: str
                    ) -> Job | None:
    """Take the study for ending it (committed): a compare-and-swap on `worker`, which
    must be free or stale (the worker that claimed it died). None if someone else has it."""
    claimed = session.execute(
        update(Job)
        .where(Job.id == study_id, Job.kind == KIND, Job.status.in_(ACTIVE),
               or_(Job.worker.is_(None), Job.heartbeat_at < db_now(settings.stale_after_s)))
        .values(worker=me, heartbeat_at=db_now())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if claimed != 1:
        return None
    study = session.get(Job, study_id)
    assert study is not None
    session.refresh(study)
    return study
