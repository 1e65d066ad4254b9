"""The read model history is served from: thread roots, join facts, reactions, texts and removed
messages, filled from the archived channel events (which needs the keyring to open them).

The fill applies today's read-model code (parley_storage.archive.backfill) to the tables as this
revision leaves them; a later revision that changes those tables must keep that code working on
this shape or give this revision a copy of it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from parley_storage.migrations.columns import log_position, message_number

revision = "0004"
down_revision: str | None = "0003"


def upgrade() -> None:
    from parley_storage.archive.backfill import fill_read_model, require_keyring

    keys = context.config.attributes.get("keys")
    require_keyring(op.get_bind(), keys)
    op.add_column("channel_messages", sa.Column("thread_root_seq", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column(
        "channel_members", sa.Column("joined_at_stream_seq", sa.BigInteger, nullable=False, server_default="0")
    )
    op.add_column("channel_members", sa.Column("newest_seq_at_join", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "channels",
        sa.Column("channel_id", sa.String(64), primary_key=True),
        sa.Column("hides_history", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("posts", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "message_reactions",
        *message_number(),
        sa.Column("user_id", sa.String(64), nullable=False),
        *log_position(),
        sa.Column("present", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("stream", "stream_seq", name="pk_message_reactions"),
    )
    op.create_index("ix_message_reactions_message", "message_reactions", ["channel_id", "channel_seq", "user_id"])
    op.create_table(
        "message_texts",
        *message_number(),
        *log_position(),
        sa.PrimaryKeyConstraint("stream", "stream_seq", name="pk_message_texts"),
    )
    op.create_index("ix_message_texts_message", "message_texts", ["channel_id", "channel_seq"])
    op.create_table(
        "removed_messages",
        *message_number(),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "channel_seq", name="pk_removed_messages"),
    )
    fill_read_model(op.get_bind(), keys)


def downgrade() -> None:
    for table in ("removed_messages", "message_texts", "message_reactions", "channels"):
        op.drop_table(table)
    with op.batch_alter_table("channel_members") as batch:
        batch.drop_column("newest_seq_at_join")
        batch.drop_column("joined_at_stream_seq")
    with op.batch_alter_table("channel_messages") as batch:
        batch.drop_column("thread_root_seq")
