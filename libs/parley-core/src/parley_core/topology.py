"""Every JetStream stream, subject and durable consumer of Parley, declared in one place.

The NATS server's per-service permissions are derived from this table, with no exception beside
it: a service publishes only on the subject trees of the streams it owns (one writer per
subject), reads only the streams it is declared to read (or, for a narrower need, one durable
consumer with a fixed filter), and creates, inspects and deletes only its own consumers. Each
stream also says which protobuf packages its owner writes, so a consumer can refuse anything
else (bus.py parks it).

Each service is also its own NATS account (nats_accounts derives them, natsconf renders them):
JetStream and every stream live in one account no client logs into, and a service reaches them
only through imports of exactly the subjects below. nats-server checks permissions on the
subject a client publishes, not on the reply subject it names, and JetStream answers (a stored
message, a consumer's next one) on that reply subject; in an account of its own the answer
comes back where no stream listens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SERVICES: tuple[str, ...] = ("auth", "messaging", "storage", "gateway", "patch-registry")

# The platform user creates streams and lets an operator inspect parked events.
PLATFORM_USER = "platform"
# The certificate of a joined host's node agent (`parley host add` issues it; the first host's
# agent runs inside `parley up` as the platform): it follows roll-outs and runs its prober, and
# without a user token may call only rbac.NODE_AGENT_METHODS. It has no NATS user.
NODE_AGENT = "node-agent"
# The certificate every nats-server node of the platform serves.
NATS_IDENTITY = "nats"
# The certificate Prometheus presents to scrape /metrics over TLS (parley_core.metrics); no gRPC
# server lists it among its allowed peers, so it reads figures and nothing else.
METRICS_SCRAPER = "prometheus"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    # The only one allowed to append to it: a service, the platform identity, or "*" (each
    # service on its own subtree).
    owner: str
    readers: tuple[str, ...]  # services that may read all of it (their own consumers, direct gets)
    # The protobuf packages of the events its owner writes; a consumer parks any other event type
    # found on it. Empty: no rule (PARKED holds copies of anyone's events).
    event_packages: tuple[str, ...] = ()
    duplicate_window_s: float = 120.0
    # Size limits (-1: none). With discard_new a full stream refuses further appends and keeps
    # what it holds; otherwise it drops its oldest events to make room.
    max_bytes: int = -1
    max_msgs: int = -1
    discard_new: bool = False

    def owner_writes(self, event_type: str) -> bool:
        """Whether the stream's owner writes events of this type (a newer one of its packages too)."""
        return not self.event_packages or event_type.rpartition(".")[0] in self.event_packages


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str  # "<service>-...": whose it is at a glance (the permissions name each one in full)
    service: str
    filter_subject: str
    max_deliver: int = 5
    ack_wait_s: float = 30.0


def stream_subject(context: str, aggregate: str, aggregate_id: str) -> str:
    return f"parley.{context}.{aggregate}.{aggregate_id}"


# Subject helpers: the one place subject strings are built.
def user_subject(user_id: str) -> str:
    return stream_subject("auth", "user", user_id)


def username_subject(username_key: str) -> str:
    return stream_subject("auth", "username", username_key)


def erasure_request_subject(user_id: str) -> str:
    """Auth's record that the erasure of this account was requested through it."""
    return stream_subject("auth", "erasure", user_id)


def signing_key_subject(key_id: str) -> str:
    return stream_subject("auth", "key", key_id)


def audit_key_subject(key_id: str) -> str:
    """The public half of one of auth's audit keys (AuditKeyPublished)."""
    return stream_subject("auth", "auditkey", key_id)


def lockout_subject(account_key: str) -> str:
    """Failed-login counts of one (possibly nonexistent) username, keyed by its digest."""
    return stream_subject("auth", "lockout", account_key)


def slowed_source_subject(source_key: str) -> str:
    """Auth's record that logins from one address are held back (SourceSlowed), keyed by a digest."""
    return stream_subject("auth", "slowed", source_key)


def channel_subject(channel_id: str) -> str:
    return stream_subject("msg", "channel", channel_id)


