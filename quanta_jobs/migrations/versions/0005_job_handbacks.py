"""Jobs count their hand-backs: attempts a worker stopping on purpose gave back.

A worker that stops on purpose (Ctrl-C, SIGTERM, a deploy) hands its running job back to
the queue with its checkpoint; that start must not count against `max_attempts`, which
exist for crashes. `attempts - handbacks` is what the limit counts.

Revision ID: 0005_job_handbacks
Revises: 0004_specs_name_their_network
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_job_handbacks"
down_revision = "0004_specs_name_their_network"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("handbacks", sa.Integer(), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("handbacks")
