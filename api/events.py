"""Server-Sent Events of a job (or a whole study) until it ends.

The stream polls the database (`quanta_jobs.job_events`) every `POLL_S` seconds, each query in
the thread pool so the event loop never waits on the database, and sends what was
recorded since the last poll, in `seq` order:

    id: 12
    event: epoch
    data: {"job": "...", "layer": "0", "run": 1, "epoch": 2, "nb_of_epochs": 2, ...}

`event: status` reports a status change of the job (for a study: of the study or of
any child, each naming its `job`, `layer` and `run`), `event: epoch` a finished
epoch, and a final `event: end` (no id) says the job ended and the stream closes.
Since every event is stored, a stream replays a job's history from its start, and a
client that reconnects with `Last-Event-ID: N` gets only what came after event N.

Streams are bounded: each token may hold `QUANTA_MAX_STREAMS_PER_TOKEN` open, the API
`QUANTA_MAX_STREAMS` in all (429 beyond, `StreamSlots`); every
`QUANTA_STREAM_AUTH_RECHECK_S` a stream checks its token again and ends (`event: end`,
"token revoked") once it is revoked. A waiting stream holds no thread: it sleeps on the
event loop, and its short database polls run on a small thread limiter of their own
(`POLL_THREADS`), so any number of streams never takes the thread pool the other
routes run on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from quanta_jobs import job_events
from quanta_jobs.errors import Invalid, TooManyRequests
from quanta_jobs.job_state import TERMINAL
from quanta_jobs.models import Job, JobEvent

#: Seconds between two polls of the database.
POLL_S = 0.25
#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0
#: How long to wait for the worker's own record of a job's final status (it commits the
#: status, then records the event) before reporting the status from the job's row.
END_GRACE_S = 2.0
#: Events sent per poll at most (the rest follow at once).
BATCH = 500
#: Threads the polls of all streams share (they never use the routes' thread pool).
POLL_THREADS = 4
#: Clients should wait this long before reconnecting (milliseconds).
RETRY_MS = 2000


def format_event(kind: str, data: dict[str, Any], seq: int | None = None,
                 retry_ms: int | None = None) -> str:
    """One event in the text/event-stream format (data is one line of JSON). The
    reconnection delay rides on an event with data, never alone: SSE clients that parse
    every block as an event (httpx-sse's `.json()`) fail on a block without data."""
    head = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    head += f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass
class _Poll:
    status: str
    kind: str
    error: str | None
    events: list[job_events.Event]
    recorded_status: str | None  # the last status event recorded for the job itself
    recorded_seq: int | None = None  # and its place in the stream


def _poll(sessions: sessionmaker[Session], job_id: str, after: int) -> _Poll | None:
    """The job's status, then the events after `after` (in that order: an event that
    committed before the status we read is among the events we read)."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        status = job.status
        events = job_events.fetch(session, job, after, limit=BATCH)
        recorded = recorded_seq = None
        if status in TERMINAL:
            row = session.execute(
                select(JobEvent.data["status"].as_string(), JobEvent.seq)
                .where(JobEvent.job_id == job_id, JobEvent.kind == job_events.STATUS)
                .order_by(JobEvent.seq.desc()).limit(1)).first()
            if row is not None:
                recorded, recorded_seq = row
        return _Poll(status, job.kind, job.error, events, recorded, recorded_seq)


_limiter: anyio.CapacityLimiter | None = None


def poll_limiter() -> anyio.CapacityLimiter:
    """The threads the streams' polls run on (created in the event loop, on first use)."""
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(POLL_THREADS)
    return _limiter


class StreamSlots:
    """How many streams are open, per token name and in all, against their caps."""

    def __init__(self, per_token: int, total: int) -> None:
        self.per_token, self.total = per_token, total
        self.open: dict[str, int] = {}

    def take(self, token: str) -> None:
        """Count a new stream of `token`, or raise 429 (`TooManyRequests`)."""
        if self.total and sum(self.open.values()) >= self.total:
            raise TooManyRequests(f"the service has {self.total} event streams open, the most "
                                  "it allows (QUANTA_MAX_STREAMS); retry later")
        if self.per_token and self.open.get(token, 0) >= self.per_token:
            raise TooManyRequests(f"this token has {self.per_token} event streams open, the "
                                  "most allowed (QUANTA_MAX_STREAMS_PER_TOKEN); close one")
        self.open[token] = self.open.get(token, 0) + 1

    def give_back(self, token: str) -> None:
        left = self.open.get(token, 0) - 1
        if left > 0:
            self.open[token] = left
        else:
            self.open.pop(token, None)


async def guarded(slots: StreamSlots, token: str, events: AsyncIterator[str]
                  ) -> AsyncIterator[str]:
    """`events`, holding one of `token`'s slots until the stream ends or the client leaves
    (the caller took it)."""
    try:
        async for text in events:
            yield text
    finally:
        slots.give_back(token)


async def stream(
    sessions: sessionmaker[Session],
    job_id: str,
    after: int = 0,
    disconnected: Callable[[], Any] | None = None,
    poll_s: float = POLL_S,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
    recheck_s: float = 5.0,
) -> AsyncIterator[str]:
    """The job's events after `after`, then `end` once it has ended; the first event
    carries `retry:`. With `still_allowed`, asked every `recheck_s`, the stream ends
    (`end` with "token revoked") once it answers False."""
    retry: list[int | None] = [RETRY_MS]

    def event(kind: str, data: dict[str, Any], seq: int | None = None) -> str:
        text = format_event(kind, data, seq, retry_ms=retry[0])
        retry[0] = None
        return text

    cursor = after
    last_sent = last_check = time.monotonic()
    ended_since: float | None = None
    while True:
        if still_allowed is not None and time.monotonic() - last_check >= recheck_s:
            last_check = time.monotonic()
            if not await still_allowed():
                yield event("end", {"job": job_id, "status": None, "error": "token revoked"})
                return
        poll = await anyio.to_thread.run_sync(_poll, sessions, job_id, cursor,
                                              limiter=poll_limiter())
        if poll is None:  # deleted meanwhile
            yield event("end", {"job": job_id, "status": None, "error": "job deleted"})
            return
        for item in poll.events:
            yield event(item.kind, item.data, item.seq)
            cursor = item.seq
            last_sent = time.monotonic()
        if len(poll.events) == BATCH:
            continue  # more waiting: send them before anything else
        if poll.status in TERMINAL:
            now = time.monotonic()
            ended_since = ended_since or now
            # Its final status event, if recorded, is sent before `end`: one committed
            # after this poll's events were read comes with the next poll.
            sent = poll.recorded_seq is not None and poll.recorded_seq <= cursor
            if (poll.recorded_status == poll.status and sent) \
                    or now - ended_since >= END_GRACE_S:
                final = {"job": job_id, "kind": poll.kind, "status": poll.status}
                if poll.error:
                    final["error"] = poll.error
                if poll.recorded_status != poll.status or not sent:  # never came: say it
                    yield event(job_events.STATUS, final)
                yield event("end", final)
                return
        if disconnected is not None and await disconnected():
            return
        if time.monotonic() - last_sent >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_s)


