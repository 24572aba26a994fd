"""`GET /metrics` for Prometheus (`api.metrics`): an admin's, when tokens are set."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import PrincipalDep
from api.errors import Forbidden

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Metrics for Prometheus", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                             "description": "The Prometheus text format."}})
def metrics(request: Request, principal: PrincipalDep) -> Response:
    """Jobs by kind and status, queued jobs, live workers, uploads and stored bytes, job
    durations and attempts (histograms by kind), and this API's latency by route. With
    tokens configured, an admin token's only (they show every owner's totals)."""
    if not principal.admin:
        raise Forbidden("the metrics need an admin token (name:token:admin in "
                        "QUANTA_API_TOKENS, or `quanta-serve token create NAME --admin`)")
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
