"""Which workers are alive: each worker process stamps its row every heartbeat.

A worker on any host writes to the shared database, so the API (`/readyz`) counts the
workers alive everywhere, not only those `quanta-serve` started: a row seen within
`ALIVE_BEATS` heartbeats is a live worker. Rows are stamped and judged by the
database's clock (`db_now`), so a worker host whose clock is off is still counted right.
A worker that stops cleanly deletes its row; one killed by the kernel simply stops
beating.
"""

from __future__ import annotations

import logging
import os
import threading

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from quanta_jobs.models import WorkerBeat, db_now

log = logging.getLogger(__name__)

#: Heartbeats a worker may miss before it counts as gone.
ALIVE_BEATS = 3


def beat(session: Session, name: str) -> None:
    """Stamp `name`'s row (created on its first beat), committed."""
    changed = session.execute(
        update(WorkerBeat).where(WorkerBeat.name == name)
        .values(seen_at=db_now(), pid=os.getpid())
        .execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]
    if not changed:
        session.add(WorkerBeat(name=name, pid=os.getpid(), started_at=db_now(),
                               seen_at=db_now()))
    session.commit()


def forget(session: Session, name: str) -> None:
    session.execute(delete(WorkerBeat).where(WorkerBeat.name == name))
    session.commit()


def alive(session: Session, heartbeat_s: float) -> int:
    """Workers seen within `ALIVE_BEATS` heartbeats, by the database's clock."""
    since = db_now(ALIVE_BEATS * heartbeat_s)
    return int(session.scalar(select(func.count()).select_from(WorkerBeat)
                              .where(WorkerBeat.seen_at >= since)) or 0)


def last_seen(session: Session, name: str) -> float | None:
    """Seconds since `name`'s row was last stamped, by the database's clock (None: no
    row, the worker never started or stopped cleanly); `quanta-worker --check` reads it."""
    row = session.execute(select(WorkerBeat.seen_at, db_now())
                          .where(WorkerBeat.name == name)).one_or_none()
    if row is None:
        return None
    return max(0.0, (row[1] - row[0]).total_seconds())


class WorkerHeartbeat:
    """A daemon thread that beats for worker `name` every `period` seconds."""

    def __init__(self, sessions: sessionmaker[Session], name: str, period: float) -> None:
        self._sessions, self.name, self._period = sessions, name, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-heartbeat",
                                        daemon=True)

    def start(self) -> WorkerHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with self._sessions() as session:
                forget(session, self.name)
        except Exception:
            log.warning("worker %s: its heartbeat row was not removed", self.name)

    def _loop(self) -> None:
        while True:
            try:
                with self._sessions() as session:
                    beat(session, self.name)
            except Exception as exc:  # the database is down: the next beat tries again
                log.warning("worker %s: heartbeat not written (%s)", self.name,
                            type(exc).__name__)
            if self._stop.wait(self._period):
                return