#: The largest event id there can be (the database's 64-bit integers); a client that asks
#: to resume past it gets 422, not a stream cut by an overflow.
MAX_EVENT_ID = 2**63 - 1


def last_event_id(header: str | None, query: int | None) -> int:
    """Where a stream resumes: the `Last-Event-ID` header (or `last_event_id` query), else 0;
    `Invalid` (422) past MAX_EVENT_ID."""
    for value in (header, query):
        if value is None:
            continue
        text = str(value).strip()
        if not text.lstrip("-").isdigit():
            continue  # not an id: the stream starts from the beginning
        if len(text) > len(str(MAX_EVENT_ID)) or int(text) > MAX_EVENT_ID:
            raise Invalid(f"Last-Event-ID must be at most {MAX_EVENT_ID} (got {text[:40]}...)"
                          if len(text) > 40 else
                          f"Last-Event-ID must be at most {MAX_EVENT_ID} (got {text})",
                          loc=("header", "last-event-id"))
        return max(0, int(text))
    return 0


def open_stream(request: Any, principal_name: str, job_id: str, after: int) -> AsyncIterator[str]:
    """The events of `job_id` for this request: a slot of its token taken (429 when none
    is left), its token checked again every QUANTA_STREAM_AUTH_RECHECK_S."""
    from api.auth import identify
    from quanta_jobs.errors import ServiceError

    app = request.app
    settings = app.state.settings
    slots = getattr(app.state, "stream_slots", None)
    if slots is None:
        slots = app.state.stream_slots = StreamSlots(settings.max_streams_per_token,
                                                     settings.max_streams)
    slots.take(principal_name)
    header = request.headers.get("authorization")

    def check() -> bool:
        with app.state.sessionmaker() as session:
            try:
                identify(app.state, session, header)
            except ServiceError:
                return False
        return True

    async def still_allowed() -> bool:
        return await anyio.to_thread.run_sync(check, limiter=poll_limiter())

    events = stream(app.state.sessionmaker, job_id, after, request.is_disconnected,
                    still_allowed=still_allowed, recheck_s=settings.stream_auth_recheck_s)
    return guarded(slots, principal_name, events)
