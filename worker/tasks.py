"""The Celery task of the worker process: `run_job(job_id)`.

Imported only by the worker (it pulls in `worker.runner`, which imports TensorFlow
when a job starts). The API sends the task by name through `quanta_jobs.queue`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Reject
from celery.signals import worker_shutting_down

from quanta_jobs.queue import FINISH_STUDY_TASK, TASK_NAME, make_celery
from quanta_jobs.settings import get_settings
from worker import study_end
from worker.db_retry import DatabaseUnavailable
from worker.runner import JobRunner

log = logging.getLogger(__name__)

app = make_celery()
_runner: JobRunner | None = None


def runner() -> JobRunner:
    """The process's runner (one engine per worker process), created on first use."""
    global _runner
    if _runner is None:
        _runner = JobRunner(get_settings(), celery=app)
    return _runner


@worker_shutting_down.connect
def _on_shutdown(**_kwargs: Any) -> None:
    """Warm shutdown: a running job lets its epoch in progress end and be saved (for up to
    QUANTA_SHUTDOWN_WAIT_S), then stops and goes back to the queue."""
    runner().shutting_down.set()


@app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def run_job(self: Any, job_id: str) -> str:
    """Run one job; safe to receive twice (the database decides who runs it)."""
    hostname = self.request.hostname or "worker"
    try:
        outcome = runner().run(job_id, hostname)
    except DatabaseUnavailable as exc:  # could not even claim it: keep the message
        log.error("job %s: %s; its message goes back to the queue", job_id, exc)
        raise Reject(str(exc), requeue=True) from exc
    return outcome.status


@app.task(name=FINISH_STUDY_TASK, bind=True, acks_late=True, ignore_result=True)
def finish_study(self: Any, study_id: str) -> str:
    """End a study whose children all ended (statistics, plots, final status); safe to
    receive twice or while another worker ends it (the first to claim it does)."""
    return study_end.finish_study(runner().context, study_id, self.request.hostname or "worker")
