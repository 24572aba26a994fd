"""Apply the database migrations: `quanta-serve migrate` or `python -m quanta_jobs.migrate`.

The Alembic scripts ship inside the package (`quanta_jobs/migrations`), so this works
from an installed copy as well as from a checkout.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from quanta_jobs.settings import get_settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for `url`, passed as an attribute so `%` in it needs no escaping."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at `url` (default: QUANTA_DATABASE_URL) to `revision`."""
    settings = get_settings()
    if url is None:
        settings.ensure_dirs()
    command.upgrade(alembic_config(url or settings.database_url), revision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quanta_jobs.migrate", description=__doc__)
    parser.add_argument("--url", help="database URL (default: QUANTA_DATABASE_URL)")
    parser.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    upgrade(args.url, args.revision)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
