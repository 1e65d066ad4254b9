"""The encrypted event archive: events sealed under data keys, positions, projections."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from parley_storage.migrations.columns import log_position, message_number

revision = "0001"
down_revision: str | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *log_position(),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("aggregate_type", sa.String(64), nullable=False),
        sa.Column("aggregate_id", sa.String(128), nullable=False),
        sa.Column("aggregate_version", sa.BigInteger, nullable=False),
        sa.Column("occurred_at_ns", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("producer", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("stream", "stream_seq", name="uq_events_stream_seq"),
    )
    op.create_index("ix_events_aggregate", "events", ["aggregate_type", "aggregate_id", "aggregate_version"])
    op.create_index("ix_events_key", "events", ["key_id"])
    op.create_table(
        "consumer_positions",
        sa.Column("consumer", sa.String(128), primary_key=True),
        sa.Column("stream", sa.String(32), nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_occurred_at_ns", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "data_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=True),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=True),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("destroyed_at_ns", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_data_keys_owner", "data_keys", ["owner"])
    op.create_table(
        "channel_messages",
        *message_number(),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("sender_id", sa.String(64), nullable=False),
        sa.Column("sent_at_ns", sa.BigInteger, nullable=False),
        *log_position(),
        sa.PrimaryKeyConstraint("channel_id", "channel_seq", name="pk_channel_messages"),
    )
    op.create_table(
        "channel_members",
        sa.Column("channel_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "user_id", name="pk_channel_members"),
    )


def downgrade() -> None:
    for table in ("channel_members", "channel_messages", "data_keys", "consumer_positions", "events"):
        op.drop_table(table)
