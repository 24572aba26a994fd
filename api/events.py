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
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from quanta_jobs import job_events
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


def _poll(sessions: sessionmaker[Session], job_id: str, after: int) -> _Poll | None:
    """The job's status, then the events after `after` (in that order: an event that
    committed before the status we read is among the events we read)."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        status = job.status
        events = job_events.fetch(session, job, after, limit=BATCH)
        recorded = None
        if status in TERMINAL:
            recorded = session.scalar(
                select(JobEvent.data["status"].as_string())
                .where(JobEvent.job_id == job_id, JobEvent.kind == job_events.STATUS)
                .order_by(JobEvent.seq.desc()).limit(1))
        return _Poll(status, job.kind, job.error, events, recorded)


async def stream(
    sessions: sessionmaker[Session],
    job_id: str,
    after: int = 0,
    disconnected: Callable[[], Any] | None = None,
    poll_s: float = POLL_S,
) -> AsyncIterator[str]:
    """The job's events after `after`, then `end` once it has ended; the first event
    carries `retry:`."""
    retry: list[int | None] = [RETRY_MS]

    def event(kind: str, data: dict[str, Any], seq: int | None = None) -> str:
        text = format_event(kind, data, seq, retry_ms=retry[0])
        retry[0] = None
        return text

    cursor = after
    last_sent = time.monotonic()
    ended_since: float | None = None
    while True:
        poll = await run_in_threadpool(_poll, sessions, job_id, cursor)
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
            if poll.recorded_status == poll.status or now - ended_since >= END_GRACE_S:
                final = {"job": job_id, "kind": poll.kind, "status": poll.status}
                if poll.error:
                    final["error"] = poll.error
                if poll.recorded_status != poll.status:  # its event never came: say it
                    yield event(job_events.STATUS, final)
                yield event("end", final)
                return
        if disconnected is not None and await disconnected():
            return
        if time.monotonic() - last_sent >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_s)


def last_event_id(header: str | None, query: int | None) -> int:
    """Where a stream resumes: the `Last-Event-ID` header (or `last_event_id` query), else 0."""
    for value in (header, query):
        if value is None:
            continue
        try:
            return max(0, int(str(value).strip()))
        except ValueError:
            continue
    return 0
