"""Storage's decisions on its own STORE stream: pure functions of what storage read and a
command, returning the facts to record (facts.py; codec.py writes each as its STORE event) and a
result, by concern (erasures.py, retention.py, operations.py), and the erasures aggregate its
projection keeps. The reads they decide on (the archive, the log, auth's request) are the api's
and jobs' I/O. Free of protobuf, gRPC, NATS, SQL and I/O."""

from __future__ import annotations

from parley_storage.domain.erasures import (
    EraseUserData,
    Erasures,
    ExportUserData,
    check_erasure_requested,
    check_user_id,
    decide_deletions,
    decide_erase,
    decide_erased_from_streams,
    decide_erasure_markers,
    decide_export,
    decide_finished_after_restore,
    owner_of,
)
from parley_storage.domain.facts import (
    AccountErasureDue,
    ChannelErasureDue,
    ConsumerRecreated,
    Decided,
    DeletionDue,
    ErasedFromStreams,
    ErasureDue,
    ExpiryDue,
    Fact,
    KekRotated,
    LogRestored,
    StreamReseeded,
    UserErased,
    UserExported,
)
from parley_storage.domain.operations import decide_consumer_recreated, decide_kek_rotated, decide_log_restored
from parley_storage.domain.retention import (
    CHANNEL_ID,
    MARKER_SEQS,
    NS_PER_DAY,
    SetRetentionPolicy,
    check_channel_exists,
    check_recorded_policy,
    check_retention_request,
    decide_expiry,
    expiry_cutoff,
)

__all__ = [
    "CHANNEL_ID",
    "MARKER_SEQS",
    "NS_PER_DAY",
    "AccountErasureDue",
    "ChannelErasureDue",
    "ConsumerRecreated",
    "Decided",
    "DeletionDue",
    "EraseUserData",
    "ErasedFromStreams",
    "ErasureDue",
    "Erasures",
    "ExpiryDue",
    "ExportUserData",
    "Fact",
    "KekRotated",
    "LogRestored",
    "SetRetentionPolicy",
    "StreamReseeded",
    "UserErased",
    "UserExported",
    "check_channel_exists",
    "check_erasure_requested",
    "check_recorded_policy",
    "check_retention_request",
    "check_user_id",
    "decide_consumer_recreated",
    "decide_deletions",
    "decide_erase",
    "decide_erased_from_streams",
    "decide_erasure_markers",
    "decide_expiry",
    "decide_export",
    "decide_finished_after_restore",
    "decide_kek_rotated",
    "decide_log_restored",
    "expiry_cutoff",
    "owner_of",
]
