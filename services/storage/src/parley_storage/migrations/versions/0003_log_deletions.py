"""Texts blanked by a redaction or by retention, queued for secure deletion from the JetStream log.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_deletions",
        sa.Column("stream", sa.String(32), nullable=False),
        sa.Column("stream_seq", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("recorded_at_ns", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("stream", "stream_seq", name="pk_log_deletions"),
    )


def downgrade() -> None:
    op.drop_table("log_deletions")
