"""`HEAD` on the download routes, answered as `GET` without the body.

Starlette's `FileResponse` sends only the headers to a HEAD request, so a download route
serves both methods as it is; the archive builds no zip for it. The HEAD routes stay out
of the OpenAPI schema, which would otherwise list each download twice under one
operation id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

#: The endpoints (by function name) that send a file.
DOWNLOADS = frozenset({"download_artifact", "download_archive", "get_plot"})


def add_head_routes(app: FastAPI, routers: Iterable[APIRouter], dependencies: Sequence[Any],
                    names: frozenset[str] = DOWNLOADS) -> None:
    """A HEAD route on `app` beside each GET route of `routers` named in `names`, with
    `dependencies` (those the routers are included with: the token check)."""
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and route.name in names and "GET" in route.methods:
                app.add_api_route(route.path, route.endpoint, methods=["HEAD"],
                                  dependencies=[*route.dependencies, *dependencies],
                                  include_in_schema=False, name=f"{route.name}_head")
