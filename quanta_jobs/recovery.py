"""Jobs whose worker was lost, and the sweeper: for the API's sweep loop and the workers.

A worker stamps `heartbeat_at` every few seconds while it runs a job, with the
database's clock (`db_now`), and staleness is judged in SQL by that same clock, so hosts
whose clocks disagree still agree. A running job whose stamp is older than
`stale_after_s` lost its worker (killed, out of memory, host down, or cut off from the
database: such a worker stops the job itself after `heartbeat_loss_s`, less than
`stale_after_s`): if that attempt had finished and saved its outcome but could not
record it, the outcome is recorded now (`quanta_jobs.attempts`); otherwise the job
goes back to the queue for another attempt, or fails after `max_attempts`, or ends
cancelled if a cancel was requested meanwhile. The message
broker cannot be trusted to redeliver it in time (Redis only does so after its
visibility timeout), so the API sweeps for such jobs itself (`sweep`), and sends on
the way the queued jobs whose message never reached the broker and asks a worker to
end the studies nobody ended.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from quanta_jobs import attempts, crud, job_events, queue
from quanta_jobs.job_state import ConcurrentChange, JobKind, JobStatus, transition
from quanta_jobs.models import Job, db_now, utcnow
from quanta_jobs.settings import Settings
from quanta_jobs.studies import resend_stuck_studies

log = logging.getLogger(__name__)


def is_stale(session: Session, job: Job, settings: Settings) -> bool:
    """Whether `job`'s last heartbeat is older than `stale_after_s`, by the database's clock."""
    return bool(session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.id == job.id,
               func.coalesce(Job.heartbeat_at, Job.updated_at) < db_now(settings.stale_after_s))))


def recover(session: Session, job: Job, settings: Settings) -> JobStatus:
    """Take a running job from its lost worker; returns its new status (caller commits).

    An outcome the lost attempt saved on disk is recorded (committed) and promoted.
    Raises `ConcurrentChange` if the job moved meanwhile (its worker came back).
    """
    lost = job.worker or "an unknown worker"
    saved = attempts.load_outcome(settings, job.id, job.attempts)
    if saved is not None and saved.worker == job.worker:
        attempts.record(session, job, saved)
        log.warning("job %s: recorded the %s outcome that attempt %d of %s saved but could "
                    "not record", job.id, saved.status, saved.attempt, lost)
        attempts.promote(settings, job.id, saved.attempt)
        job_events.record_status(session, job)
        return JobStatus(job.status)
    if job.cancel_requested:
        transition(session, job, JobStatus.CANCELLED, owner=job.worker,
                   result={"message": f"cancelled; its worker ({lost}) was lost"})
    elif job.failed_attempts >= settings.max_attempts:
        transition(session, job, JobStatus.FAILED, owner=job.worker,
                   error=f"gave up after {job.failed_attempts} attempts: the worker running "
                         f"it stopped each time (out of memory? killed?); last: {lost}")
    else:  # its checkpoints stay: the next attempt resumes from them
        transition(session, job, JobStatus.QUEUED, owner=job.worker, enqueued_at=None)
        return JobStatus.QUEUED
    attempts.discard(settings, job.id)  # nothing to resume, and no outcome (checked above)
    return JobStatus(job.status)


def recover_stale_jobs(session: Session, settings: Settings, limit: int = 100) -> list[str]:
    """Recover every running job with a stale heartbeat; returns the ids put back in queue."""
    stale = session.scalars(
        select(Job)
        .where(Job.status == JobStatus.RUNNING.value,
               Job.kind != JobKind.STUDY.value,  # run by no worker
               func.coalesce(Job.heartbeat_at, Job.updated_at)
               < db_now(settings.stale_after_s))
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


#: Heartbeat periods a job of this worker's name must have gone unstamped before a worker
#: starting under that name takes it back: a live worker stamps its job every period, so a
#: job this quiet has no live worker, even if another host wrongly runs under our name.
RECLAIM_AFTER_BEATS = 2


def reclaim_own(sessions: sessionmaker[Session], celery: Celery | None, settings: Settings,
                worker: str, stop: threading.Event | None = None) -> list[str]:
    """At a worker's start: take back the jobs still `running` under its name, which its
    previous life was running when it died (SIGKILL, out of memory, a container killed),
    rather than leaving them to the sweeper's `stale_after_s`. Each is recovered (its saved
    outcome recorded, or back in the queue to resume from its checkpoint) once its
    heartbeat is `RECLAIM_AFTER_BEATS` periods old, and sent to the broker; returns the ids
    put back in the queue. A job whose heartbeat keeps moving has a live worker under the
    same name (a misconfiguration): it is left alone, with an error in the log."""
    quiet_s = RECLAIM_AFTER_BEATS * settings.heartbeat_s
    stop = stop or threading.Event()
    deadline = time.monotonic() + quiet_s + 2 * settings.heartbeat_s + 5.0
    reclaimed: list[str] = []
    while True:
        with sessions() as session:
            own = session.scalars(
                select(Job).where(Job.status == JobStatus.RUNNING.value, Job.worker == worker,
                                  Job.kind != JobKind.STUDY.value)).all()
            waiting, queued = [], []
            for job in own:
                quiet = session.scalar(
                    select(func.count()).select_from(Job)
                    .where(Job.id == job.id,
                           func.coalesce(Job.heartbeat_at, Job.updated_at) < db_now(quiet_s)))
                if not quiet:
                    waiting.append(job.id)
                    continue
                try:
                    status = recover(session, job, settings)
                    session.commit()
                except ConcurrentChange:
                    session.rollback()
                    continue
                log.warning("job %s: %s was running it when it stopped; taken back (%s)",
                            job.id, worker, status.value)
                if status is JobStatus.QUEUED:
                    queued.append(job.id)
            if queued and celery is not None:
                queue.enqueue(celery, session, queued)
            reclaimed += queued
        if not waiting:
            return reclaimed
        if time.monotonic() > deadline:
            log.error("jobs %s: still stamped by another worker named %s; left to it (give "
                      "each worker its own name)", ", ".join(waiting), worker)
            return reclaimed
        if stop.wait(min(settings.heartbeat_s / 2, 1.0)):
            return reclaimed


def sweep(sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> int:
    """Put back in the queue the running jobs whose worker was lost, then send the queued
    jobs whose message never reached the broker, then ask a worker to end each stuck
    study; returns how many messages were sent."""
    older_than = utcnow() - timedelta(seconds=max(settings.requeue_interval_s, 5.0))
    with sessions() as session:
        recovered = recover_stale_jobs(session, settings)
        for job_id in recovered:
            log.warning("job %s: its worker stopped beating; back in the queue", job_id)
        pending = crud.jobs_to_enqueue(session, older_than=older_than)
        sent = queue.enqueue(celery, session, dict.fromkeys([*recovered, *pending]))
        sent += resend_stuck_studies(session, celery, settings)
        try:
            attempts.settle_leftovers(session, settings)
        except Exception:  # housekeeping: a store that is down is tried again next sweep
            log.warning("could not settle the attempts' folders", exc_info=True)
    if sent:
        log.info("re-sent %d queued job(s) to the broker", sent)
    return sent
