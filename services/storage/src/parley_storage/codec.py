"""Storage's facts (domain/, detection/findings.py) as the STORE events they are written as, and back: the one place
that knows both shapes, each fact's subject and its event id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from google.protobuf.message import Message
from parley.storage.v1 import events_pb2 as pb

from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_core.topology import (
    anomaly_subject,
    archive_consumer_subject,
    due_subject,
    export_subject,
    kek_subject,
    privacy_subject,
    restore_subject,
)
from parley_storage import domain
from parley_storage.detection import findings
from parley_storage.detection.findings import Finding
from parley_storage.domain import Fact


class Written(NamedTuple):
    """Where a fact goes and how: its subject, aggregate, payload and (for a fact a retry must
    not record twice) a fixed event id."""

    subject: str
    aggregate_type: str
    aggregate_id: str
    payload: Message
    event_id: str | None = None


def _erased(e: domain.UserErased) -> Written:
    payload = pb.UserDataErased(
        user_id=e.user_id, erased_by=e.erased_by, reason=e.reason, destroyed_key_ids=e.destroyed_key_ids
    )
    return Written(privacy_subject(e.user_id), "privacy", e.user_id, payload)


def _erased_from_streams(e: domain.ErasedFromStreams) -> Written:
    payload = pb.UserDataErasedFromStreams(user_id=e.user_id, events_deleted=e.events_deleted)
    return Written(privacy_subject(e.user_id), "privacy", e.user_id, payload, f"erased-from-streams-{e.user_id}")


def _exported(e: domain.UserExported) -> Written:
    payload = pb.UserDataExported(user_id=e.user_id, exported_by=e.exported_by)
    return Written(export_subject(e.user_id), "export", e.user_id, payload)


def _kek_rotated(e: domain.KekRotated) -> Written:
    return Written(kek_subject(), "kek", "storage", kek_record(e))


def _expiry(e: domain.ExpiryDue) -> Written:
    payload = pb.RetentionDue(
        channel_id=e.channel_id,
        channel_seqs=e.channel_seqs,
        retention_days=e.retention_days,
        sent_before_unix_ns=e.sent_before_ns,
    )
    subject = due_subject("messaging", "expiry", e.channel_id)
    return Written(subject, "retention", e.channel_id, payload, e.marker.due_event_id)


def _channel_erasure(e: domain.ChannelErasureDue) -> Written:
    payload = pb.ChannelErasureDue(user_id=e.user_id, channel_id=e.channel_id, channel_seqs=e.channel_seqs)
    subject = due_subject("messaging", "erasure", e.user_id)
    return Written(subject, "erasure", e.user_id, payload, e.marker.due_event_id)


def _account_erasure(e: domain.AccountErasureDue) -> Written:
    payload = pb.AccountErasureDue(user_id=e.user_id, username_key=e.username_key)
    return Written(due_subject("auth", "erasure", e.user_id), "erasure", e.user_id, payload, e.marker.due_event_id)


def _deletion(e: domain.DeletionDue) -> Written:
    refs = [pb.LoggedEventRef(stream_seq=seq, event_id=event_id) for seq, event_id in e.events]
    payload = pb.LogDeletionDue(reason=e.reason, user_id=e.user_id, stream=e.stream, events=refs)
    return Written(due_subject(e.owner, "deletion", e.fact_id), "deletion", e.fact_id, payload, e.fact_id)


def _consumer_recreated(e: domain.ConsumerRecreated) -> Written:
    payload = pb.ArchiveConsumerRecreated(
        stream=e.stream, consumer=e.consumer, resumed_from_seq=e.resumed_from_seq, stream_last_seq=e.stream_last_seq
    )
    return Written(archive_consumer_subject(e.stream), "archive", e.stream, payload)


def _restored(e: domain.LogRestored) -> Written:
    payload = pb.EventLogRestored(
        backup_id=e.backup_id,
        backup_created_at=e.backup_created_at,
        streams=[
            pb.RestoredStream(stream=s.stream, events=s.events, holes=s.holes, last_seq=s.last_seq) for s in e.streams
        ],
        erasures_finished=e.erasures_finished,
    )
    return Written(restore_subject(e.backup_id), "restore", e.backup_id, payload, f"restored-{e.backup_id}")


def _anomaly(e: findings.AnomalyRecorded) -> Written:
    a = e.anomaly
    payload = pb.AnomalyDetected(
        kind=a.kind,
        subject=a.subject,
        evidence=a.evidence,
        score=a.score,
        why=a.why,
        response=e.response,
        user_id=a.user_id,
        session_id=a.session_id,
        source=a.source,
        trigger_event_ids=a.triggers,
    )
    return Written(anomaly_subject(a.kind, a.key), "anomaly", a.key, payload, a.event_id)


_SESSION_DUES = {"revoke": pb.SessionRevocationDue, "stepup": pb.SessionStepUpDue}


def _session_due(e: findings.SessionActionDue) -> Written:
    """The id follows the finding's, so a replay asks once."""
    a = e.anomaly
    payload = _SESSION_DUES[e.verb](
        session_id=a.session_id, user_id=a.user_id, anomaly_event_id=a.event_id, reason=e.reason
    )
    subject = due_subject("auth", e.verb, a.session_id)
    return Written(subject, "session", a.session_id, payload, f"{a.event_id}-{e.verb}")


