"""Apply the database migrations: `quanta-serve migrate` or `python -m quanta_jobs.migrate`.

The Alembic scripts ship inside the package (`quanta_jobs/migrations`), so this works
from an installed copy as well as from a checkout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from quanta_jobs.settings import get_settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for `url`, passed as an attribute so `%` in it needs no escaping."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


class UnsupportedDatabase(RuntimeError):
    """A database the service cannot use; its message is the one line to show."""


def check_encoding(url: str) -> None:
    """Refuse a PostgreSQL database not encoded in UTF8 (one created with SQL_ASCII, say):
    psycopg then hands back text columns as bytes, and the service failed far from the
    cause (a `TypeError` at every start). SQLite is always UTF-8."""
    if not url.startswith("postgresql"):
        return
    import psycopg  # here, not through SQLAlchemy: its first connect fails on such a database

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, connect_timeout=30) as connection:
        row = connection.execute(
            "SELECT current_database(), pg_encoding_to_char(encoding) FROM pg_database "
            "WHERE datname = current_database()").fetchone()
    assert row is not None
    name, encoding = (v.decode() if isinstance(v, bytes) else str(v) for v in row)
    if encoding != "UTF8":
        raise UnsupportedDatabase(
            f"the PostgreSQL database {name!r} is encoded {encoding}, and QUANTA needs UTF8: "
            f"create it again with CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0 "
            f"(the postgres image: POSTGRES_INITDB_ARGS=--encoding=UTF8 on a new volume)")


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at `url` (default: QUANTA_DATABASE_URL) to `revision`; raises
    `UnsupportedDatabase` for a database the service cannot use."""
    settings = get_settings()
    if url is None:
        settings.ensure_dirs()
    check_encoding(url or settings.database_url)
    command.upgrade(alembic_config(url or settings.database_url), revision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quanta_jobs.migrate", description=__doc__)
    parser.add_argument("--url", help="database URL (default: QUANTA_DATABASE_URL)")
    parser.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        upgrade(args.url, args.revision)
    except UnsupportedDatabase as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
