"""Per-channel retention policies and the data-residency binding."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    op.create_table(
        "retention_policies",
        sa.Column("channel_id", sa.String(64), primary_key=True),
        sa.Column("days", sa.Integer, nullable=False),
        sa.Column("set_by", sa.String(128), nullable=False),
        sa.Column("set_at_ns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "residency",
        sa.Column("organisation", sa.String(128), primary_key=True),
        sa.Column("location", sa.String(512), nullable=False),
        sa.Column("bound_at_ns", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("residency")
    op.drop_table("retention_policies")
