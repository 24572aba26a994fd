"""Uploads hold their bytes against the storage quota while they stream.

Revision ID: 0006_upload_holds
Revises: 0005_job_handbacks
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_upload_holds"
down_revision = "0005_job_handbacks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_holds",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_upload_holds_owner", "upload_holds", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_upload_holds_owner", table_name="upload_holds")
    op.drop_table("upload_holds")
