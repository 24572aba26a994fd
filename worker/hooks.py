"""The worker's hooks around every job: its events, and its study's start and end.

`JobRunner` calls these: `job_started` after it claims a job (the job's `status`
event; a study starts running with its first child), `epoch_event` after each epoch,
and `job_ended` once the job's final status is committed (its event; the study ends
when its last child does, see `worker.study_end`).

Nothing here may fail a job: the job's own outcome is already decided when these run.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from quanta_jobs import job_events
from quanta_jobs.job_state import TERMINAL
from quanta_jobs.models import Job
from quanta_jobs.studies import start_study, study_progress
from worker.context import JobContext
from worker.study_end import finish_study

log = logging.getLogger(__name__)


def job_started(context: JobContext, job_id: str) -> None:
    """After a claim: the job's `running` event; its study, if queued, starts running."""
    try:
        with context.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            job_events.record_status(session, job)
            if job.parent_id is not None and start_study(session, job.parent_id):
                study = session.get(Job, job.parent_id)
                if study is not None:
                    job_events.record_status(session, study)
    except Exception:
        log.warning("job %s: start not reported", job_id, exc_info=True)


def epoch_event(session: Session, job_id: str, progress: dict[str, Any]) -> None:
    """One `epoch` event with the progress a worker just saved (committed)."""
    job = session.get(Job, job_id)
    if job is not None:
        job_events.record(session, job, job_events.EPOCH, job_events.epoch_data(job, progress))


def job_ended(context: JobContext, job_id: str, worker: str) -> None:
    """After a job's status change was committed: its event, and the end of its study if
    it was the last child running."""
    try:
        with context.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            extra = {}
            if job.parent_id is not None:
                study = session.get(Job, job.parent_id)
                if study is not None:
                    progress = study_progress(session, study)
                    extra["study"] = {"done": progress["done"], "total": progress["total"]}
            job_events.record_status(session, job, **extra)
            parent, ended = job.parent_id, job.status in TERMINAL
        if parent is not None and ended:
            finish_study(context, parent, worker)
    except Exception:
        log.exception("job %s: end not reported", job_id)
