"""SQL schema of the archive (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# Every event of every stream, as appended: the platform's complete history. An event is stored
# once: (stream, stream_seq) is its identity, checked in the transaction that stores it.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stream", String(32), nullable=False),
    Column("stream_seq", BigInteger, nullable=False),
    Column("subject", String(255), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(255), nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("aggregate_type", String(64), nullable=False),
    Column("aggregate_id", String(128), nullable=False),
    Column("aggregate_version", BigInteger, nullable=False),
    Column("occurred_at_ns", BigInteger, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("producer", String(128), nullable=False),
    Column("envelope", LargeBinary, nullable=False),
    UniqueConstraint("stream", "stream_seq", name="uq_events_stream_seq"),
    Index("ix_events_aggregate", "aggregate_type", "aggregate_id", "aggregate_version"),
)

# The highest stream sequence each durable consumer has archived, written in the same transaction
# as those events. It shows progress; it is not what deduplicates, since a retried event can
# arrive after later ones.
consumer_positions = Table(
    "consumer_positions",
    metadata,
    Column("consumer", String(128), primary_key=True),
    Column("stream", String(32), nullable=False),
    Column("last_seq", BigInteger, nullable=False),
)

channel_messages = Table(
    "channel_messages",
    metadata,
    Column("channel_id", String(64), nullable=False),
    Column("channel_seq", BigInteger, nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("sender_id", String(64), nullable=False),
    Column("sender_name", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("sent_at_ns", BigInteger, nullable=False),
    PrimaryKeyConstraint("channel_id", "channel_seq", name="pk_channel_messages"),
)

channel_members = Table(
    "channel_members",
    metadata,
    Column("channel_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    PrimaryKeyConstraint("channel_id", "user_id", name="pk_channel_members"),
)
