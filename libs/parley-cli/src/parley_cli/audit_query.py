"""`parley --as AUDITOR audit query`: archived events by actor, target and time range.

Storage answers QueryAudit only for an access token with the security-auditor role
(parley_storage.access). The CLI reaches storage over mutual TLS with the platform identity, as
the operator's commands do, and presents the auditor's saved login; usernames (given as actor or
target, and shown for the user ids in the answer) come from auth's directory, asked with the
platform identity, since the auditor's role may not look people up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from parley.auth.v1.events_pb2 import SecurityEventRecorded
from parley.storage.v1 import storage_pb2
from parley.storage.v1.events_pb2 import (
    AnomalyDetected,
    SessionRevocationDue,
    SessionStepUpDue,
    SourceSlowdownDue,
)

from parley_cli.admin import account_of, usernames
from parley_cli.arguments import command
from parley_cli.layout import utc_second
from parley_cli.privacy import _archive, looks_like_id
from parley_cli.signin import signed_in
from parley_cli.terminal import shown
from parley_cli.wording import counted
from parley_client import ParleyError
from parley_core.actor import Actor
from parley_core.envelope import UnknownEventType, decode, open_payload

PAGE = 1000  # storage's largest page
MAX_EVENTS = 100_000
TIMEOUT_S = 60.0
SECURITY_RECORD = SecurityEventRecorded.DESCRIPTOR.full_name


def instant_ns(text: str, option: str) -> int:
    """An ISO 8601 date or time (UTC unless it names a zone) as Unix nanoseconds; "" is 0."""
    if not text:
        return 0
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"{option} {text!r} is not a date or time: give e.g. 2026-12-01 or 2026-12-01T09:30") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    if not 0 < ns < 2**63:  # what the archive's nanosecond times hold: 1970 to 2262
        raise SystemExit(f"{option} {text!r} is outside 1970-01-01 .. 2262-04-11")
    return ns


async def user_id_or_raw(args: argparse.Namespace, name: str, option: str) -> str:
    """A username's user id; anything else (an id, `user:ID`, `service:NAME`) as given."""
    if not name or ":" in name:
        return name
    try:
        return str((await account_of(args, name)).user_id)
    except ParleyError as exc:
        if exc.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise
    # Not a username (any more): an id. Said unless it looks like one, since an erased account
    # is found by its id only.
    if not looks_like_id(name):
        print(f"note: no account is named {name!r}; {option} {name!r} is taken as an id", file=sys.stderr)
    return name


def _request(args: argparse.Namespace, actor: str, target: str) -> storage_pb2.QueryAuditRequest:
    since, until = instant_ns(args.since, "--since"), instant_ns(args.until, "--until")
    if since and until and until <= since:
        raise SystemExit(f"--until {args.until} is not after --since {args.since}")
    return storage_pb2.QueryAuditRequest(actor=actor, target=target, since_ns=since, until_ns=until)


def opened(event: storage_pb2.ArchivedEvent) -> Message | None:
    """An archived event's payload, for the kinds this view summarises; None for other events
    and rows that do not open (erased, unreadable, withheld, of a type not loaded here)."""
    if event.event_type not in SUMMARIES or event.erased or event.unreadable or event.withheld:
        return None
    try:
        return open_payload(decode(event.envelope))
    except (DecodeError, UnknownEventType):
        return None


@dataclass(frozen=True)
class Summary:
    """What an event says beyond its type and actor: a text for the line, fields for --json."""

    key: str  # the JSON member its fields go in
    text: str  # appended to the line; escaped by whoever builds it
    fields: dict[str, object]


def _security_summary(record: SecurityEventRecorded) -> Summary:
    """Its kind, the client address it came from, its detail; escaped, since a detail may quote
    what a user typed (a reason, a device name)."""
    text = f"  {shown(record.kind)}"
    if record.source:
        text += f" from {shown(record.source)}"
    if record.detail:
        text += f": {shown(record.detail)}"
    fields = ("kind", "source", "detail", "username", "user_id", "locked_until_unix", "chain_index")
    return Summary("security", text, {name: getattr(record, name) for name in fields})


def _anomaly_summary(found: AnomalyDetected) -> Summary:
    """A detector's finding: which rule, how far over its threshold, why, and what it asked for."""
    text = f"  {shown(found.kind)} score {found.score:.1f}, response {shown(found.response)}: {shown(found.why)}"
    fields = ("kind", "subject", "score", "why", "response", "user_id", "session_id", "source")
    evidence = {"evidence": dict(found.evidence), "trigger_event_ids": list(found.trigger_event_ids)}
    return Summary("anomaly", text, {**{name: getattr(found, name) for name in fields}, **evidence})


def _due_summary(due: SessionRevocationDue | SessionStepUpDue | SourceSlowdownDue) -> Summary:
    """A response the detector asked of auth: what to do to which session or address, and why."""
    if isinstance(due, SourceSlowdownDue):
        until = utc_second(due.until_unix)
        what = f"slow {shown(due.source)} until {until}"
    else:
        verb = "revoke" if isinstance(due, SessionRevocationDue) else "step up"
        what = f"{verb} session {shown(due.session_id)}"
    fields = {f.name: getattr(due, f.name) for f in due.DESCRIPTOR.fields}
    return Summary("response", f"  {what}: {shown(due.reason)}", fields)


