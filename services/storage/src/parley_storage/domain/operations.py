"""What storage records about its own operation: a key-encryption key rotated, an archive
consumer made again, the event log restored from a backup. Free of protobuf, gRPC, NATS, SQL
and I/O."""

from __future__ import annotations

from collections.abc import Sequence

from parley_storage.domain.facts import ConsumerRecreated, Decided, KekRotated, LogRestored, StreamReseeded


def decide_kek_rotated(
    *, new_kek_id: str, rewrapped: int, retired_kek_ids: Sequence[str], rotated_by: str
) -> Decided[KekRotated]:
    """The rotation as the audit trail records it; the RPC answers with the same record."""
    rotated = KekRotated(new_kek_id, rewrapped, tuple(retired_kek_ids), rotated_by)
    return [rotated], rotated


def decide_consumer_recreated(
    *, stream: str, consumer: str, resumed_from_seq: int, stream_last_seq: int
) -> Decided[None]:
    """The audited record of a lost archive consumer made again (LostConsumers)."""
    return [ConsumerRecreated(stream, consumer, resumed_from_seq, stream_last_seq)], None


def decide_log_restored(
    *, backup_id: str, backup_created_at: str, streams: Sequence[StreamReseeded], erasures_finished: Sequence[str]
) -> Decided[None]:
    """The re-seed's closing record: which streams came back, with how many holes, and the
    erasures it finished (their keys were gone from the keyring the backup is opened with)."""
    return [LogRestored(backup_id, backup_created_at, tuple(streams), tuple(erasures_finished))], None