def to_device_subject(user_id: str) -> str:
    """Olm-encrypted messages queued for a user's devices."""
    return stream_subject("msg", "todevice", user_id)


def privacy_subject(user_id: str) -> str:
    return stream_subject("storage", "privacy", user_id)


def export_subject(user_id: str) -> str:
    """The record that a user's data was exported (STORE)."""
    return stream_subject("storage", "export", user_id)


def restore_subject(backup_id: str) -> str:
    """The record that a restored folder's event log was re-seeded from a backup's archive (STORE)."""
    return stream_subject("storage", "restore", backup_id)


def retention_subject(channel_id: str) -> str:
    """The operator's retention policy changes for one channel (STORE), for the audit trail."""
    return stream_subject("storage", "retention", channel_id)


def archive_consumer_subject(stream: str) -> str:
    """Storage's record that it made one of its archive consumers again (STORE), for the audit trail."""
    return stream_subject("storage", "archive", stream)


def kek_subject() -> str:
    """Storage's key-encryption key rotations (STORE), for the audit trail."""
    return stream_subject("storage", "kek", "rotations")


def reseed_hole_subject(stream: str) -> str:
    """Where a re-seed puts a placeholder for an event the archive cannot open, deleted at once:
    the next event then lands at its original sequence."""
    prefix = STREAMS_BY_NAME[stream].subjects[0].removesuffix(">")
    return f"{prefix}restore-hole"


def parked_subject(service: str, stream: str) -> str:
    return f"parley.parked.{service}.{stream}"


def platform_finding_subject(kind: str, stream: str) -> str:
    """Where the platform records a security finding of `kind` about `stream` (PLATFORM_FINDINGS)."""
    return f"parley.platform.finding.{kind}.{stream}"


def heartbeat_subject(service: str, instance_id: str) -> str:
    return f"parley.fleet.heartbeat.{service}.{instance_id}"


def rollout_subject(rollout_id: str) -> str:
    return stream_subject("patch", "rollout", rollout_id)


def release_subject(service: str) -> str:
    return stream_subject("patch", "release", service)


def advisory_subject(advisory_id: str) -> str:
    return stream_subject("patch", "advisory", advisory_id)


def finding_subject(advisory_id: str, service: str, package: str) -> str:
    """One finding's events (FindingDetected, FindingFixed): a service affected by an advisory in a
    package (its PEP 503 name, which holds no dot)."""
    return stream_subject("patch", "finding", f"{advisory_id}.{service}.{package}")


def trust_root_subject() -> str:
    """The release repository's TUF root: every rotation is an audited event here."""
    return stream_subject("patch", "trust", "root")


def vulnerability_alert_subject(kind: str, advisory_id: str) -> str:
    """The patch registry's own alerts (VulnerabilityOverdue), on its PATCH stream: a SIEM follows
    them beside SEC, and they never enter auth's audit chain."""
    return stream_subject("patch", "alert", f"{kind}.{advisory_id}")


def due_subject(owner: str, kind: str, aggregate_id: str) -> str:
    """A fact storage records for another stream's owner to act on, on storage's own STORE stream:
    storage is about to delete events from that owner's subjects (an erasure), or found messages
    expired (retention), and the owner appends the marker on its own subject. One tree per owner,
    which only that owner (and storage) reads."""
    return f"parley.storage.due.{owner}.{kind}.{aggregate_id}"


def due_filter(owner: str) -> str:
    return f"parley.storage.due.{owner}.>"


def anomaly_subject(kind: str, key: str) -> str:
    """Storage's detector's findings (AnomalyDetected), on its own STORE tree: one subject per rule
    and per whom it concerns, so a reader follows one rule or one account."""
    return f"parley.storage.anomaly.{kind}.{key}"


ANOMALY_FILTER = "parley.storage.anomaly.>"


