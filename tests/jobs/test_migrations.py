"""Database migrations: one head, and the data migrations do what they say on real
SQLite and PostgreSQL databases migrated to the revision before, with rows written there."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from quanta_jobs.migrate import alembic_config, upgrade
from quanta_spec import RemoteSourceSpec, RemoteStudySpec, RemoteTransferSpec
from tests.support.databases import PG_SERVER
from tests.support.net import port_open

NETWORK_REVISION = "0004_specs_name_their_network"


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def test_one_head() -> None:
    """Two helpers adding a revision on the same parent leave two heads and `upgrade head`
    refuses to run: every revision must extend the one before."""
    assert len(_scripts().get_heads()) == 1


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no table yet (a private PostgreSQL schema, dropped afterwards)."""
    from quanta_jobs.db import make_engine

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    schema = f"quanta_migration_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_SERVER)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_SERVER}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _insert(engine: sa.Engine, job_id: str, kind: str, spec: dict[str, Any],
            parent: str | None = None) -> None:
    now = datetime.now(UTC)
    jobs = sa.Table("jobs", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(jobs.insert().values(
            id=job_id, kind=kind, status="succeeded", spec=spec, created_at=now,
            updated_at=now, attempts=1, cancel_requested=False, owner="", parent_id=parent,
            study_run=0 if parent else None))


def _specs(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    jobs = sa.Table("jobs", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return {row.id: row.spec for row in conn.execute(sa.select(jobs.c.id, jobs.c.spec))}


def test_old_specs_keep_the_network_they_ran_with(empty_url: str) -> None:
    """Every job before the `architecture` option ran on the 2025 network; after the
    migration its spec says so, so a resume or a new child of an old study never switches
    to the new default. Specs that already name a network are left alone."""
    from quanta_jobs.db import make_engine

    previous = _scripts().get_revision(NETWORK_REVISION).down_revision
    assert isinstance(previous, str)
    upgrade(empty_url, previous)
    engine = make_engine(empty_url)
    weights = {"source_weights": {"job": "s" * 32}}
    transfer = {"source_task": "digits", "target_task": "digits", "layer_to_transfer": 3,
                "nb_of_runs": 1, "quanta_gradient_multiplier": 2.0, "seed": 1, **weights}
    study = {k: v for k, v in transfer.items() if k != "layer_to_transfer"}
    study.update(layers=[0, 3], include_all_at_once=False)
    try:
        _insert(engine, "s" * 32, "source", {"source_task": "digits", "nb_of_epochs": 2})
        _insert(engine, "t" * 32, "transfer", transfer)
        _insert(engine, "p" * 32, "study", study)
        _insert(engine, "c" * 32, "transfer", {**transfer, "layer_to_transfer": 0},
                parent="p" * 32)
        _insert(engine, "n" * 32, "transfer", {**transfer, "architecture": "kes2021"})
        _insert(engine, "o" * 32, "other", {"x": 1})
        upgrade(empty_url)
        specs = _specs(engine)
    finally:
        engine.dispose()
    for job_id in ("s", "t", "p", "c"):
        assert specs[job_id * 32]["architecture"] == "compact2025"
    assert specs["n" * 32]["architecture"] == "kes2021"
    assert specs["o" * 32] == {"x": 1}
    assert specs["t" * 32]["quanta_gradient_multiplier"] == 2.0  # nothing else rewritten
    # The migrated specs read back as the network they ran with.
    assert RemoteSourceSpec.model_validate(specs["s" * 32]).architecture == "compact2025"
    assert RemoteTransferSpec.model_validate(specs["c" * 32]).architecture == "compact2025"
    assert RemoteStudySpec.model_validate(specs["p" * 32]).architecture == "compact2025"


def test_downgrade_gives_the_old_specs_back(tmp_path: Path) -> None:
    from alembic import command

    from quanta_jobs.db import make_engine

    url = f"sqlite:///{tmp_path / 'd.db'}"
    previous = _scripts().get_revision(NETWORK_REVISION).down_revision
    upgrade(url, previous)
    engine = make_engine(url)
    try:
        _insert(engine, "s" * 32, "source", {"source_task": "digits"})
        upgrade(url)
        command.downgrade(alembic_config(url), previous)
        assert _specs(engine) == {"s" * 32: {"source_task": "digits"}}
    finally:
        engine.dispose()
