"""Column groups several revisions create. A revision that used one keeps it as it was: change
a group here and past revisions change with it, so a new shape gets a new helper."""

from __future__ import annotations

import sqlalchemy as sa


def log_position() -> tuple[sa.Column[str], sa.Column[int]]:
    """Where an event stands in the JetStream log: its stream, and its sequence number there."""
    return sa.Column("stream", sa.String(32), nullable=False), sa.Column("stream_seq", sa.BigInteger, nullable=False)


def message_number() -> tuple[sa.Column[str], sa.Column[int]]:
    """Which message of which channel: the channel, and the message's number there."""
    return sa.Column("channel_id", sa.String(64), nullable=False), sa.Column(
        "channel_seq", sa.BigInteger, nullable=False
    )