SIGNING_KEYS_FILTER = "parley.auth.key.>"
AUDIT_KEYS_FILTER = "parley.auth.auditkey.>"
CHANNELS_FILTER = "parley.msg.channel.>"
HEARTBEATS_FILTER = "parley.fleet.heartbeat.>"
PATCH_FILTER = "parley.patch.>"
# Every roll-out's subject: a new roll-out is appended after all of them (one unfinished per service).
ROLLOUTS_FILTER = "parley.patch.rollout.>"
VULNERABILITY_ALERTS_FILTER = "parley.patch.alert.>"
TO_DEVICE_FILTER = "parley.msg.todevice.>"
MESSAGING_FILTER = "parley.msg.>"
# Messaging follows auth's users and devices (the key directory is auth's).
AUTH_FILTER = "parley.auth.>"

ALL_READERS = SERVICES
# Who follows every instance's heartbeats (plain NATS, no stream): each service's account exports
# its own heartbeat subjects to this one's.
HEARTBEAT_READER = "patch-registry"

# PARKED's bounds (PARLEY_PARKED_MAX_BYTES, PARLEY_PARKED_MAX_MSGS; config.Settings). Every
# service's NATS user may append to its own parley.parked.<service>.> subtree, so a stolen one
# could otherwise fill the JetStream store that every stream shares. Full, PARKED refuses new
# copies (discard new): the oldest, where the SECURITY records of an attack already are, stay.
PARKED_MAX_BYTES = 256 * 1024 * 1024
PARKED_MAX_MSGS = 100_000
# PLATFORM_FINDINGS' bounds: only the platform writes it, a few records per attack (the guard reports a
# flood once a minute per service), so the oldest go only after years of them.
FINDINGS_MAX_BYTES = 64 * 1024 * 1024
FINDINGS_MAX_MSGS = 100_000
PLATFORM_FINDINGS = "PLATFORM_FINDINGS"

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("AUTH", ("parley.auth.>",), owner="auth", readers=ALL_READERS, event_packages=("parley.auth.v1",)),
    StreamSpec(
        "MSG",
        ("parley.msg.>",),
        owner="messaging",
        readers=("messaging", "storage", "gateway"),
        event_packages=("parley.messaging.v1",),
    ),
    # The security event stream and audit chain: auth's alone.
    StreamSpec("SEC", ("parley.sec.>",), owner="auth", readers=("storage",), event_packages=("parley.auth.v1",)),
    StreamSpec(
        "PATCH",
        ("parley.patch.>",),
        owner="patch-registry",
        readers=("patch-registry", "storage"),
        event_packages=("parley.patch.v1",),
    ),
    # Poison events parked by any service's consumer, for an operator to list and replay.
    StreamSpec(
        "PARKED",
        ("parley.parked.>",),
        owner="*",
        readers=(),
        duplicate_window_s=120.0,
        max_bytes=PARKED_MAX_BYTES,
        max_msgs=PARKED_MAX_MSGS,
        discard_new=True,
    ),
    # The platform's own security findings (the consumer guard's), apart from PARKED, which any
    # service's credential can fill: written by the platform identity alone (no service's
    # permissions name these subjects), read by the operator (`parley parked`) and a SIEM.
    StreamSpec(
        PLATFORM_FINDINGS,
        ("parley.platform.>",),
        owner=PLATFORM_USER,
        readers=(),
        max_bytes=FINDINGS_MAX_BYTES,
        max_msgs=FINDINGS_MAX_MSGS,
    ),
    # The storage service's own audited records (erasures, a restored folder's re-seeded log) and
    # the facts other owners act on (due_subject).
    StreamSpec(
        "STORE", ("parley.storage.>",), owner="storage", readers=("storage",), event_packages=("parley.storage.v1",)
    ),
)

# The owners storage records due facts for (erasure and retention markers on their own subjects).
MARKER_OWNERS = ("auth", "messaging")

CONSUMERS: tuple[ConsumerSpec, ...] = (
    *(
        ConsumerSpec(stream=s.name, durable=f"storage-archive-{s.name.lower()}", service="storage", filter_subject=">")
        for s in STREAMS
        if s.owner in SERVICES  # not PARKED's copies, nor the platform's findings
    ),
    # Each owner reacts to the facts storage recorded for it, and reads nothing else of STORE.
    *(
        ConsumerSpec(stream="STORE", durable=f"{owner}-storage-due", service=owner, filter_subject=due_filter(owner))
        for owner in MARKER_OWNERS
    ),
)

