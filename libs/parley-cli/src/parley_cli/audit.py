"""`parley audit verify`: check the signed hash chain of the audit records in the SQL archive.

The records are read from storage's archive (the store someone with database access could
edit); the verification keys come from the live AUTH stream in JetStream (a different trust
domain), or, offline, from the archive itself with --keys-from-archive.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import SecurityEventRecorded, SigningKeyPublished

from parley_cli.state import PlatformNotRunning, load_running_state
from parley_core.audit import Finding, StoredRecord, verify_chain
from parley_core.envelope import decode, open_payload
from parley_core.nats_connect import connect_nats
from parley_core.natsconf import ensure_nats_passwords
from parley_core.topology import PLATFORM_USER, SIGNING_KEYS_FILTER

SIGNING_KEY_TYPE = SigningKeyPublished.DESCRIPTOR.full_name


def read_archived_records(archive: Path) -> list[StoredRecord]:
    """Every record of the SEC stream in the archive, in stream order (read only)."""
    with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT stream_seq, envelope FROM events WHERE stream = 'SEC' ORDER BY stream_seq").fetchall()
    records = []
    for seq, envelope in rows:
        payload = open_payload(decode(bytes(envelope)))
        if isinstance(payload, SecurityEventRecorded):
            records.append(StoredRecord(position=int(seq), record=payload))
    return records


def keys_from_archive(archive: Path) -> dict[str, Ed25519PublicKey]:
    with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT envelope FROM events WHERE event_type = ?", (SIGNING_KEY_TYPE,)).fetchall()
    return _keys(open_payload(decode(bytes(row[0]))) for row in rows)


async def live_chain_head(*, nats_url: str, password: str, ca_cert: Path) -> int:
    """chain_index of the newest record on the SEC stream (0 when there is none)."""
    nc = await connect_nats(
        url=nats_url, user=PLATFORM_USER, password=password, ca_cert=ca_cert, name="parley-audit", allow_reconnect=False
    )
    try:
        js = nc.jetstream()
        last = (await js.stream_info("SEC")).state.last_seq
        if not last:
            return 0
        payload = open_payload(decode((await js.get_msg("SEC", last)).data or b""))
        return int(payload.chain_index) if isinstance(payload, SecurityEventRecorded) else 0
    finally:
        await nc.close()


async def keys_from_stream(*, nats_url: str, password: str, ca_cert: Path) -> dict[str, Ed25519PublicKey]:
    nc = await connect_nats(
        url=nats_url, user=PLATFORM_USER, password=password, ca_cert=ca_cert, name="parley-audit", allow_reconnect=False
    )
    try:
        js = nc.jetstream()
        sub = await js.subscribe(SIGNING_KEYS_FILTER, stream="AUTH", ordered_consumer=True)
        payloads = []
        try:
            while True:
                msg = await sub.next_msg(timeout=1.0)
                payloads.append(open_payload(decode(msg.data)))
                if msg.metadata.num_pending == 0:
                    break
        except TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
        return _keys(payloads)
    finally:
        await nc.close()


def _keys(payloads: Iterable[Message]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for payload in payloads:
        if isinstance(payload, SigningKeyPublished):
            keys[payload.key_id] = Ed25519PublicKey.from_public_bytes(payload.public_key)
    return keys


def report(records: list[StoredRecord], findings: list[Finding]) -> str:
    if not findings:
        last = records[-1].record.chain_index if records else 0
        return f"audit chain intact: {len(records)} records, #1..#{last}, every signature valid"
    lines = [f"audit chain TAMPERED: {len(findings)} finding(s) over {len(records)} records"]
    lines.extend(f"  {finding}" for finding in sorted(findings, key=lambda f: (f.chain_index, f.kind)))
    return "\n".join(lines)


def _archive(args: argparse.Namespace) -> Path:
    archive: Path = args.archive or args.data_dir / "storage" / "archive.db"
    if not archive.exists():
        raise SystemExit(f"no archive at {archive}; give --archive PATH")
    return archive


def _nats_url_and_password(data_dir: Path) -> tuple[str, str]:
    try:
        state = load_running_state(data_dir)
    except PlatformNotRunning as exc:
        raise SystemExit(f"{exc}; or verify offline with --keys-from-archive (keys from the same store)") from None
    passwords = ensure_nats_passwords(data_dir / "secrets" / "nats-passwords.json", [PLATFORM_USER])
    return str(state["nats_url"]), passwords[PLATFORM_USER]


async def cmd_verify(args: argparse.Namespace) -> int:
    archive = _archive(args)
    head: int | None = None
    if args.keys_from_archive:
        keys = keys_from_archive(archive)
    else:
        url, password = _nats_url_and_password(args.data_dir)
        ca_cert = args.data_dir / "pki" / "ca.crt"
        head = await live_chain_head(nats_url=url, password=password, ca_cert=ca_cert)
        keys = await keys_from_stream(nats_url=url, password=password, ca_cert=ca_cert)
    records = read_archived_records(archive)
    findings = verify_chain(records, keys, expected_last_index=head)
    print(report(records, findings))
    return 1 if findings else 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = sub.add_parser("audit", help="the tamper-evident audit trail")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = commands.add_parser("verify", help="check the audit chain in the archive; exit 1 when tampered")
    verify.add_argument("--archive", type=Path, help="SQLite archive (default: <data-dir>/storage/archive.db)")
    verify.add_argument(
        "--keys-from-archive", action="store_true", help="take the verification keys from the archive too (offline)"
    )
    verify.set_defaults(run=cmd_verify)
