"""`parley audit verify`: check the signed hash chain of the audit records in the archive
(`parley audit query`, the auditor's search of the archive, is audit_query.py).

The records are read back from storage's archive (the long-term store, which someone with
database access could edit) through its StorageArchiveService as the operator; the
verification keys and the chain's head come from the live JetStream streams (a different trust
domain), or, with --keys-from-archive, the keys from the archived AUTH stream.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import SecurityEventRecorded, SigningKeyPublished
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_cli import audit_query
from parley_cli.state import PlatformNotRunning, load_running_state
from parley_client import ParleyError
from parley_core.audit import Finding, StoredRecord, verify_chain
from parley_core.envelope import decode, open_payload
from parley_core.nats_connect import connect_nats_once
from parley_core.natsconf import ensure_nats_passwords
from parley_core.runner import secure_channel
from parley_core.topology import PLATFORM_USER, SIGNING_KEYS_FILTER

PAGE = 1000
TIMEOUT_S = 30.0


async def archived_payloads(
    storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub, stream: str
) -> list[tuple[int, Message]]:
    """Every archived event of `stream` as (stream sequence, payload), erased ones left out."""
    found: list[tuple[int, Message]] = []
    after = 0
    while True:
        page = await storage.ReadArchivedStream(
            storage_pb2.ReadArchivedStreamRequest(stream=stream, after_seq=after, limit=PAGE), timeout=TIMEOUT_S
        )
        for event in page.events:
            after = event.stream_seq
            if not event.erased:
                found.append((int(event.stream_seq), open_payload(decode(event.envelope))))
        if not page.has_more:
            return found


async def archived_records(storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub) -> list[StoredRecord]:
    return [
        StoredRecord(position=seq, record=payload)
        for seq, payload in await archived_payloads(storage, "SEC")
        if isinstance(payload, SecurityEventRecorded)
    ]


async def archived_keys(storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub) -> dict[str, Ed25519PublicKey]:
    return signing_keys(payload for _, payload in await archived_payloads(storage, "AUTH"))


async def live_chain_head(*, nats_url: str, password: str, ca_cert: Path) -> int:
    """chain_index of the newest record on the SEC stream (0 when there is none)."""
    nc = await connect_nats_once(
        url=nats_url, user=PLATFORM_USER, password=password, ca_cert=ca_cert, name="parley-audit"
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
    nc = await connect_nats_once(
        url=nats_url, user=PLATFORM_USER, password=password, ca_cert=ca_cert, name="parley-audit"
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
        return signing_keys(payloads)
    finally:
        await nc.close()


def signing_keys(payloads: Iterable[Message]) -> dict[str, Ed25519PublicKey]:
    """Published keys, retired ones included: a retired key still signed the records of its time."""
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


def _platform(data_dir: Path) -> tuple[str, str, str]:
    """Storage's address, the NATS URL and the platform user's NATS password."""
    try:
        state = load_running_state(data_dir)
    except PlatformNotRunning as exc:
        raise SystemExit(f"{exc}; the verifier reads the archive through the storage service") from None
    passwords = ensure_nats_passwords(data_dir / "secrets" / "nats-passwords.json", [PLATFORM_USER])
    return str(state["services"]["storage"]["address"]), str(state["nats_url"]), passwords[PLATFORM_USER]


async def cmd_verify(args: argparse.Namespace) -> int:
    from parley_core.pki import ensure_pki

    address, nats_url, password = _platform(args.data_dir)
    ca_cert = args.data_dir / "pki" / "ca.crt"
    pki = ensure_pki(args.data_dir / "pki", [PLATFORM_USER])
    channel = secure_channel(pki, identity=PLATFORM_USER, address=address, peer="storage")
    try:
        storage = storage_pb2_grpc.StorageArchiveServiceStub(channel)
        records = await archived_records(storage)
        keys = await archived_keys(storage) if args.keys_from_archive else None
    except grpc.aio.AioRpcError as exc:
        raise ParleyError(exc.code(), f"storage refused to read the archive: {exc.details()}") from None
    finally:
        await channel.close()
    head = await live_chain_head(nats_url=nats_url, password=password, ca_cert=ca_cert)
    if keys is None:
        keys = await keys_from_stream(nats_url=nats_url, password=password, ca_cert=ca_cert)
    findings = verify_chain(records, keys, expected_last_index=head)
    print(report(records, findings))
    return 1 if findings else 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = sub.add_parser("audit", help="the tamper-evident audit trail")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = commands.add_parser("verify", help="check the audit chain in the archive; exit 1 when tampered")
    verify.add_argument(
        "--keys-from-archive", action="store_true", help="take the verification keys from the archive (weaker)"
    )
    verify.set_defaults(run=cmd_verify)
    audit_query.add_command(commands)