# Storage's SIEM feed (parley_storage.siem): the audit records and the detector's findings, each
# forwarded to the operator's SIEM and acknowledged once sent. Kept apart from CONSUMERS, whose
# storage entries are its archive consumers.
SIEM_CONSUMERS: tuple[ConsumerSpec, ...] = (
    ConsumerSpec(stream="SEC", durable="storage-siem-sec", service="storage", filter_subject=">"),
    ConsumerSpec(stream="STORE", durable="storage-siem-anomaly", service="storage", filter_subject=ANOMALY_FILTER),
)

STREAMS_BY_NAME = {s.name: s for s in STREAMS}


def with_parked_limits(streams: tuple[StreamSpec, ...], *, max_bytes: int, max_msgs: int) -> tuple[StreamSpec, ...]:
    """The streams with PARKED bounded as configured (the platform's settings, `parley up`)."""
    return tuple(replace(s, max_bytes=max_bytes, max_msgs=max_msgs) if s.name == "PARKED" else s for s in streams)


# Erasure, redaction and retention reaching the log: events are securely deleted from these
# streams by their owner only (auth on AUTH, messaging on MSG), each event checked first, on the
# LogDeletionDue facts storage records on STORE (parley_core.log_deletion). Storage deletes only
# the parked copies of what left the log: PARKED, from which no service rebuilds state.
OWNER_DELETED_STREAMS = ("AUTH", "MSG")
PARKED_DELETER = "storage"


def stream_for_subject(subject: str) -> StreamSpec:
    for spec in STREAMS:
        for pattern in spec.subjects:
            if subject.startswith(pattern.removesuffix(">")):
                return spec
    raise KeyError(f"no stream declared for subject {subject!r}")


def inbox_prefix(service: str) -> str:
    """Each service gets its own reply inbox, so no service can read another's replies."""
    return f"_INBOX_{service.replace('-', '_')}"


def reads(service: str, spec: StreamSpec) -> bool:
    """Whether the service reads the whole stream (not only through a durable of its own)."""
    return service == spec.owner or service in spec.readers


# Which peers (by certificate name) may call each internal gRPC service. The platform identity
# is the operator's tooling (`parley up`, `parley status`, admin commands).
# A joined host's node agent calls the registry, and auth, messaging and storage for its prober's
# transactions (with the prober's token; its certificate alone reaches rbac.NODE_AGENT_METHODS).
GRPC_CALLERS: dict[str, tuple[str, ...]] = {
    "auth": ("gateway", PLATFORM_USER, NODE_AGENT),
    "messaging": ("gateway", PLATFORM_USER, NODE_AGENT),
    # Services read the archive to rebuild state older than JetStream retention (issue 5).
    "storage": ("gateway", PLATFORM_USER, "auth", "messaging", "patch-registry", NODE_AGENT),
    "patch-registry": ("gateway", PLATFORM_USER, NODE_AGENT),
    "gateway": (),
}

# Methods that fewer of their service's callers may call (each a subset of GRPC_CALLERS), checked
# by the same interceptor before any handler runs (grpc_callers).
GRPC_METHOD_CALLERS: dict[str, dict[str, tuple[str, ...]]] = {
    # The gateway's waiting sends in one call, each item with its own client's token.
    "messaging": {"/parley.messaging.v1.MessagingService/PostMessages": ("gateway",)},
    "patch-registry": {
        # Base releases are the platform's own (`parley up`), published with its identity alone.
        "/parley.patch.v1.PatchService/PublishBaseRelease": (PLATFORM_USER,),
        # Roll-out steps, which node agents report: the first host's as the platform identity, a
        # joined host's with its node-agent certificate; the gateway may not.
        **{
            f"/parley.patch.v1.PatchService/{name}": (PLATFORM_USER, NODE_AGENT)
            for name in ("ReportInstanceStarted", "ReportInstanceDrained", "ReportInstanceExited", "ReportRolledBack")
        },
    },
}


def grpc_callers(service: str, method: str) -> tuple[str, ...]:
    """The peers (by certificate name) that may call `method` on `service`."""
    return GRPC_METHOD_CALLERS.get(service, {}).get(method, GRPC_CALLERS[service])
