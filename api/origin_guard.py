"""Which hosts and which web pages may talk to the service, and the headers every answer
carries.

- **Host.** A web page the user visits can make its own name resolve to 127.0.0.1 (DNS
  rebinding) and then read and drive a service that listens there as if it were its own
  origin. Only requests naming one of the service's own hosts (`QUANTA_ALLOWED_HOSTS`:
  loopback names by default, plus the address `quanta-serve --host` listens on) are
  served; any other `Host` gets 421 before a route runs.
- **Origin.** A page of another site can still send a form, or a `no-cors` request, to
  127.0.0.1 (the browser sends it; only the answer is hidden from the page). Requests
  that change something (POST, PUT, PATCH, DELETE) whose `Origin` is another origin, or
  that the browser says come from another site (`Sec-Fetch-Site`), get 403. Clients that
  are not browsers send neither header and are not affected.
- **Headers.** Every answer says not to sniff its type, not to be framed, and to send no
  referrer, as the dashboard's pages already did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Names that always mean this machine.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Bind addresses that mean "every interface": the hosts cannot be listed from them.
WILDCARD_BINDS = ("0.0.0.0", "::", "[::]")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: `Sec-Fetch-Site` values of a request the user made on this service's own pages (or typed).
OWN_SITE = frozenset({"same-origin", "none"})
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def parse_hosts(text: str) -> frozenset[str] | None:
    """`QUANTA_ALLOWED_HOSTS` as names; None for `*` (any host)."""
    names = {part.strip().lower().strip("[]") for part in text.split(",") if part.strip()}
    return None if "*" in names else frozenset(names)


def host_name(value: str) -> str | None:
    """The name in a `Host` header or an origin (`[::1]:8000` → `::1`), lower case."""
    try:
        return urlsplit(f"//{value}" if "//" not in value else value).hostname
    except ValueError:
        return None


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


class OriginGuard:
    """ASGI middleware: the host and origin checks above, and the security headers."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else frozenset(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        name = host_name(host)
        if self.allowed is not None and name not in self.allowed:
            await _refuse(send, 421, f"this service does not answer to the host "
                          f"'{host[:100]}'; it answers to {', '.join(sorted(self.allowed))} "
                          "(QUANTA_ALLOWED_HOSTS)")
            return
        if scope.get("method", "GET").upper() in STATE_CHANGING:
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site")
            other = (origin is not None and origin != "null"
                     and (host_name(origin), _port(origin, scope)) != (name, _port(host, scope)))
            if other or origin == "null" or (site is not None and site not in OWN_SITE):
                await _refuse(send, 403, "a request from another site's page cannot change "
                              "anything here (Origin or Sec-Fetch-Site says it is one)")
                return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *(
                    (k, v) for k, v in SECURITY_HEADERS if k not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)


def _port(value: str, scope: Scope) -> int | None:
    """The port an origin or a Host header names, or the scheme's default."""
    parts = urlsplit(f"//{value}" if "//" not in value else value)
    try:
        if parts.port is not None:
            return parts.port
    except ValueError:
        return None
    scheme = parts.scheme or scope.get("scheme", "http")
    return 443 if scheme == "https" else 80
