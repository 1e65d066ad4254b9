"""Texts blanked by a redaction or by retention, queued for secure deletion from the JetStream log."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from parley_storage.migrations.columns import log_position

revision = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    op.create_table(
        "log_deletions",
        *log_position(),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("recorded_at_ns", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("stream", "stream_seq", name="pk_log_deletions"),
    )


def downgrade() -> None:
    op.drop_table("log_deletions")
