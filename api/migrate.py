"""`python -m api.migrate`, kept for existing scripts: the migrations are `quanta_jobs.migrate`."""

from __future__ import annotations

from quanta_jobs.migrate import alembic_config, main, upgrade

__all__ = ["alembic_config", "main", "upgrade"]

if __name__ == "__main__":
    raise SystemExit(main())
