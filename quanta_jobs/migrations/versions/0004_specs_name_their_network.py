"""Stored specs name the network they ran with: `architecture: compact2025`.

Before the `architecture` option every job ran on the reference's 2025 network
(64-128-256 + Dense 1024). The default is now the seed's (kes2021), and a transfer without
`architecture` reads it off its weights file; a resumed job, or a child of a study
created before, must keep the network it started with, so its spec says so.

Revision ID: 0004_specs_name_their_network
Revises: 0003_worker_heartbeats
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004_specs_name_their_network"
down_revision = "0003_worker_heartbeats"
branch_labels = None
depends_on = None

#: The kinds whose specs had no `architecture` field: every network was this one.
KINDS = ("source", "transfer", "study")
OLD_NETWORK = "compact2025"

jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("kind", sa.String),
                sa.column("spec", sa.JSON))


def _rewrite(change: Any) -> None:
    """Apply `change(spec) -> spec | None` (None: leave it) to every stored spec of KINDS."""
    connection = op.get_bind()
    rows = connection.execute(sa.select(jobs.c.id, jobs.c.spec)
                              .where(jobs.c.kind.in_(KINDS))).all()
    for job_id, spec in rows:
        if not isinstance(spec, dict):
            continue
        new = change(dict(spec))
        if new is not None:
            connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(spec=new))


def upgrade() -> None:
    def fill(spec: dict[str, Any]) -> dict[str, Any] | None:
        if "architecture" in spec:
            return None
        spec["architecture"] = OLD_NETWORK
        return spec

    _rewrite(fill)


def downgrade() -> None:
    # The code before this revision knows no `architecture` and ran every job on
    # compact2025: dropping that value restores the old meaning exactly. A spec naming
    # kes2021 cannot be expressed there and is left as it is.
    def drop(spec: dict[str, Any]) -> dict[str, Any] | None:
        if spec.get("architecture") != OLD_NETWORK:
            return None
        del spec["architecture"]
        return spec

    _rewrite(drop)
