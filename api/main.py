"""The FastAPI application: `create_app(settings)` for tests and servers, `app` for uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api import docs, openapi
from api.auth import authenticate, identify
from api.body_limit import BodyLimit, identify_with
from api.errors import STATUS, Unauthorized, http_headers, http_status
from api.head import add_head_routes
from api.metrics import HttpLatency, make_registry
from api.multipart import MULTIPART_OVERHEAD
from api.origin_guard import OriginGuard, parse_hosts
from api.request_guard import RejectNul
from api.routes import dashboard, health, jobs, metrics, studies, uploads
from api.schemas import ErrorBody
from quanta_jobs import upload_holds
from quanta_jobs.db import make_engine, make_sessionmaker
from quanta_jobs.errors import Conflict, ServiceError
from quanta_jobs.job_state import IllegalTransition
from quanta_jobs.migrate import upgrade
from quanta_jobs.queue import make_celery
from quanta_jobs.recovery import sweep
from quanta_jobs.settings import Settings, get_settings
from quanta_jobs.store import work_dir
from quanta_jobs.tokens import parse_env_tokens

log = logging.getLogger(__name__)

DESCRIPTION = """\
Run QUANTA experiments as jobs: train a source model, then measure how transferable
its layers are to a target task. Upload weights, saved models and datasets, submit
jobs that reference them, follow their progress and download their files.
"""


def resend_pending(app: FastAPI) -> int:
    """One pass of the sweeper (`quanta_jobs.recovery.sweep`) with the app's database and
    broker; returns how many messages were sent."""
    return sweep(app.state.sessionmaker, app.state.celery, app.state.settings)


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
    await run_in_threadpool(_free_orphan_uploads, app)
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


def _free_orphan_uploads(app: FastAPI) -> None:
    """What uploads cut short by this host's dead API processes left: their holds on the
    storage quota and their partial files (`quanta_jobs.upload_holds`)."""
    settings: Settings = app.state.settings
    try:
        with app.state.sessionmaker() as session:
            holds, files = upload_holds.free_orphans(
                session, work_dir(settings, "uploads", ""))
    except Exception:  # a database not migrated yet: the requests will say so
        log.warning("could not free the holds of interrupted uploads", exc_info=True)
        return
    if holds or files:
        log.info("freed %d hold(s) and %d partial file(s) of interrupted uploads", holds, files)


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(status_code=http_status(exc), content={"detail": exc.detail()},
                        headers=http_headers(exc))


async def _illegal_transition(_request: Request, exc: Exception) -> JSONResponse:
    error = Conflict(str(exc))
    return JSONResponse(status_code=http_status(error), content={"detail": error.detail()})


def _text(value: str) -> str:
    """`value` with any lone surrogate (`"\\ud800"` in JSON, which Python's parser accepts)
    replaced by U+FFFD: UTF-8 cannot encode one, so echoing it back would fail."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _echoable(value: Any) -> Any:
    """An error's echo of its input as JSON can write it: every non-finite float as a
    string (JSON has no inf or NaN), every string encodable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_echoable(key): _echoable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_echoable(item) for item in value]
    return value


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, made JSON-safe: an error echoes its input, which may be 1e400 (inf)
    or hold a lone surrogate."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={
        "detail": _echoable(jsonable_encoder(exc.errors()))})


async def _not_unicode(_request: Request, exc: Exception) -> JSONResponse:
    """Text that is not Unicode: JSON's `"\\ud800"` (a lone surrogate) parses, then
    fails wherever it is encoded (the validator's own messages, the database): 422."""
    return JSONResponse(status_code=422, content={"detail": [{
        "loc": ["body"], "type": "value_error",
        "msg": "the request holds text that is not valid Unicode (a lone surrogate such as "
               "\\ud800); send UTF-8 text"}]})


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app bound to `settings` (default: from the environment) with its own engine."""
    settings = settings or get_settings()
    app = FastAPI(title="QUANTA job service", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None,  # api.docs: offline
                  generate_unique_id_function=openapi.operation_id,
                  separate_input_output_schemas=False)  # one schema per model
    openapi.install(app)  # operation ids, tags and download schemas for client generators
    app.state.settings = settings
    app.state.env_tokens = parse_env_tokens(settings.api_tokens)  # malformed: refuse to start
    app.state.engine = make_engine(settings.database_url)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.celery = make_celery(settings)
    app.state.metrics, latency = make_registry(app.state.sessionmaker, settings.heartbeat_s)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(IllegalTransition, _illegal_transition)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(UnicodeEncodeError, _not_unicode)
    app.add_middleware(BodyLimit, max_bytes=settings.max_json_bytes,
                       upload_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD,
                       identify=identify_with(app.state.sessionmaker, identify))
    app.add_middleware(RejectNul)
    app.add_middleware(HttpLatency, latency=latency)
    # Outermost: a request for another host, or a change sent by another site's page, is
    # refused before anything else reads it.
    app.add_middleware(OriginGuard, allowed_hosts=parse_hosts(settings.allowed_hosts))
    app.include_router(health.router)  # open: probes carry no token
    docs.install(app)  # Swagger UI at /docs, its assets from this process (no CDN)
    dashboard.install(app)  # static page at / (no data: it calls /v1 with the user's token)
    for router in V1_ROUTERS:
        app.include_router(router, dependencies=[Depends(authenticate)],
                           responses=UNAUTHORIZED)
    add_head_routes(app, V1_ROUTERS, [Depends(authenticate)])  # HEAD on downloads: as GET
    app.include_router(metrics.router, responses=UNAUTHORIZED)  # admins' (PrincipalDep)
    return app


#: Every `/v1` router: each of their endpoints needs a token (when tokens are configured).
V1_ROUTERS = (jobs.router, studies.router, uploads.router)
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {STATUS[Unauthorized]: {
    "model": ErrorBody,
    "description": "No token, or an unknown or revoked one (header WWW-Authenticate: Bearer).",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`"}},
}}


def __getattr__(name: str) -> FastAPI:
    """`api.main:app` for uvicorn, built on first use so importing the module is cheap."""
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(name)
