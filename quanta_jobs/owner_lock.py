"""One owner's limits checked and charged as one step, however many requests race.

A limit read in one statement and charged in another lets concurrent requests all read
the same free room: 30 uploads at once each saw the storage quota's free space, 40
submissions at once each saw room under the queued-jobs cap. `lock_owner` makes the rest
of the transaction exclusive for one owner, so "count, check, insert" is atomic:

- PostgreSQL: a transaction-scoped advisory lock keyed by the owner's name (other owners
  go on in parallel); it is released by the commit or the rollback.
- SQLite: `BEGIN IMMEDIATE`, the database's write lock taken at the start of the
  transaction (SQLite has one writer at a time anyway); a plain deferred transaction
  would read a snapshot first and then fail, not wait, when another writer committed.

Call it before the first statement that reads what the limit counts, with no write yet
in the session's transaction.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

#: The advisory locks' key space (two int4s: this constant and the owner's hash), apart
#: from any other user of advisory locks in the same database.
ADVISORY_CLASS = 0x51A7


def lock_owner(session: Session, owner: str) -> None:
    """Hold `owner`'s lock until this session's transaction ends."""
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:cls, hashtext(:owner))"),
                           {"cls": ADVISORY_CLASS, "owner": owner})
    elif dialect == "sqlite":
        raw = connection.connection.dbapi_connection
        if raw is None:  # pragma: no cover - a live session always has one
            raise RuntimeError("no database connection to lock")
        if raw.in_transaction:
            raise RuntimeError("lock_owner must come before the transaction's first write")
        raw.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for the write lock
    # other databases: no lock (none is supported; the checks still run)
