"""Liveness and readiness probes for orchestrators (Docker, Kubernetes)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import CeleryDep, SessionDep, SettingsDep
from api.schemas import Health, Readiness
from quanta_jobs.queue import ping_broker
from quanta_jobs.workers import alive

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    """Answers as long as the process serves requests; checks nothing else."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database and the broker are reachable",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable."}},
)
def readyz(session: SessionDep, celery: CeleryDep,
           settings: SettingsDep) -> Readiness | JSONResponse:
    """Ready when the database and the broker answer and at least
    `QUANTA_READY_MIN_WORKERS` workers are alive (quanta-serve asks for one when it starts
    its own); 503 names what is missing. `workers` counts the workers alive."""
    checks: dict[str, str] = {}
    workers = None
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
        workers = alive(session, settings.heartbeat_s)
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}: {exc}"[:500]
    try:
        ping_broker(celery)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}: {exc}"[:500]
    if workers is not None and settings.ready_min_workers:
        checks["workers"] = ("ok" if workers >= settings.ready_min_workers else
                             f"{workers} alive, {settings.ready_min_workers} required "
                             "(QUANTA_READY_MIN_WORKERS)")
    if all(value == "ok" for value in checks.values()):
        return Readiness(status="ready", checks=checks, workers=workers)
    body = Readiness(status="unavailable", checks=checks, workers=workers)
    return JSONResponse(status_code=503, content=body.model_dump())
