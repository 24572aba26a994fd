"""The Celery task of the worker process: `run_job(job_id)`.

Imported only by the worker (it pulls in `worker.runner`, which imports TensorFlow
when a job starts). The API sends the task by name through `worker.celery_app`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_shutting_down

from api.settings import get_settings
from worker.celery_app import TASK_NAME, make_celery, send_run_job
from worker.runner import JobRunner

log = logging.getLogger(__name__)

app = make_celery()
_runner: JobRunner | None = None


def runner() -> JobRunner:
    """The process's runner (one engine per worker process), created on first use."""
    global _runner
    if _runner is None:
        _runner = JobRunner(get_settings(), resend=lambda job_id: send_run_job(app, job_id))
    return _runner


@worker_shutting_down.connect
def _on_shutdown(**_kwargs: Any) -> None:
    """Warm shutdown: a running job stops at its next batch and goes back to the queue."""
    runner().shutting_down.set()


@app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def run_job(self: Any, job_id: str) -> str:
    """Run one job; safe to receive twice (the database decides who runs it)."""
    hostname = self.request.hostname or "worker"
    outcome = runner().run(job_id, hostname)
    return outcome.status