def _slowdown_due(e: findings.SourceSlowdownDue) -> Written:
    a = e.anomaly
    payload = pb.SourceSlowdownDue(
        source=a.source, until_unix=e.until_unix, anomaly_event_id=a.event_id, reason=e.reason
    )
    return Written(due_subject("auth", "slow", a.key), "source", a.key, payload, f"{a.event_id}-slow")


ENCODERS: dict[type[Any], Callable[[Any], Written]] = {
    domain.UserErased: _erased,
    domain.ErasedFromStreams: _erased_from_streams,
    domain.UserExported: _exported,
    domain.KekRotated: _kek_rotated,
    domain.ExpiryDue: _expiry,
    domain.ChannelErasureDue: _channel_erasure,
    domain.AccountErasureDue: _account_erasure,
    domain.DeletionDue: _deletion,
    domain.ConsumerRecreated: _consumer_recreated,
    domain.LogRestored: _restored,
    findings.AnomalyRecorded: _anomaly,
    findings.SessionActionDue: _session_due,
    findings.SourceSlowdownDue: _slowdown_due,
}


def written(fact: Fact | Finding) -> Written:
    return ENCODERS[type(fact)](fact)


def subject_of(fact: Fact | Finding) -> str:
    return written(fact).subject


def new_event(fact: Fact | Finding, actor: Actor) -> NewEvent:
    """The fact as the event appended for it, by `actor`."""
    w = written(fact)
    if w.event_id is None:
        return NewEvent(w.aggregate_type, w.aggregate_id, w.payload, actor=actor)
    return NewEvent(w.aggregate_type, w.aggregate_id, w.payload, actor=actor, event_id=w.event_id)


def kek_record(e: domain.KekRotated) -> pb.KeyEncryptionKeyRotated:
    """The rotation's record (RotateKeyEncryptionKey answers with it too)."""
    return pb.KeyEncryptionKeyRotated(
        new_kek_id=e.new_kek_id,
        rewrapped_data_keys=e.rewrapped_data_keys,
        retired_kek_ids=e.retired_kek_ids,
        rotated_by=e.rotated_by,
    )


# The STORE events storage's own projection folds (erasures.py), read back as facts.
DECODERS: dict[type[Message], Callable[[Any], Fact]] = {
    pb.UserDataErased: lambda p: domain.UserErased(p.user_id, p.erased_by, p.reason, tuple(p.destroyed_key_ids)),
    pb.UserDataErasedFromStreams: lambda p: domain.ErasedFromStreams(p.user_id, p.events_deleted),
}


def fact_of(payload: Message) -> Fact | None:
    """The fact a STORE event holds, None for one storage's projection does not fold."""
    decode = DECODERS.get(type(payload))
    return decode(payload) if decode is not None else None
