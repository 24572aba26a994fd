"""The web dashboard: static files only, served at `/` (the page) and `/ui/` (its assets).

The page holds no data of its own and calls only the public `/v1` API from the browser,
with the user's token, so it can never do what the API refuses; that is why it needs no
token itself. Its Content-Security-Policy allows scripts, styles, images and requests
from this origin only, so an injected string can never run as code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent.parent / "static" / "dashboard"
ASSETS_PREFIX = "/ui"
#: Everything from this origin only; no inline script, no framing by other sites.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidated on every load (ETag), so an upgraded service never serves stale scripts.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


class DashboardFiles(StaticFiles):
    """The page's assets, with the page's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


@router.get("/", response_class=FileResponse)
def dashboard() -> FileResponse:
    """The single page; its views live in the URL's fragment (`/#/jobs`, `/#/study/ID`)."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


def install(app: FastAPI) -> None:
    """Serve the dashboard on `app`: the page at `/`, its assets under `/ui/`."""
    app.include_router(router)
    app.mount(ASSETS_PREFIX, DashboardFiles(directory=STATIC), name="dashboard")
