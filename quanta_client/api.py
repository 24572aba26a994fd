"""A small HTTP client of the QUANTA job service (httpx), free of TensorFlow.

Every failure is one of two exceptions whose message fits on one line: `ApiError`
(the service answered 4xx or 5xx: which field, and why) and `Unreachable` (no answer).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from quanta_spec.files import replacing

DEFAULT_SERVER = "http://127.0.0.1:8000"
#: The service sends a comment at least this often on an idle event stream.
EVENTS_READ_TIMEOUT_S = 60.0


class ClientError(Exception):
    """A failure the user can act on; `str()` is one line."""


class Unreachable(ClientError):
    """The service did not answer (refused, timed out, name unknown)."""


class ApiError(ClientError):
    """The service answered with an error status."""

    def __init__(self, status_code: int, detail: Any, method: str, path: str) -> None:
        self.status_code, self.detail = status_code, detail
        super().__init__(f"{status_code} {describe(detail)} ({method} {path})")


def describe(detail: Any) -> str:
    """A service error body as one line: `field: reason` for field errors."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        parts = []
        for item in detail[:3]:
            loc = [str(p) for p in item.get("loc", [])]
            # ["body", "transfer", "spec", "seed"] -> "seed"; ["query", "limit"] -> "limit"
            if "spec" in loc:
                loc = loc[loc.index("spec") + 1:]
            elif loc and loc[0] in ("body", "query", "path", "header"):
                loc = loc[1:]
            field = ".".join(loc) or "request"
            message = str(item.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{field}: {message}")
        more = f" (and {len(detail) - 3} more)" if len(detail) > 3 else ""
        return "; ".join(parts) + more
    return " ".join(str(detail).split())


class Client:
    """The service at `server`; with `token`, every request carries `Authorization: Bearer`."""

    def __init__(self, server: str | None = None, token: str | None = None,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.server = (server or os.environ.get("QUANTA_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = token if token is not None else os.environ.get("QUANTA_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout,
                                 transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the QUANTA service at {self.server} "
                              f"({type(exc).__name__}: {exc or 'no answer'})") from None
        check(response, method, path)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # -- endpoints ----------------------------------------------------------------------
    def upload(self, path: str | Path, kind: str) -> dict[str, Any]:
        """POST a local file to /v1/uploads as `kind` (weights, model, dataset, images)."""
        path = Path(path)
        with open(path, "rb") as handle:
            return dict(self.json("POST", "/v1/uploads", data={"kind": kind},
                                  files={"file": (path.name, handle)}))

    def submit(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self.json("POST", "/v1/jobs", json={"kind": kind, "spec": spec}))

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.json("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self.json("POST", f"/v1/jobs/{job_id}/cancel"))

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.json("GET", f"/v1/jobs/{job_id}/artifacts")["items"])

    def text(self, job_id: str, path: str) -> str:
        """One of the job's files (a model summary, a JSONL file) as text."""
        return self.request("GET", f"/v1/jobs/{job_id}/artifacts/{path}").text

    def summary(self, job_id: str) -> dict[str, Any]:
        return dict(self.json("GET", f"/v1/jobs/{job_id}/summary"))

    def children(self, study_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        path: str | None = f"/v1/jobs/{study_id}/children?limit=500"
        while path:
            page = self.json("GET", path)
            items += page["items"]
            path = page.get("next")
        return items

    def download(self, job_id: str, artifact: dict[str, Any], dest: Path) -> Path:
        """One artifact to `dest`, checked against its SHA-256, replaced atomically."""
        digest = hashlib.sha256()
        with replacing(dest) as tmp:
            with open(tmp, "wb") as out:
                url = f"/v1/jobs/{job_id}/artifacts/{artifact['path']}"
                try:
                    with self.http.stream("GET", url) as response:
                        if response.status_code >= 400:
                            response.read()
                        check(response, "GET", url)
                        for chunk in response.iter_bytes():
                            digest.update(chunk)
                            out.write(chunk)
                except httpx.TransportError as exc:
                    raise Unreachable(f"download of {artifact['path']} broke off: {exc}") from None
            if digest.hexdigest() != artifact["sha256"]:
                raise ClientError(f"{artifact['path']}: the download does not match its "
                                  "SHA-256; try again")
        return dest

    def events(self, job_id: str, after: int = 0) -> Iterator[tuple[int | None, str, dict]]:
        """The job's Server-Sent Events as (id, event, data) until `end` or the stream
        closes; the caller reconnects with the last id."""
        headers = {"Accept": "text/event-stream"}
        if after:
            headers["Last-Event-ID"] = str(after)
        timeout = httpx.Timeout(10.0, read=EVENTS_READ_TIMEOUT_S)
        path = f"/v1/jobs/{job_id}/events"
        try:
            with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                check(response, "GET", path)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise Unreachable(f"the event stream of job {job_id} broke off: {exc}") from None


def check(response: httpx.Response, method: str, path: str) -> None:
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text or response.reason_phrase
    raise ApiError(response.status_code, detail, method, path)


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
    """Events of a text/event-stream: (id or None, event name, data parsed as JSON)."""
    seq: int | None = None
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield seq, name, json.loads("\n".join(data))
            seq, name, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            seq = int(value) if value.isdigit() else None
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if data:
        yield seq, name, json.loads("\n".join(data))
