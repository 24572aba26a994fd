"""Alembic environment: the URL comes from the caller (quanta_jobs.migrate) or the settings."""

from __future__ import annotations

import logging

from alembic import context

from quanta_jobs.db import make_engine
from quanta_jobs.models import Base
from quanta_jobs.settings import get_settings

config = context.config
if config.config_file_name is not None and not logging.getLogger().handlers:
    from logging.config import fileConfig

    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=connection.dialect.name == "sqlite")
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