# Event types whose content the query shows, each with its summary.
SUMMARIES: dict[str, Callable[[Any], Summary]] = {
    SECURITY_RECORD: _security_summary,
    AnomalyDetected.DESCRIPTOR.full_name: _anomaly_summary,
    **{due.DESCRIPTOR.full_name: _due_summary for due in (SessionRevocationDue, SessionStepUpDue, SourceSlowdownDue)},
}


def summary(event: storage_pb2.ArchivedEvent) -> Summary | None:
    payload = opened(event)
    return None if payload is None else SUMMARIES[event.event_type](payload)


def _line(event: storage_pb2.ArchivedEvent, names: dict[str, str]) -> str:
    when = datetime.fromtimestamp(event.occurred_at_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
    actor = shown(names.get(event.actor, event.actor))
    target = shown(names.get(event.aggregate_id, event.aggregate_id))
    erased = " (erased: content unreadable)" if event.erased else ""
    said = summary(event)
    return (
        f"{when}  {event.stream}#{event.stream_seq}  {event.event_type.removeprefix('parley.')}  "
        f"{event.aggregate_type}:{target}  by {actor}{erased}{said.text if said else ''}"
    )


def _json(event: storage_pb2.ArchivedEvent, names: dict[str, str]) -> str:
    said = summary(event)
    return json.dumps(
        {
            "occurred_at": datetime.fromtimestamp(event.occurred_at_ns / 1e9, UTC).isoformat(),
            "stream": event.stream,
            "stream_seq": event.stream_seq,
            "event_id": event.event_id,
            "event_type": event.event_type,
            "aggregate_type": event.aggregate_type,
            "aggregate_id": event.aggregate_id,
            "aggregate_version": event.aggregate_version,
            "actor": event.actor,
            "actor_name": names.get(event.actor, ""),
            "erased": event.erased,
            "cursor": event.cursor,
            **({said.key: said.fields} if said else {}),
        }
    )


async def cmd_audit_query(args: argparse.Namespace) -> int:
    if not args.user:
        raise SystemExit(
            "audit queries are for a security auditor: `parley --as AUDITOR audit query ...` "
            "(log in first with `parley login AUDITOR`)"
        )
    if not 1 <= args.limit <= MAX_EVENTS:
        raise SystemExit(f"--limit is a number of events from 1 to {MAX_EVENTS}")
    if not 0 <= args.after < 2**64:
        raise SystemExit("--after is a cursor a previous query printed (a whole number from 0)")
    async with signed_in(args) as client:
        actor = await user_id_or_raw(args, args.actor, "--actor")
        request = _request(args, actor, await user_id_or_raw(args, args.target, "--target"))
        events: list[storage_pb2.ArchivedEvent] = []
        more, cursor = False, args.after
        async with _archive(args) as archive:
            while len(events) < args.limit:
                request.after_cursor, request.limit = cursor, min(PAGE, args.limit - len(events))
                metadata = [("authorization", f"Bearer {await client.current_token()}")]  # renewed if need be
                page = await archive.QueryAudit(request, metadata=metadata, timeout=TIMEOUT_S)
                events.extend(page.events)
                cursor = page.events[-1].cursor if page.events else cursor
                more = page.has_more
                if not more or not page.events:
                    break
    people = {Actor.parse(e.actor).user_id for e in events}
    people |= {e.aggregate_id for e in events if e.aggregate_type == "user"}
    people = {p for p in people if looks_like_id(p)}  # user ids, not "service:…" or "platform"
    found = await usernames(args, sorted(people))  # the auditor may not look people up; the operator's tooling may
    names = {**found, **{str(Actor.user(user_id)): name for user_id, name in found.items()}}
    show = _json if args.json else _line
    for event in events:
        print(show(event, names))
    if not args.json:
        tail = f"; more follow: add --after {cursor}" if more else ""
        print(f"{counted(len(events), 'event')}{tail}")
    return 0


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = command(
        commands,
        "query",
        cmd_audit_query,
        help="archived events by actor, target and time range (a security auditor, with --as)",
        description="The archive's events, oldest first, filtered by who acted, what they were about and "
        "when; only a security auditor may ask (`parley --as AUDITOR audit query`). Times are UTC unless "
        "they name a zone.",
    )
    query.add_argument("--actor", default="", help="who acted: a username, a user id, or service:NAME")
    query.add_argument("--target", default="", help="what about: a username, or an aggregate id (user, channel)")
    query.add_argument("--since", default="", help="from this date or time on (ISO 8601, e.g. 2026-12-01)")
    query.add_argument("--until", default="", help="before this date or time (ISO 8601)")
    query.add_argument("--limit", type=int, default=100, help=f"at most this many events (1..{MAX_EVENTS})")
    query.add_argument("--after", type=int, default=0, metavar="CURSOR", help="continue after this cursor")
    query.add_argument("--json", action="store_true", help="one JSON object per event (no summary line)")
