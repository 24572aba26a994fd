"""The FastAPI application: `create_app(settings)` for tests and servers, `app` for uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api import crud
from api.db import make_engine, make_sessionmaker
from api.errors import Conflict, ServiceError
from api.job_state import IllegalTransition
from api.migrate import upgrade
from api.models import utcnow
from api.recovery import recover_stale_jobs
from api.routes import health, jobs, uploads
from api.settings import Settings, get_settings
from worker.celery_app import make_celery, send_run_job

log = logging.getLogger(__name__)

DESCRIPTION = """\
Run QUANTA experiments as jobs: train a source model, then measure how transferable
its layers are to a target task. Upload weights, saved models and datasets, submit
jobs that reference them, follow their progress and download their files.
"""


def resend_pending(app: FastAPI) -> int:
    """Send the queued jobs whose message never reached the broker, after putting back in
    the queue the running jobs whose worker was lost; returns how many were sent."""
    settings: Settings = app.state.settings
    older_than = utcnow() - timedelta(seconds=max(settings.requeue_interval_s, 5.0))
    sent = 0
    with app.state.sessionmaker() as session:
        recovered = recover_stale_jobs(session, settings)
        for job_id in recovered:
            log.warning("job %s: its worker stopped beating; back in the queue", job_id)
        pending = crud.jobs_to_enqueue(session, older_than=older_than)
        for job_id in dict.fromkeys([*recovered, *pending]):
            try:
                send_run_job(app.state.celery, job_id)
            except Exception as exc:
                log.warning("broker still unreachable (%s); %s stays queued", exc, job_id)
                break
            crud.mark_enqueued(session, job_id)
            session.commit()
            sent += 1
    if sent:
        log.info("re-sent %d queued job(s) to the broker", sent)
    return sent


async def _resend_loop(app: FastAPI, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(resend_pending, app)
        except Exception:
            log.exception("re-sending queued jobs failed")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    settings.ensure_dirs()
    if settings.migrate_on_start:
        await run_in_threadpool(upgrade, settings.database_url)
    task = None
    if settings.requeue_interval_s > 0:
        task = asyncio.create_task(_resend_loop(app, settings.requeue_interval_s))
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        app.state.engine.dispose()


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail()})


async def _illegal_transition(_request: Request, exc: Exception) -> JSONResponse:
    error = Conflict(str(exc))
    return JSONResponse(status_code=error.status_code, content={"detail": error.detail()})


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app bound to `settings` (default: from the environment) with its own engine."""
    settings = settings or get_settings()
    app = FastAPI(title="QUANTA job service", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.celery = make_celery(settings)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(IllegalTransition, _illegal_transition)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(uploads.router)
    return app


def __getattr__(name: str) -> FastAPI:
    """`api.main:app` for uvicorn, built on first use so importing the module is cheap."""
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(name)
