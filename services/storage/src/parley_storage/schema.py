"""SQL schema of the archive (SQLite by default, PostgreSQL by URL).

This is the shape the code expects; Alembic migrations in ``parley_storage/migrations`` create
and evolve it, and a test checks that the migrated database matches these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    false,
)

metadata = MetaData()


def _log_position() -> tuple[Column[str], Column[int]]:
    """Where an event stands in the JetStream log: its stream, and its sequence number there."""
    return Column("stream", String(32), nullable=False), Column("stream_seq", BigInteger, nullable=False)


def _message_number() -> tuple[Column[str], Column[int]]:
    """Which message of which channel: the channel, and the message's number there."""
    return Column("channel_id", String(64), nullable=False), Column("channel_seq", BigInteger, nullable=False)


# Every event of every stream, as appended: the platform's complete history. An event is stored
# once: (stream, stream_seq) is its identity, checked in the transaction that stores it. The
# envelope is sealed (AES-256-GCM) under the data key of whoever the event is about (key_id),
# with the columns that identify it bound as associated data; the columns stay readable so the
# log keeps its order and shape after a key is shredded.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    *_log_position(),
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
    Column("key_id", String(64), nullable=False),
    Column("envelope", LargeBinary, nullable=False),
    UniqueConstraint("stream", "stream_seq", name="uq_events_stream_seq"),
    Index("ix_events_aggregate", "aggregate_type", "aggregate_id", "aggregate_version"),
    Index("ix_events_key", "key_id"),
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
    Column("last_occurred_at_ns", BigInteger, nullable=False, server_default="0"),
)

# Per-owner data keys ("user:<id>", "channel:<id>", "system"), each wrapped by a key-encryption
# key. Shredding clears wrapped_key: every record sealed under it becomes unreadable for good.
data_keys = Table(
    "data_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("kek_id", String(64), nullable=True),
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("created_at_ns", BigInteger, nullable=False),
    Column("destroyed_at_ns", BigInteger, nullable=True),
    Index("ix_data_keys_owner", "owner"),
)

# The read model history is served from, written in the transaction that archives each event
# (archive/read_model.py). Its rows hold positions, numbers and ids, never content: every text and
# emoji stays in its sealed event, which a row points at, so a body exists once, sealed, and
# shredding its author's key or blanking it for a redaction or retention removes it here too.

# A channel's messages, each pointing at its newest text (the post, or its latest edit).
channel_messages = Table(
    "channel_messages",
    metadata,
    *_message_number(),
    Column("message_id", String(64), nullable=False),
    Column("sender_id", String(64), nullable=False),
    Column("sent_at_ns", BigInteger, nullable=False),
    *_log_position(),
    Column("thread_root_seq", BigInteger, nullable=False, server_default="0"),  # from the post; an edit keeps it
    PrimaryKeyConstraint("channel_id", "channel_seq", name="pk_channel_messages"),
)

# Whether a channel hides history before a join, and how many posts of it are archived: the
# newest message number, since message numbers are dense.
channels = Table(
    "channels",
    metadata,
    Column("channel_id", String(64), primary_key=True),
    Column("hides_history", Boolean, nullable=False, server_default=false()),
    Column("posts", BigInteger, nullable=False, server_default="0"),
)

# The current members, with the facts of their latest join that parley_core.visibility's rule
# needs: its stream position, and the channel's newest message number then.
channel_members = Table(
    "channel_members",
    metadata,
    Column("channel_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("joined_at_stream_seq", BigInteger, nullable=False, server_default="0"),
    Column("newest_seq_at_join", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("channel_id", "user_id", name="pk_channel_members"),
)

# One row per (message, user, emoji): the newest ReactionAdded or ReactionRemoved of it, which the
# row points at (the emoji stays in that sealed event). A change applies only when it is newer
# than the row's, so a retried event arriving late cannot undo a later one.
message_reactions = Table(
    "message_reactions",
    metadata,
    *_message_number(),
    Column("user_id", String(64), nullable=False),
    *_log_position(),
    Column("present", Boolean, nullable=False),
    PrimaryKeyConstraint("stream", "stream_seq", name="pk_message_reactions"),
    Index("ix_message_reactions_message", "channel_id", "channel_seq", "user_id"),
)

# Every text of a message (its post and its edits), so a redaction or an expiry blanks them by key.
message_texts = Table(
    "message_texts",
    metadata,
    *_message_number(),
    *_log_position(),
    PrimaryKeyConstraint("stream", "stream_seq", name="pk_message_texts"),
    Index("ix_message_texts_message", "channel_id", "channel_seq"),
)

# Messages a redaction or retention removed, and why: a text of one arriving late is removed too.
removed_messages = Table(
    "removed_messages",
    metadata,
    *_message_number(),
    Column("reason", String(16), nullable=False),
    PrimaryKeyConstraint("channel_id", "channel_seq", name="pk_removed_messages"),
)

# Per-channel retention: the retention job marks messages older than `days` expired
# (MessagesExpired on the channel's subject) and the archive removes them when it archives that.
retention_policies = Table(
    "retention_policies",
    metadata,
    Column("channel_id", String(64), primary_key=True),
    Column("days", Integer, nullable=False),
    Column("set_by", String(128), nullable=False),
    Column("set_at_ns", BigInteger, nullable=False),
)

# Texts (posts, edits) whose archive copy a redaction or an expiry blanked, still to be securely
# deleted from the JetStream log (and their parked copies). Written in the transaction that blanks
# them; a storage job deletes them from the log, then the rows (log_cleanup.py). The event id is
# checked against the log before deleting, so a position that now holds another event (a log
# re-seeded after a restore) is left alone. `reason` is "redacted" or "expired", for the operator.
log_deletions = Table(
    "log_deletions",
    metadata,
    *_log_position(),
    Column("event_id", String(64), nullable=False),
    Column("reason", String(16), nullable=False),
    Column("recorded_at_ns", BigInteger, nullable=False),
    PrimaryKeyConstraint("stream", "stream_seq", name="pk_log_deletions"),
)

# Data residency: the organisation this database belongs to and the location it was bound to.
# One row, written on first start; a later start elsewhere or for another organisation is refused.
residency = Table(
    "residency",
    metadata,
    Column("organisation", String(128), primary_key=True),
    Column("location", String(512), nullable=False),
    Column("bound_at_ns", BigInteger, nullable=False),
)
