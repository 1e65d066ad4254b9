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
from datetime import UTC, datetime

import grpc
from google.protobuf.message import DecodeError
from parley.auth.v1.events_pb2 import SecurityEventRecorded
from parley.storage.v1 import storage_pb2

from parley_cli.admin import account_of, usernames
from parley_cli.privacy import _archive, looks_like_id
from parley_cli.terminal import shown
from parley_cli.wording import counted
from parley_client import ParleyError
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


def security_record(event: storage_pb2.ArchivedEvent) -> SecurityEventRecorded | None:
    """An audit record of SEC (a login that failed, a lockout, a role change...), read from the
    row's envelope; None for other events and rows that do not open."""
    if event.event_type != SECURITY_RECORD or event.erased or event.unreadable or event.withheld:
        return None
    try:
        payload = open_payload(decode(event.envelope))
    except (DecodeError, UnknownEventType):
        return None
    return payload if isinstance(payload, SecurityEventRecorded) else None


def _record_text(record: SecurityEventRecorded) -> str:
    """What the record says: its kind, the client address it came from, its detail; escaped,
    since a detail may quote what a user typed (a reason, a device name)."""
    text = f"  {shown(record.kind)}"
    if record.source:
        text += f" from {shown(record.source)}"
    if record.detail:
        text += f": {shown(record.detail)}"
    return text


def _line(event: storage_pb2.ArchivedEvent, names: dict[str, str]) -> str:
    when = datetime.fromtimestamp(event.occurred_at_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
    actor = shown(names.get(event.actor, event.actor))
    target = shown(names.get(event.aggregate_id, event.aggregate_id))
    erased = " (erased: content unreadable)" if event.erased else ""
    record = security_record(event)
    said = _record_text(record) if record is not None else ""
    return (
        f"{when}  {event.stream}#{event.stream_seq}  {event.event_type.removeprefix('parley.')}  "
        f"{event.aggregate_type}:{target}  by {actor}{erased}{said}"
    )


def _json(event: storage_pb2.ArchivedEvent, names: dict[str, str]) -> str:
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
            **_record_fields(event),
        }
    )


def _record_fields(event: storage_pb2.ArchivedEvent) -> dict[str, object]:
    """An audit record's own fields, as recorded (JSON escapes them)."""
    if (record := security_record(event)) is None:
        return {}
    fields = ("kind", "source", "detail", "username", "user_id", "locked_until_unix", "chain_index")
    return {"security": {name: getattr(record, name) for name in fields}}


async def cmd_audit_query(args: argparse.Namespace) -> int:
    from parley_cli.main import _client, _login_as  # main imports this module: resolve late

    if not args.user:
        raise SystemExit(
            "audit queries are for a security auditor: `parley --as AUDITOR audit query ...` "
            "(log in first with `parley login AUDITOR`)"
        )
    if not 1 <= args.limit <= MAX_EVENTS:
        raise SystemExit(f"--limit is a number of events from 1 to {MAX_EVENTS}")
    if not 0 <= args.after < 2**64:
        raise SystemExit("--after is a cursor a previous query printed (a whole number from 0)")
    async with _client(args) as client:
        await _login_as(args, client)
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
    people = {e.actor.removeprefix("user:") for e in events}  # auth writes user:ID, messaging ID
    people |= {e.aggregate_id for e in events if e.aggregate_type == "user"}
    people = {p for p in people if looks_like_id(p)}  # user ids, not "service:…" or "platform"
    found = await usernames(args, sorted(people))  # the auditor may not look people up; the operator's tooling may
    names = {**found, **{f"user:{user_id}": name for user_id, name in found.items()}}
    show = _json if args.json else _line
    for event in events:
        print(show(event, names))
    if not args.json:
        tail = f"; more follow: add --after {cursor}" if more else ""
        print(f"{counted(len(events), 'event')}{tail}")
    return 0


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = commands.add_parser(
        "query",
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
    query.set_defaults(run=cmd_audit_query)
