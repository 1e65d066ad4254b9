"""`parley audit verify` and `parley audit checkpoint`: the signed hash chain of the audit records
(`parley audit query`, the auditor's search of the archive, is audit_query.py).

The records are read back from storage's archive (the long-term store, which someone with
database access could edit) through its StorageArchiveService as the operator; the
verification keys and the chain's head come from the live JetStream streams (a different trust
domain), or, with --keys-from-archive, the keys from the archived AUTH stream. A checkpoint
(the signed head, kept by the operator outside the data folder) also catches a rewrite by
someone holding every key in secrets/.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_cli import audit_query
from parley_cli.arguments import command, command_group
from parley_cli.state import PlatformNotRunning, load_running_state
from parley_client import ParleyError
from parley_core import audit_archive
from parley_core.audit import (
    Checkpoint,
    CheckpointInvalid,
    Finding,
    StoredRecord,
    TrustedKeys,
    trusted_keys,
    verify_chain,
)
from parley_core.audit_archive import archived_trusted_keys, audit_rows
from parley_core.audit_checkpoints import checkpoint_file_name, checkpoint_folder
from parley_core.audit_log import ChainHead, chain_head
from parley_core.envelope import decode, open_payload
from parley_core.files import ensure_private_dir
from parley_core.grpc_channel import secure_channel
from parley_core.nats_connect import connect_nats_once
from parley_core.natsconf import platform_nats_password
from parley_core.topology import AUDIT_KEYS_FILTER, PLATFORM_USER, SIGNING_KEYS_FILTER

TIMEOUT_S = 30.0


async def archived_events(
    storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub, stream: str
) -> list[storage_pb2.ArchivedEvent]:
    """Every archived row of `stream`, as storage gives it (erased and unreadable ones included)."""

    async def read(request: storage_pb2.ReadArchivedStreamRequest) -> storage_pb2.ArchivedEventsPage:
        return await storage.ReadArchivedStream(request, timeout=TIMEOUT_S)

    return await audit_archive.archived_events(read, stream)


async def archived_records(storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub) -> list[StoredRecord]:
    return audit_rows(await archived_events(storage, "SEC"))


async def archived_keys(storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub) -> TrustedKeys:
    return archived_trusted_keys(await archived_events(storage, "AUTH"))


async def keys_from_stream(*, nats_url: str, password: str, ca_cert: Path) -> TrustedKeys:
    nc = await connect_nats_once(
        url=nats_url, user=PLATFORM_USER, password=password, ca_cert=ca_cert, name="parley-audit"
    )
    try:
        js = nc.jetstream()
        published: list[Message] = []
        for subjects in (SIGNING_KEYS_FILTER, AUDIT_KEYS_FILTER):
            sub = await js.subscribe(subjects, stream="AUTH", ordered_consumer=True)
            try:
                while True:
                    msg = await sub.next_msg(timeout=1.0)
                    published.append(open_payload(decode(msg.data)))
                    if msg.metadata.num_pending == 0:
                        break
            except TimeoutError:
                pass
            finally:
                await sub.unsubscribe()
        return trusted_keys(published)
    finally:
        await nc.close()


async def live_head(*, nats_url: str, password: str, ca_cert: Path) -> ChainHead:
    """The newest audit record on the live SEC stream signed with a published key (not
    necessarily the stream's newest message: nor a forged record)."""
    keys = await keys_from_stream(nats_url=nats_url, password=password, ca_cert=ca_cert)
    nc = await connect_nats_once(
        url=nats_url, user=PLATFORM_USER, password=password, ca_cert=ca_cert, name="parley-audit"
    )
    try:
        return await chain_head(nc.jetstream(), keys)
    finally:
        await nc.close()


async def live_chain_head(*, nats_url: str, password: str, ca_cert: Path) -> int:
    """chain_index of the newest record on the SEC stream (0 when there is none)."""
    head = await live_head(nats_url=nats_url, password=password, ca_cert=ca_cert)
    return int(head.record.chain_index) if head.record is not None else 0


def report(records: Sequence[StoredRecord], findings: Sequence[Finding], checkpoints: Sequence[Checkpoint] = ()) -> str:
    if not findings:
        last = max((r.chain_index for r in records), default=0)
        line = f"audit chain intact: {len(records)} records, #1..#{last}, every signature valid"
        if checkpoints:
            line += "; records up to " + ", ".join(f"#{c.chain_index} match {c.name}" for c in checkpoints)
        return line
    lines = [f"audit chain TAMPERED: {len(findings)} finding(s) over {len(records)} records"]
    lines.extend(f"  {finding}" for finding in sorted(findings, key=lambda f: (f.chain_index, f.kind)))
    return "\n".join(lines)


def read_checkpoints(paths: Sequence[Path]) -> list[Checkpoint]:
    checkpoints = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SystemExit(f"error: cannot read the checkpoint {path}: {exc.strerror}") from None
        try:
            checkpoints.append(Checkpoint.from_json(text, source=f"checkpoint {path}"))
        except CheckpointInvalid as exc:
            raise SystemExit(f"error: {exc}") from None
    return checkpoints


def _platform(data_dir: Path) -> tuple[str, str, str]:
    """Storage's address, the NATS URL and the platform user's NATS password."""
    try:
        state = load_running_state(data_dir)
    except PlatformNotRunning as exc:
        raise SystemExit(f"{exc}; the audit commands read the running platform's streams and archive") from None
    return str(state["services"]["storage"]["address"]), str(state["nats_url"]), platform_nats_password(data_dir)


@dataclass(frozen=True)
class AuditVerdict:
    """What `parley audit verify` found: the archived records, what is wrong with them, the live head."""

    records: list[StoredRecord]
    findings: list[Finding]
    head: ChainHead


def storage_channel(data_dir: Path) -> grpc.aio.Channel:
    """Storage's archive API as the platform identity (mutual TLS), the operator's reads."""
    from parley_core.pki import ensure_pki

    address, _, _ = _platform(data_dir)
    pki = ensure_pki(data_dir / "pki", [PLATFORM_USER])
    return secure_channel(pki, identity=PLATFORM_USER, address=address, peer="storage")


async def verify_audit(
    data_dir: Path, *, keys_from_archive: bool = False, checkpoints: Sequence[Checkpoint] = ()
) -> AuditVerdict:
    """The archive's chain checked against the live SEC stream's head and the keys on the AUTH stream."""
    _, nats_url, password = _platform(data_dir)
    nats: dict[str, Any] = {"nats_url": nats_url, "password": password, "ca_cert": data_dir / "pki" / "ca.crt"}
    channel = storage_channel(data_dir)
    try:
        storage = storage_pb2_grpc.StorageArchiveServiceStub(channel)
        records = await archived_records(storage)
        keys = await archived_keys(storage) if keys_from_archive else None
    except grpc.aio.AioRpcError as exc:
        raise ParleyError(exc.code(), f"storage refused to read the archive: {exc.details()}") from None
    finally:
        await channel.close()
    head = await live_head(**nats)
    if keys is None:
        keys = await keys_from_stream(**nats)
    # The live head is a checkpoint too: an archive rewritten on its own no longer ends in it.
    live = [Checkpoint.of(head.record, source="the live SEC stream")] if head.record is not None else []
    expected = head.record.chain_index if head.record is not None else 0
    findings = verify_chain(records, keys, expected_last_index=expected, checkpoints=[*live, *checkpoints])
    return AuditVerdict(records=list(records), findings=list(findings), head=head)


async def cmd_verify(args: argparse.Namespace) -> int:
    checkpoints = read_checkpoints(args.checkpoint)
    verdict = await verify_audit(args.data_dir, keys_from_archive=args.keys_from_archive, checkpoints=checkpoints)
    print(report(verdict.records, verdict.findings, checkpoints))
    return 1 if verdict.findings else 0


def write_checkpoint(out: Path, checkpoint: Checkpoint, data_dir: Path) -> bool:
    """Writes the checkpoint to a new file; True when that file is inside the data folder."""
    try:
        with out.open("x") as file:  # never over another checkpoint
            file.write(checkpoint.to_json() + "\n")
    except FileExistsError:
        raise SystemExit(f"error: {out} exists; keep every checkpoint: name a new file") from None
    except OSError as exc:
        raise SystemExit(f"error: cannot write {out}: {exc.strerror}") from None
    return out.resolve().is_relative_to(data_dir.resolve())


def same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


async def cmd_checkpoint(args: argparse.Namespace) -> int:
    folder = checkpoint_folder(args.data_dir)
    out: Path = args.out or folder / checkpoint_file_name(datetime.now(UTC))
    if args.out is None:
        ensure_private_dir(folder)
    _, nats_url, password = _platform(args.data_dir)
    nats = {"nats_url": nats_url, "password": password, "ca_cert": args.data_dir / "pki" / "ca.crt"}
    head = await live_head(**nats)
    if head.record is None:
        raise SystemExit("error: the SEC stream holds no audit record yet: nothing to checkpoint")
    taken_at = datetime.now(UTC).isoformat(timespec="seconds")
    checkpoint = Checkpoint.of(head.record, taken_at=taken_at)
    keys = await keys_from_stream(**nats)
    # A head still signed with a token key (no record since the upgrade) is checkpointed all the same.
    if not keys.signed(checkpoint.key_id, checkpoint.signature, checkpoint.record_hash, token_allowed=True):
        raise SystemExit(
            f"error: the newest audit record (#{checkpoint.chain_index}) is not signed by a published audit key;"
            " run `parley audit verify` before you checkpoint"
        )
    inside = write_checkpoint(out, checkpoint, args.data_dir)
    print(f"checkpoint of the audit chain at record #{checkpoint.chain_index} written to {out}")
    if same_folder(out.parent, folder):
        print("storage compares the archive with it: the console's Audit page and the compliance report show it")
    where, kept = ("keep a copy outside the data folder", "COPY") if inside else ("keep it", str(out))
    print(
        f"{where} where the platform's operators cannot change it: `parley audit verify --checkpoint {kept}` then "
        f"shows any rewrite of records #1..#{checkpoint.chain_index}, even by someone holding every key in secrets/"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    commands = command_group(sub, "audit", help="the tamper-evident audit trail")
    verify = command(commands, "verify", cmd_verify, help="check the audit chain in the archive; exit 1 when tampered")
    verify.add_argument(
        "--keys-from-archive", action="store_true", help="take the verification keys from the archive (weaker)"
    )
    verify.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a checkpoint from `parley audit checkpoint`: records up to it must be unchanged (repeatable)",
    )
    checkpoint = command(
        commands,
        "checkpoint",
        cmd_checkpoint,
        help="write the chain's signed head into the checkpoint folder storage compares the archive with "
        "(<data>/audit-checkpoints, or $PARLEY_STORAGE_AUDIT_CHECKPOINT_DIR), or to FILE",
    )
    checkpoint.add_argument(
        "--out", type=Path, metavar="FILE", help="a new file (never overwritten), not one in the checkpoint folder"
    )
    audit_query.add_command(commands)
