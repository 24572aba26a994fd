"""Every request body counts against its route's limit while it streams in, and a `/v1`
request that carries a body is authenticated before a byte of it is read.

Without this, a client with no token could make the API hold gigabytes: FastAPI reads
a JSON route's whole body (whatever its Content-Type, multipart included) before the
token dependency runs, and a chunked body has no length to refuse up front. This ASGI
middleware, in front of everything else:

1. answers 401 to a `/v1` request with a body and no valid token, from its headers
   alone (the body is never read; the connection is closed);
2. answers 413 when `Content-Length` is over the route's limit;
3. counts the bytes as they arrive, whatever the framing or Content-Type, and answers
   413 as soon as the count passes the limit. `POST /v1/uploads` streams (its route
   writes the file to disk as it arrives, see `api.multipart`) under
   QUANTA_MAX_UPLOAD_BYTES plus the multipart overhead; every other body is buffered
   under QUANTA_MAX_JSON_BYTES, so at most that much is ever held.

After refusing, it reads and drops what the client still sends for a moment
(`DRAIN_BYTES`, `DRAIN_S`) before the connection closes: closed with unread bytes, the
socket would be reset, and the client would lose the answer it is yet to read.

Having a JSON body at hand, it also refuses one that is not UTF-8 (RFC 8259) with a
422 like any other invalid body, where FastAPI would answer an undocumented 400.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quanta_jobs.errors import ServiceError

log = logging.getLogger(__name__)

#: Methods whose body an endpoint reads.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Requests under this prefix need a token (when the service has tokens).
PROTECTED_PREFIX = "/v1/"
#: What is read and dropped after a refusal, at most, so the client gets to read it.
DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_S = 2.0
#: Who is calling, from the app's state and the Authorization header; raises a
#: `ServiceError` (401) for no valid token. Runs in a thread (it reads the database).
Identify = Callable[[Any, str | None], Any]


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value)
    return b""


async def _refuse(send: Send, status: int, detail: Any,
                  headers: dict[str, str] | None = None, receive: Receive | None = None
                  ) -> None:
    """Answer `status`; with `receive`, drain the request before the response ends (the
    server closes the connection once it has ended, resetting it if bytes are unread)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]})
    await send({"type": "http.response.body", "body": body, "more_body": receive is not None})
    if receive is not None:
        await _drain(receive)
        await send({"type": "http.response.body", "body": b""})


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a refused body, within `DRAIN_BYTES` and `DRAIN_S`."""
    dropped = 0
    with anyio.move_on_after(DRAIN_S):
        while dropped <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            dropped += len(message.get("body", b""))


def _too_large_detail(limit: int, setting: str) -> list[dict[str, Any]]:
    hint = "" if setting == "QUANTA_MAX_UPLOAD_BYTES" else "; files go to POST /v1/uploads"
    return [{"loc": ["body"], "type": "too_large",
             "msg": f"the request body is larger than the limit of {limit} bytes "
                    f"({setting}){hint}"}]


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def _has_body(scope: Scope) -> bool:
    if scope["method"] in BODY_METHODS:
        return True
    declared = _header(scope, b"content-length")
    return bool(_header(scope, b"transfer-encoding")) or (declared not in (b"", b"0"))


class BodyLimit:
    """401 before the body for `/v1` without a token; 413 past the route's limit.

    `upload_bytes` is the limit of `POST /v1/uploads` (streamed), `max_bytes` that of
    every other body (buffered). `identify(app_state, authorization)` is
    `api.auth.identify` bound to a database session.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int | None = None,
                 identify: Identify | None = None, upload_path: str = "/v1/uploads") -> None:
        self.app, self.max_bytes, self.identify = app, max_bytes, identify
        self.upload_bytes = upload_bytes if upload_bytes is not None else max_bytes
        self.upload_path = upload_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if self.identify is not None and path.startswith(PROTECTED_PREFIX):
            try:
                principal = await anyio.to_thread.run_sync(
                    self.identify, scope["app"].state,
                    _header(scope, b"authorization").decode("latin-1") or None)
            except ServiceError as exc:
                from api.errors import http_headers, http_status

                await _refuse(send, http_status(exc), exc.detail(), http_headers(exc),
                              receive)
                return
            scope.setdefault("state", {})["principal"] = principal
        streamed = scope["method"] == "POST" and path.rstrip("/") == self.upload_path
        limit = self.upload_bytes if streamed else self.max_bytes
        setting = "QUANTA_MAX_UPLOAD_BYTES" if streamed else "QUANTA_MAX_JSON_BYTES"
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, _too_large_detail(limit, setting), receive=receive)
            return
        if streamed:
            await self._stream(scope, receive, send, limit, setting)
        else:
            await self._buffer(scope, receive, send, limit, setting)

    async def _buffer(self, scope: Scope, receive: Receive, send: Send, limit: int,
                      setting: str) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await _refuse(send, 413, _too_large_detail(limit, setting), receive=receive)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _is_json(_header(scope, b"content-type")):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                await _refuse(send, 422, [{"loc": ["body"], "type": "json_invalid",
                                           "msg": f"the JSON body is not UTF-8 "
                                                  f"(byte {exc.start})"}])
                return
        await self.app(scope, _replay(body, receive), send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send, limit: int,
                      setting: str) -> None:
        """Hand the body on as it arrives; past `limit`, tell the app the client left (it
        stops and cleans up; whatever it sends is dropped), then answer 413."""
        size = 0
        answered = False
        started = False

        async def counted() -> Message:
            nonlocal size, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:  # the app sees the client leave, cleans up, then we answer
                    answered = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not answered:
                raise
            log.debug("request stopped at the body limit", exc_info=True)
        if answered and not started:
            await _refuse(send, 413, _too_large_detail(limit, setting), receive=receive)


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


def identify_with(sessions: Callable[[], Any],
                  identify: Callable[[Any, Any, str | None], Any]) -> Identify:
    """`identify(state, session, header)` with a short session of its own."""
    def run(state: Any, authorization: str | None) -> Any:
        with sessions() as session:
            return identify(state, session, authorization)

    return run
