"""A size limit on request bodies other than uploads, enforced before the app reads them.

A JSON body is parsed whole in memory, so without a limit one request could take the
API's memory. This ASGI middleware answers 413 when `Content-Length` says the body is
too large, and otherwise counts the bytes as they arrive and stops at the limit
(a chunked body has no length to trust): at most `max_bytes` are ever held. Multipart
uploads pass through; `api.multipart` streams them to disk under their own limit.

Having the body at hand, it also refuses a JSON body that is not UTF-8 (RFC 8259) with
a 422 like any other invalid body, where FastAPI would answer an undocumented 400.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Methods whose body an endpoint reads.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value)
    return b""


async def _refuse(send: Send, status: int, kind: str, message: str) -> None:
    body = json.dumps({"detail": [{"loc": ["body"], "type": kind, "msg": message}]}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _too_large(send: Send, max_bytes: int) -> None:
    await _refuse(send, 413, "too_large", f"the request body is larger than the limit of "
                  f"{max_bytes} bytes (QUANTA_MAX_JSON_BYTES); files go to POST /v1/uploads")


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class BodyLimit:
    """413 for a non-multipart request body over `max_bytes` (declared or counted)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in BODY_METHODS
                or _header(scope, b"content-type").lower().startswith(b"multipart/form-data")):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _too_large(send, self.max_bytes)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _is_json(_header(scope, b"content-type")):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                await _refuse(send, 422, "json_invalid", f"the JSON body is not UTF-8 "
                              f"(byte {exc.start})")
                return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the buffered body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            message: dict[str, Any] = {"type": "http.request", "body": body, "more_body": False}
            return message
        return await receive()

    return replay
