"""Storage's decisions and its erasures aggregate (domain/), and the STORE events codec.py
writes them as: no server, no database, no log."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from parley.storage.v1 import events_pb2 as pb

from parley_core.actor import Actor
from parley_core.contracts import MAX_RETENTION_DAYS
from parley_core.errors import FailedPrecondition, InvalidArgument, NotFound
from parley_core.markers import (
    MAX_EVENTS_PER_FACT,
    account_erasure_marker,
    channel_erasure_marker,
    deletion_due_id,
    expiry_marker,
)
from parley_core.topology import (
    archive_consumer_subject,
    due_subject,
    export_subject,
    kek_subject,
    privacy_subject,
    restore_subject,
)
from parley_storage import codec, domain
from parley_storage.domain import (
    AccountErasureDue,
    ChannelErasureDue,
    ConsumerRecreated,
    DeletionDue,
    ErasedFromStreams,
    EraseUserData,
    Erasures,
    ExpiryDue,
    ExportUserData,
    KekRotated,
    SetRetentionPolicy,
    UserErased,
    UserExported,
)

STORAGE = Actor.service("storage")
NOW_NS = 1_800_000_000 * 10**9

# -- erasure -----------------------------------------------------------------------------------


def test_an_erasure_needs_a_user_id() -> None:
    with pytest.raises(InvalidArgument, match="user_id is required"):
        domain.check_user_id("")
    assert domain.check_user_id("u1") == "u1"


def test_an_erasure_auth_did_not_record_is_refused_and_records_nothing() -> None:
    command = EraseUserData("u1", erased_by="admin1", reason="asked")
    with pytest.raises(FailedPrecondition, match="not requested through auth; call auth's RequestErasure"):
        domain.decide_erase(command, requested=False, live_key_ids=["k1"])
    with pytest.raises(FailedPrecondition, match="the erasure of u1"):
        domain.check_erasure_requested(command, requested=False)


def test_an_erasure_records_who_why_and_every_key_it_destroys() -> None:
    command = EraseUserData("u1", erased_by="admin1", reason="asked")
    facts, result = domain.decide_erase(command, requested=True, live_key_ids=["k1", "k2"])
    assert facts == [UserErased("u1", "admin1", "asked", ("k1", "k2"))]
    assert result is None


def test_the_closing_record_counts_the_events_deleted() -> None:
    assert domain.decide_erased_from_streams("u1", 7) == ([ErasedFromStreams("u1", 7)], 7)


def test_erasure_markers_one_per_channel_and_username_in_a_stable_order() -> None:
    due = domain.decide_erasure_markers("u1", {"c2": {5, 3}, "c1": [9]}, {"bob", "alice"})
    assert due == [
        ChannelErasureDue(channel_erasure_marker("u1", "c1"), "u1", "c1", (9,)),
        ChannelErasureDue(channel_erasure_marker("u1", "c2"), "u1", "c2", (3, 5)),
        AccountErasureDue(account_erasure_marker("u1", "alice"), "u1", "alice"),
        AccountErasureDue(account_erasure_marker("u1", "bob"), "u1", "bob"),
    ]
    assert [domain.owner_of(d) for d in due] == ["messaging", "messaging", "auth", "auth"]
    assert domain.decide_erasure_markers("u1", {}, ()) == []


def test_an_erasure_a_restore_finds_in_the_keyring_gets_the_record_it_lacked() -> None:
    facts, _ = domain.decide_finished_after_restore("u1", ["k1"], backup_id="b7", by="platform")
    assert facts == [
        UserErased("u1", "platform", "erased after backup b7 was taken; finished when it was restored", ("k1",))
    ]


def test_deletions_are_asked_for_in_stream_order_chunked_with_ids_from_what_they_name() -> None:
    refs = [(seq, f"e{seq}") for seq in range(MAX_EVENTS_PER_FACT + 3, 0, -1)] + [(1, "e1")]  # a repeat
    due = domain.decide_deletions("MSG", "messaging", "erasure", refs, user_id="u1")
    assert [len(d.events) for d in due] == [MAX_EVENTS_PER_FACT, 3]
    assert due[0].events[0] == (1, "e1")
    assert due[1] == DeletionDue(
        deletion_due_id(
            "MSG", "erasure", "u1", [MAX_EVENTS_PER_FACT + 1, MAX_EVENTS_PER_FACT + 2, MAX_EVENTS_PER_FACT + 3]
        ),
        "messaging",
        "MSG",
        "erasure",
        "u1",
        tuple((seq, f"e{seq}") for seq in range(MAX_EVENTS_PER_FACT + 1, MAX_EVENTS_PER_FACT + 4)),
    )
    assert domain.decide_deletions("MSG", "messaging", "erasure", [], user_id="u1") == []


def test_a_restored_log_is_recorded_with_its_streams_and_the_erasures_it_finished() -> None:
    streams = [domain.StreamReseeded("MSG", events=9, holes=1, last_seq=10)]
    facts, _ = domain.decide_log_restored(
        backup_id="b7", backup_created_at="2026-01-01", streams=streams, erasures_finished=["u1"]
    )
    assert facts == [domain.LogRestored("b7", "2026-01-01", tuple(streams), ("u1",))]
    event = codec.new_event(facts[0], Actor.PLATFORM)
    assert (codec.subject_of(facts[0]), event.event_id) == (restore_subject("b7"), "restored-b7")
    assert event.payload == pb.EventLogRestored(
        backup_id="b7",
        backup_created_at="2026-01-01",
        streams=[pb.RestoredStream(stream="MSG", events=9, holes=1, last_seq=10)],
        erasures_finished=["u1"],
    )


def test_a_re_made_archive_consumer_is_recorded() -> None:
    facts, _ = domain.decide_consumer_recreated(stream="MSG", consumer="c", resumed_from_seq=8, stream_last_seq=20)
    assert facts == [ConsumerRecreated("MSG", "c", 8, 20)]


# -- the erasures aggregate ----------------------------------------------------------------------


def test_erasures_apply_each_fact_and_know_which_are_unfinished() -> None:
    erasures = Erasures()
    for fact in (
        UserErased("u1", "admin1", "", ("k1",)),
        UserErased("u2", "u2", "", ()),
        UserExported("u3", "u3"),  # not about erasures: no change
        UserErased("u1", "admin1", "again", ()),  # a repeated erasure is one
        ErasedFromStreams("u1", 4),
    ):
        erasures.apply(fact)
    assert erasures.unfinished() == ["u2"]
    erasures.apply(ErasedFromStreams("u2", 0))
    assert erasures.unfinished() == []


def test_an_erasure_reached_the_log_before_its_record_replayed_is_not_unfinished() -> None:
    erasures = Erasures()
    erasures.apply(ErasedFromStreams("u1", 1))
    erasures.apply(UserErased("u1", "admin1", "", ()))
    assert erasures.unfinished() == []


# -- export and key rotation -------------------------------------------------------------------


def test_an_export_is_recorded_with_who_exported() -> None:
    assert domain.decide_export(ExportUserData("u1", exported_by="admin1")) == ([UserExported("u1", "admin1")], None)


def test_a_kek_rotation_is_recorded_and_answered_with_the_same_record() -> None:
    facts, rotated = domain.decide_kek_rotated(
        new_kek_id="kek-2", rewrapped=3, retired_kek_ids=["kek-1"], rotated_by="platform"
    )
    assert facts == [rotated] == [KekRotated("kek-2", 3, ("kek-1",), "platform")]


# -- retention ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel_id", "days", "message"),
    [
        ("", 30, "channel_id is required"),
        ("a.b", 30, "channel_id must be a channel's id"),
        ("parley.>", 30, "channel_id must be a channel's id"),
        ("c" * 65, 30, "channel_id must be a channel's id"),
        ("c1", MAX_RETENTION_DAYS + 1, f"days must be at most {MAX_RETENTION_DAYS}"),
    ],
)
def test_a_bad_retention_request_is_refused(channel_id: str, days: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        domain.check_retention_request(SetRetentionPolicy(channel_id, days))


def test_a_retention_request_for_a_channel_the_log_lacks_is_not_found() -> None:
    command = domain.check_retention_request(SetRetentionPolicy("c-1_A", 30))
    with pytest.raises(NotFound, match="no channel with id 'c-1_A'"):
        domain.check_channel_exists(command, 0)
    domain.check_channel_exists(command, 12)


def test_storage_applies_only_the_days_messaging_recorded() -> None:
    with pytest.raises(FailedPrecondition, match="messaging has recorded no retention days for channel c1, not 30"):
        domain.check_recorded_policy(SetRetentionPolicy("c1", 30), 0)
    with pytest.raises(FailedPrecondition, match="recorded 7 retention days"):
        domain.check_recorded_policy(SetRetentionPolicy("c1", 30), 7)
    domain.check_recorded_policy(SetRetentionPolicy("c1", 30), 30)


def test_expiry_facts_are_chunked_and_their_markers_come_from_the_numbers() -> None:
    cutoff = domain.expiry_cutoff(30, NOW_NS)
    assert cutoff == NOW_NS - 30 * domain.NS_PER_DAY
    seqs = list(range(1, 2 * domain.MARKER_SEQS + 2))
    due = domain.decide_expiry("c1", 30, seqs, sent_before_ns=cutoff)
    assert [len(d.channel_seqs) for d in due] == [domain.MARKER_SEQS, domain.MARKER_SEQS, 1]
    assert due[2] == ExpiryDue(expiry_marker("c1", [len(seqs)]), "c1", (len(seqs),), 30, cutoff)
    # A retried run (later clock) asks for the same markers: nothing is recorded twice.
    again = domain.decide_expiry("c1", 30, seqs, sent_before_ns=cutoff + 1)
    assert [d.marker for d in again] == [d.marker for d in due]
    assert domain.decide_expiry("c1", 30, [], sent_before_ns=cutoff) == []


# -- codec: each fact as its STORE event --------------------------------------------------------


def test_facts_are_written_on_their_subjects_with_their_payloads() -> None:
    marker = expiry_marker("c1", [1, 2])
    cases: list[tuple[domain.Fact, str, type[Message], str | None]] = [
        (UserErased("u1", "a", "r", ("k1",)), privacy_subject("u1"), pb.UserDataErased, None),
        (ErasedFromStreams("u1", 2), privacy_subject("u1"), pb.UserDataErasedFromStreams, "erased-from-streams-u1"),
        (UserExported("u1", "a"), export_subject("u1"), pb.UserDataExported, None),
        (KekRotated("k2", 1, ("k1",), "a"), kek_subject(), pb.KeyEncryptionKeyRotated, None),
        (ExpiryDue(marker, "c1", (1, 2), 30, 5), due_subject("messaging", "expiry", "c1"), pb.RetentionDue, "due-"),
    ]
    for fact, subject, payload_type, event_id in cases:
        event = codec.new_event(fact, STORAGE)
        assert codec.subject_of(fact) == subject
        assert isinstance(event.payload, payload_type)
        assert event.actor == STORAGE
        if event_id is not None:
            assert event.event_id.startswith(event_id)
    deletion = domain.decide_deletions("AUTH", "auth", "removed", [(4, "e4")])[0]
    event = codec.new_event(deletion, STORAGE)
    assert codec.subject_of(deletion) == due_subject("auth", "deletion", deletion.fact_id)
    assert event.event_id == event.aggregate_id == deletion.fact_id
    assert event.payload == pb.LogDeletionDue(
        reason="removed", stream="AUTH", events=[pb.LoggedEventRef(stream_seq=4, event_id="e4")]
    )
    recreated = ConsumerRecreated("MSG", "c", 8, 20)
    assert codec.subject_of(recreated) == archive_consumer_subject("MSG")
    assert codec.new_event(recreated, STORAGE).payload == pb.ArchiveConsumerRecreated(
        stream="MSG", consumer="c", resumed_from_seq=8, stream_last_seq=20
    )
    due = domain.decide_erasure_markers("u1", {"c1": [1]}, ["alice"])
    channel, account = (codec.new_event(d, STORAGE) for d in due)
    assert channel.event_id == due[0].marker.due_event_id
    assert channel.payload == pb.ChannelErasureDue(user_id="u1", channel_id="c1", channel_seqs=[1])
    assert codec.subject_of(due[1]) == due_subject("auth", "erasure", "u1")
    assert account.payload == pb.AccountErasureDue(user_id="u1", username_key="alice")


def test_the_facts_storage_folds_read_back_as_themselves() -> None:
    for fact in (UserErased("u1", "a", "r", ("k1", "k2")), ErasedFromStreams("u1", 3)):
        assert codec.fact_of(codec.new_event(fact, STORAGE).payload) == fact
    assert codec.fact_of(pb.UserDataExported(user_id="u1")) is None  # not folded by the projection
