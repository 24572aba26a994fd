"""Jobs whose worker was lost: what to do with them, for the API's sweeper and the workers.

A worker stamps `heartbeat_at` every few seconds while it runs a job. A running job
whose stamp is older than `stale_after_s` lost its worker (killed, out of memory,
host down): it goes back to the queue for another attempt, or fails after
`max_attempts`, or ends cancelled if a cancel was requested meanwhile. The message
broker cannot be trusted to redeliver it in time (Redis only does so after its
visibility timeout), so the API sweeps for such jobs itself.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.job_state import ConcurrentChange, JobStatus, transition
from api.models import Job, utcnow
from api.settings import Settings


def is_stale(job: Job, settings: Settings) -> bool:
    beat = job.heartbeat_at or job.updated_at
    return beat < utcnow() - timedelta(seconds=settings.stale_after_s)


def recover(session: Session, job: Job, settings: Settings) -> JobStatus:
    """Take a running job from its lost worker; returns its new status (caller commits).

    Raises `ConcurrentChange` if the job moved meanwhile (its worker came back).
    """
    lost = job.worker or "an unknown worker"
    if job.cancel_requested:
        transition(session, job, JobStatus.CANCELLED, owner=job.worker,
                   result={"message": f"cancelled; its worker ({lost}) was lost"})
    elif job.attempts >= settings.max_attempts:
        transition(session, job, JobStatus.FAILED, owner=job.worker,
                   error=f"gave up after {job.attempts} attempts: the worker running it "
                         f"stopped each time (out of memory? killed?); last: {lost}")
    else:  # its checkpoints stay: the next attempt resumes from them
        transition(session, job, JobStatus.QUEUED, owner=job.worker, enqueued_at=None)
        return JobStatus.QUEUED
    shutil.rmtree(settings.checkpoints_path / job.id, ignore_errors=True)  # nothing to resume
    return JobStatus(job.status)


def recover_stale_jobs(session: Session, settings: Settings, limit: int = 100) -> list[str]:
    """Recover every running job with a stale heartbeat; returns the ids put back in queue."""
    cutoff = utcnow() - timedelta(seconds=settings.stale_after_s)
    stale = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.RUNNING.value, Job.kind != "study",  # run by no worker
               func.coalesce(Job.heartbeat_at, Job.updated_at) < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    requeued = []
    for job in stale:
        try:
            if recover(session, job, settings) is JobStatus.QUEUED:
                requeued.append(job.id)
            session.commit()
        except ConcurrentChange:
            continue
    return requeued
