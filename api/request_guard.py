"""Refuse URLs that hold a NUL character before any route sees them.

No id, path or filter of the API contains one, and PostgreSQL cannot even compare a
text value holding NUL (the driver raises, which would be a 500): a NUL in the path
is an unknown resource (404), in the query string an invalid parameter (422).
"""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send


async def _refuse(send: Send, status: int, detail: object) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RejectNul:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if "\x00" in scope.get("path", ""):
                await _refuse(send, 404, "not found")
                return
            if b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
                await _refuse(send, 422, [{"loc": ["query"], "msg": "NUL characters are not "
                                           "allowed in a query", "type": "value_error"}])
                return
        await self.app(scope, receive, send)
