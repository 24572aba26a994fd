"""Slow clients cannot hold the server: a deadline for each request's head, and a ceiling
on open connections.

uvicorn waits for a request's line and headers as long as bytes keep coming (its
keep-alive timeout restarts on every byte, and the first request has none): 200
connections sending a header a byte at a time were all still held after 30 s. The
protocol `guarded` returns closes a connection that has not delivered a complete request
head within `head_timeout_s` of opening, or of its previous response, and refuses (503,
closed) a connection past `max_connections` open at once. Bodies are not affected: an
upload may take as long as its bytes take to arrive.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

_REFUSAL = b"too many open connections (QUANTA_MAX_CONNECTIONS); try again shortly\n"
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
           b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n"
           % len(_REFUSAL)) + _REFUSAL


def guarded(head_timeout_s: float, max_connections: int,
            base: type[asyncio.Protocol] = AutoHTTPProtocol) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (`base`) with the head deadline and the connection ceiling
    (0: none); pass it as `uvicorn.Config(http=...)`."""

    class Guarded(base):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _cycle_when_armed: Any = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            open_now = len(self.connections)  # type: ignore[attr-defined]
            super().connection_made(transport)
            if max_connections and open_now >= max_connections:
                transport.write(REFUSED)  # type: ignore[attr-defined]
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._cycle_when_armed = self.cycle  # type: ignore[attr-defined]
            self._head_timer = self.loop.call_later(  # type: ignore[attr-defined]
                head_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            """No new request head since the timer was armed, and none being answered:
            close the connection."""
            self._head_timer = None
            cycle = self.cycle  # type: ignore[attr-defined]
            idle = cycle is None or cycle.response_complete
            if cycle is self._cycle_when_armed and idle and not self.transport.is_closing():  # type: ignore[attr-defined]
                self.transport.close()  # type: ignore[attr-defined]

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # type: ignore[attr-defined]
                self._arm()  # the next request's head has the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded
