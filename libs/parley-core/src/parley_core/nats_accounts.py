"""The NATS accounts and each user's permissions, derived from the streams and consumers that
parley_core.topology declares (natsconf renders them into the server's configuration).

Each service is its own NATS account: JetStream and every stream live in one account no client
logs into, and a service reaches them only through imports of exactly the subjects it may
publish there; its user's permissions are a second layer beside the imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley_core.topology import (
    CONSUMERS,
    HEARTBEAT_READER,
    HEARTBEATS_FILTER,
    OWNER_DELETED_STREAMS,
    PARKED_DELETER,
    PLATFORM_USER,
    SERVICES,
    SIEM_CONSUMERS,
    STREAMS,
    ConsumerSpec,
    heartbeat_subject,
    inbox_prefix,
    reads,
)

# The NATS accounts. The streams' account holds JetStream and exports to the others; nobody logs
# into it, so no subscription there gives a push consumer the interest it needs to deliver onto a
# stream's subject. The platform identity's account imports everything (the operator's tools).
STREAMS_ACCOUNT = "PARLEY_STREAMS"
JS_API = "$JS.API"
# JetStream's advisories in the streams' account that the platform's consumer guard reads (every
# API call and who made it, consumers deleted; parley_core.consumer_guard): imported, and no others.
JS_API_AUDIT = "$JS.EVENT.ADVISORY.API"
JS_CONSUMER_DELETED = "$JS.EVENT.ADVISORY.CONSUMER.DELETED.>"
JS_ADVISORIES = (JS_API_AUDIT, JS_CONSUMER_DELETED)
# Where a service's account reaches the streams' JetStream API (its imports' local name): apart
# from $JS.API, which in an account without JetStream of its own answers "not enabled".
SERVICE_JS_API = "$PARLEY.JS.API"
# How long the streams' account routes JetStream's answers back to an asker: a pull or a batched
# direct get answers with several messages, so every API answer stays routable this long.
JS_RESPONSE_THRESHOLD = "60s"


def account_of(user: str) -> str:
    """The NATS account a user (a service or the platform identity) logs into."""
    return "PARLEY_" + user.upper().replace("-", "_")


def js_api_prefix(user: str) -> str:
    """The JetStream API prefix of the user's connection (nats-py's `jetstream(prefix=...)`)."""
    return JS_API if user == PLATFORM_USER else SERVICE_JS_API


def local_subject(user: str, subject: str) -> str:
    """A subject of the streams' account as the user's account names it (its import's `to`)."""
    if subject.startswith(JS_API + "."):
        return js_api_prefix(user) + subject.removeprefix(JS_API)
    return subject


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()  # wins over publish: other services' consumers


def _stream_read(stream: str, *, makes_consumers: bool = True) -> list[str]:
    """Read a whole stream: its state, any message, and consumers of the service's own making.

    A consumer is created only through the API subject that names it
    ($JS.API.CONSUMER.CREATE.<stream>.<name>[.<filter>]): the legacy forms are refused, because
    the ephemeral one takes the name from the request body, where no permission can see it (with
    it, any reader could rewrite another service's durable consumer). Ephemeral consumers get
    random, unlisted names (no CONSUMER.LIST or NAMES permission), and are never deleted by a
    service: the server drops them once their subscriber is gone. How many a service keeps is
    the platform's consumer guard's to check (parley_core.consumer_guard); a service that keeps
    flooding loses `makes_consumers` (quarantined) until an operator lifts it.
    """
    create = [f"$JS.API.CONSUMER.CREATE.{stream}.*", f"$JS.API.CONSUMER.CREATE.{stream}.*.>"]
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        *(create if makes_consumers else []),
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",  # flow control of ordered (push) consumers
    ]


def _own_durable(spec: ConsumerSpec) -> list[str]:
    """Create (with its declared filter only), inspect, pull from, acknowledge and delete it."""
    create = f"$JS.API.CONSUMER.CREATE.{spec.stream}.{spec.durable}"
    return [
        create if spec.filter_subject == ">" else f"{create}.{spec.filter_subject}",
        f"$JS.API.CONSUMER.INFO.{spec.stream}.{spec.durable}",
        f"$JS.API.CONSUMER.DELETE.{spec.stream}.{spec.durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}",
        f"$JS.ACK.{spec.stream}.{spec.durable}.>",
    ]


def _others_durable(spec: ConsumerSpec) -> list[str]:
    """Every API call on another service's durable (create = rewrite, info, delete, pause...)."""
    return [f"$JS.API.CONSUMER.*.{spec.stream}.{spec.durable}", f"$JS.API.CONSUMER.*.{spec.stream}.{spec.durable}.>"]


def permissions_for(service: str, *, quarantined: bool = False) -> Permissions:
    """Least-privilege NATS permissions of one service's user, as its own account names the
    subjects (its JetStream API under SERVICE_JS_API): a second layer beside its imports, which
    cannot refuse another service's durable inside a wildcard. Quarantined: no consumer but its
    declared durables (see streams_reached)."""
    if service == PLATFORM_USER:
        return Permissions(publish=(">",), subscribe=(">",))
    reached = streams_reached(service, quarantined=quarantined)
    return Permissions(
        publish=(heartbeat_subject(service, "*"), *(local_subject(service, s) for s in reached.publish)),
        subscribe=reached.subscribe,
        publish_deny=tuple(local_subject(service, s) for s in reached.publish_deny),
    )


def imports_of(user: str, *, quarantined: bool = False) -> tuple[str, ...]:
    """The subjects of the streams' account a user's account imports: for a service exactly those
    it may publish there; for the platform identity every stream's subjects and the whole API."""
    if user == PLATFORM_USER:
        return ("parley.>", f"{JS_API}.>", "$JS.ACK.>", "$JS.FC.>")
    return streams_reached(user, quarantined=quarantined).publish


def streams_reached(service: str, *, quarantined: bool = False) -> Permissions:
    """What one service may do in the streams' account, derived from STREAMS and CONSUMERS, as that
    account names the subjects ($JS.API...); subscribe: its own account's subjects.

    A quarantined service (its credential kept flooding a stream with consumers: the platform's
    consumer guard put it there, `parley consumers lift` takes it out) makes no consumer but its
    declared durables, whose create subjects name them in full and so cannot multiply."""
    if service not in SERVICES:
        raise KeyError(f"unknown service {service!r}")
    publish: list[str] = ["$JS.API.INFO", f"parley.parked.{service}.>"]
    subscribe: list[str] = [f"{inbox_prefix(service)}.>"]
    deny: list[str] = []
    for spec in STREAMS:
        if spec.owner == "*":
            # Any service may create the shared parking stream; what it may publish there is
            # limited to its own parley.parked.<service>.> subjects above.
            publish.extend((f"$JS.API.STREAM.CREATE.{spec.name}", f"$JS.API.STREAM.INFO.{spec.name}"))
        if spec.owner == service:
            # Create it where it is missing (a service started alone), never re-configure it: a
            # stream's settings are the platform's (`parley up`). Its owner could otherwise source
            # any other stream into its own and read it (MSG into PATCH), or shorten its limits so
            # events go before storage archives them. Creating an existing stream with other
            # settings is refused by the server.
            publish.extend(spec.subjects)
            publish.append(f"$JS.API.STREAM.CREATE.{spec.name}")
        if reads(service, spec):
            publish.extend(_stream_read(spec.name, makes_consumers=not quarantined))
        if spec.owner == service and spec.name in OWNER_DELETED_STREAMS:
            publish.append(f"$JS.API.STREAM.MSG.DELETE.{spec.name}")  # on a due fact it checked
    for consumer in (*CONSUMERS, *SIEM_CONSUMERS):
        if consumer.service == service:
            publish.extend(_own_durable(consumer))
        else:
            deny.extend(_others_durable(consumer))
    if service == PARKED_DELETER:
        # The parked copies of events that left the log: found by their origin headers, deleted.
        publish.extend(("$JS.API.STREAM.MSG.GET.PARKED", "$JS.API.STREAM.MSG.DELETE.PARKED"))
    if service == HEARTBEAT_READER:
        subscribe.append(HEARTBEATS_FILTER)
    return Permissions(
        publish=tuple(dict.fromkeys(publish)), subscribe=tuple(subscribe), publish_deny=tuple(dict.fromkeys(deny))
    )
