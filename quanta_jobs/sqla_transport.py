"""kombu's SQLAlchemy transport, fixed for the embedded (SQLite) broker.

The stock transport passes every transport option to `create_engine`, so options
it reads itself (`polling_interval`) make it fail; and SQLite gets no WAL and the
default 5 s lock wait, so an API and a worker polling the same file trip over
"database is locked"; and two processes declaring a queue at once (`quanta-serve
--workers 2` starting its workers) both insert its row, and the one that loses the
UNIQUE constraint crashes. `quanta_jobs.queue` installs this class for `sqla+` URLs.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as stock
from sqlalchemy import create_engine, event
from sqlalchemy.exc import IntegrityError

#: Options the transport itself reads; everything else goes to `create_engine`.
_NOT_FOR_ENGINE = (
    "queue_tablename", "message_tablename", "callback", "errback", "max_retries",
    "interval_start", "interval_step", "interval_max", "retry_errors", "polling_interval",
    "visibility_timeout",
)


class Channel(stock.Channel):
    def _engine_from_config(self) -> Any:
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items()
                   if k not in _NOT_FOR_ENGINE}
        url = conninfo.hostname
        if not url.startswith("sqlite"):
            return create_engine(url, pool_pre_ping=True, **options)
        options.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        engine = create_engine(url, **options)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine

    def _get_or_create(self, queue: str) -> Any:
        """The queue's row; another process that inserted it first wins, and its row is
        the one used (the stock transport only guards against its own threads)."""
        try:
            return super()._get_or_create(queue)
        except IntegrityError:
            self.session.rollback()
            found = self.session.query(self.queue_cls).filter(
                self.queue_cls.name == queue).first()
            if found is None:
                raise
            return found


class Transport(stock.Transport):
    Channel = Channel


def install() -> None:
    """Make `sqla+...` and `sqlalchemy+...` broker URLs use this transport (idempotent)."""
    for alias in ("sqla", "sqlalchemy"):
        TRANSPORT_ALIASES[alias] = f"{__name__}:Transport"
