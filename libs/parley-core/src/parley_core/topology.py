"""Every JetStream stream, subject and durable consumer of Parley, declared in one place.

The NATS server's per-service permissions are derived from this table, so a service can only
publish to the subjects it owns and only read the streams it is declared to read.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVICES: tuple[str, ...] = ("auth", "messaging", "storage", "gateway", "patch-registry")

# The platform user creates streams and lets an operator inspect parked events.
PLATFORM_USER = "platform"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    owner: str  # the only service allowed to append to it
    readers: tuple[str, ...]  # services that may create consumers on it
    duplicate_window_s: float = 120.0


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
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


def signing_key_subject(key_id: str) -> str:
    return stream_subject("auth", "key", key_id)


def lockout_subject(account_key: str) -> str:
    """Failed-login counts of one (possibly nonexistent) username, keyed by its digest."""
    return stream_subject("auth", "lockout", account_key)


def channel_subject(channel_id: str) -> str:
    return stream_subject("msg", "channel", channel_id)


def to_device_subject(user_id: str) -> str:
    """Olm-encrypted messages queued for a user's devices."""
    return stream_subject("msg", "todevice", user_id)


def privacy_subject(user_id: str) -> str:
    return stream_subject("storage", "privacy", user_id)


def restore_subject(backup_id: str) -> str:
    """The record that a restored folder's event log was re-seeded from a backup's archive (STORE)."""
    return stream_subject("storage", "restore", backup_id)


def retention_subject(channel_id: str) -> str:
    """The operator's retention policy changes for one channel (STORE), for the audit trail."""
    return stream_subject("storage", "retention", channel_id)


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


def heartbeat_subject(service: str, instance_id: str) -> str:
    return f"parley.fleet.heartbeat.{service}.{instance_id}"


def rollout_subject(rollout_id: str) -> str:
    return stream_subject("patch", "rollout", rollout_id)


def release_subject(service: str) -> str:
    return stream_subject("patch", "release", service)


def advisory_subject(advisory_id: str) -> str:
    return stream_subject("patch", "advisory", advisory_id)


def trust_root_subject() -> str:
    """The release repository's TUF root: every rotation is an audited event here."""
    return stream_subject("patch", "trust", "root")


def vulnerability_overdue_subject(advisory_id: str) -> str:
    return f"parley.sec.patch.overdue.{advisory_id}"


SIGNING_KEYS_FILTER = "parley.auth.key.>"
CHANNELS_FILTER = "parley.msg.channel.>"
HEARTBEATS_FILTER = "parley.fleet.heartbeat.>"
PATCH_FILTER = "parley.patch.>"
# The one corner of auth's SEC stream the patch registry may append to: overdue vulnerabilities.
PATCH_SECURITY_EVENTS = "parley.sec.patch.>"
TO_DEVICE_FILTER = "parley.msg.todevice.>"
MESSAGING_FILTER = "parley.msg.>"
# Messaging follows auth's users and devices (the key directory is auth's).
AUTH_FILTER = "parley.auth.>"

ALL_READERS = SERVICES

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("AUTH", ("parley.auth.>",), owner="auth", readers=ALL_READERS),
    StreamSpec("MSG", ("parley.msg.>",), owner="messaging", readers=("messaging", "storage", "gateway")),
    StreamSpec("SEC", ("parley.sec.>",), owner="auth", readers=("storage",)),
    StreamSpec("PATCH", ("parley.patch.>",), owner="patch-registry", readers=("patch-registry", "storage")),
    # Poison events parked by any service's consumer, for an operator to list and replay.
    StreamSpec("PARKED", ("parley.parked.>",), owner="*", readers=(), duplicate_window_s=120.0),
    # The storage service's own audited records (erasures, a restored folder's re-seeded log).
    StreamSpec("STORE", ("parley.storage.>",), owner="storage", readers=("storage",)),
)

CONSUMERS: tuple[ConsumerSpec, ...] = tuple(
    ConsumerSpec(stream=s.name, durable=f"storage-archive-{s.name.lower()}", service="storage", filter_subject=">")
    for s in STREAMS
    if s.name != "PARKED"
)

STREAMS_BY_NAME = {s.name: s for s in STREAMS}

# Erasure, redaction and retention reaching the log: storage securely deletes an erased user's
# events, and redacted or expired texts, from these streams, after the marker its owner rebuilds
# from is on the subject (MessagesErased or MessagesExpired on a channel, which storage appends;
# MessageRedacted, which messaging does; AccountErased on a username). Nothing else in them is its
# to write.
ERASURE_MARKER_SUBJECTS = (channel_subject("*"), username_subject("*"))
ERASED_STREAMS = ("AUTH", "MSG", "PARKED")


def stream_for_subject(subject: str) -> StreamSpec:
    for spec in STREAMS:
        for pattern in spec.subjects:
            if subject.startswith(pattern.removesuffix(">")):
                return spec
    raise KeyError(f"no stream declared for subject {subject!r}")


def inbox_prefix(service: str) -> str:
    """Each service gets its own reply inbox, so no service can read another's replies."""
    return f"_INBOX_{service.replace('-', '_')}"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _read_permissions(stream: str) -> list[str]:
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def permissions_for(service: str) -> Permissions:
    """Least-privilege NATS permissions of one service, derived from STREAMS."""
    if service == PLATFORM_USER:
        return Permissions(publish=(">",), subscribe=(">",))
    if service not in SERVICES:
        raise KeyError(f"unknown service {service!r}")
    publish: list[str] = ["$JS.API.INFO", heartbeat_subject(service, "*"), f"parley.parked.{service}.>"]
    subscribe: list[str] = [f"{inbox_prefix(service)}.>"]
    for spec in STREAMS:
        if spec.owner == "*":
            # Any service may create the shared parking stream; what it may publish there is
            # limited to its own parley.parked.<service>.> subjects above.
            publish.extend((f"$JS.API.STREAM.CREATE.{spec.name}", f"$JS.API.STREAM.INFO.{spec.name}"))
        if spec.owner == service:
            publish.extend(spec.subjects)
            publish.extend((f"$JS.API.STREAM.CREATE.{spec.name}", f"$JS.API.STREAM.UPDATE.{spec.name}"))
        if service in spec.readers or spec.owner == service:
            publish.extend(_read_permissions(spec.name))
    if service == "storage":
        publish.extend(ERASURE_MARKER_SUBJECTS)
        publish.extend(f"$JS.API.STREAM.MSG.DELETE.{stream}" for stream in ERASED_STREAMS)
        publish.append("$JS.API.STREAM.MSG.GET.PARKED")  # to find the parked copies of erased events
    if service == "patch-registry":
        subscribe.append(HEARTBEATS_FILTER)
        publish.append(PATCH_SECURITY_EVENTS)
    return Permissions(publish=tuple(dict.fromkeys(publish)), subscribe=tuple(subscribe))


# Which peers (by certificate name) may call each internal gRPC service. The platform identity
# is the operator's tooling (`parley up`, `parley status`, admin commands).
GRPC_CALLERS: dict[str, tuple[str, ...]] = {
    "auth": ("gateway", PLATFORM_USER),
    "messaging": ("gateway", PLATFORM_USER),
    # Services read the archive to rebuild state older than JetStream retention (issue 5).
    "storage": ("gateway", PLATFORM_USER, "auth", "messaging", "patch-registry"),
    "patch-registry": ("gateway", PLATFORM_USER),
    "gateway": (),
}
