"""The database and broker servers the tests use (the machine's own; CI's are the same)."""

from __future__ import annotations

import os

from sqlalchemy import text

PG_SERVER = os.environ.get("QUANTA_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_SERVER = os.environ.get("QUANTA_TEST_REDIS", "redis://127.0.0.1:6379/5")


def empty_tables(database_url: str) -> None:
    """Remove the rows earlier tests left in a (session-wide) migrated database."""
    from quanta_jobs.db import make_engine

    engine = make_engine(database_url)
    with engine.begin() as conn:
        for table in ("artifacts", "jobs", "uploads", "upload_holds"):
            conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()
