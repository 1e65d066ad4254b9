"""`parley patch …`, `parley advisories …` and `parley fleet`: the operator's side of patching.

Talks to the patch registry directly over mutual TLS as the platform identity (like `parley
status`), adding the `--as` user's access token for commands a person must take (publish,
plan, approve, pause, resume, roll back, import), so the registry knows who did what.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from parley.fleet.v1 import fleet_pb2, fleet_pb2_grpc
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from parley.storage.v1 import storage_pb2_grpc

from parley_cli.state import no_platform
from parley_cli.terminal import shown
from parley_cli.usernames import named, usernames
from parley_client import ParleyError
from parley_core.grpc_channel import secure_channel
from parley_core.pki import ensure_pki
from parley_core.topology import PLATFORM_USER

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner

FINISHED = ("done", "rolled_back")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns as wide as their widest cell; readable in a terminal and in a log."""
    cells = [[str(h) for h in headers], *[[shown(str(c)) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _when(unix: float) -> str:
    """To the millisecond: the audit orders steps that happen within the same second."""
    if not unix:
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _due(deadline: float, now: float) -> str:
    left = deadline - now
    if left < 0:
        return f"OVERDUE by {_span(-left)}"
    return f"in {_span(left)}"


def _span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


class RegistryConnection:
    def __init__(self, args: argparse.Namespace) -> None:
        data_dir: Path = args.data_dir
        # The first host's folder, or a joined host's that runs a registry of its own (`host join`
        # writes its front doors to host.json): the registry left when the first host is lost.
        state_path = next((p for p in (data_dir / "platform.json", data_dir / "host.json") if p.exists()), None)
        if state_path is None:
            raise no_platform(data_dir)
        services = json.loads(state_path.read_text()).get("services", {})
        if "patch-registry" not in services:
            raise SystemExit(f"no patch registry runs on the host of {data_dir}; use a folder of a host running one")
        pki = ensure_pki(data_dir / "pki", [PLATFORM_USER])
        address = services["patch-registry"]["address"]
        self.channel = secure_channel(pki, identity=PLATFORM_USER, address=address, peer="patch-registry")
        self.patch = patch_pb2_grpc.PatchServiceStub(self.channel)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(self.channel)
        # Storage's archive turns the user ids that roll-outs record into names (ids without it).
        self.storage_channel: grpc.aio.Channel | None = None
        self.storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub | None = None
        if "storage" in services:
            address = services["storage"]["address"]
            self.storage_channel = secure_channel(pki, identity=PLATFORM_USER, address=address, peer="storage")
            self.storage = storage_pb2_grpc.StorageArchiveServiceStub(self.storage_channel)
        self._args = args

    def token(self) -> tuple[tuple[str, str], ...]:
        user = self._args.user
        if not user:
            raise SystemExit("this command is taken by a person: name yourself with --as USER (after `parley login`)")
        path = Path(self._args.data_dir) / "cli" / f"{user.casefold()}.json"
        if not path.exists():
            raise SystemExit(f"{user} is not logged in here; run `parley login {user}`")
        return (("authorization", f"Bearer {json.loads(path.read_text())['access_token']}"),)

    async def call(self, method: Any, request: Any, *, as_user: bool = False, timeout: float = 30.0) -> Any:
        metadata = self.token() if as_user else ()
        try:
            return await method(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise ParleyError(error.code(), error.details() or error.code().name) from None

    async def names(self, rollouts: Sequence[patch_pb2.Rollout]) -> dict[str, str]:
        if self.storage is None:
            return {}
        ids = [i for r in rollouts for i in (r.planned_by, r.approved_by, *(a.actor for a in r.audit))]
        return await usernames(self.storage, ids)

    async def close(self) -> None:
        await self.channel.close()
        if self.storage_channel is not None:
            await self.storage_channel.close()


async def _with_registry(args: argparse.Namespace, work: Any) -> int:
    connection = RegistryConnection(args)
    try:
        code: int = await work(connection)
        return code
    finally:
        await connection.close()


def _print_rollout(rollout: patch_pb2.Rollout, names: dict[str, str], *, verdicts_from: int | None = None) -> None:
    """The view; with verdicts_from (--watch), each gate verdict from that one on, else the last."""
    print(f"roll-out {rollout.rollout_id}: {rollout.service} {rollout.from_version or '?'} -> {rollout.to_version}")
    print(f"state: {rollout.state}" + (f" ({shown(rollout.rollback_reason)})" if rollout.rollback_reason else ""))
    approved = f", approved by {named(rollout.approved_by, names)}" if rollout.approved_by else ""
    print(f"planned by {named(rollout.planned_by, names)}{approved}")
    if rollout.reverts:
        print(f"reverts roll-out {rollout.reverts}")
    if rollout.forced:
        print("FORCED over a canary this release failed before")
    if rollout.reason:
        print(f"reason: {shown(rollout.reason)}")
    if rollout.weights:
        print(f"each step: the new instance takes {'% -> '.join(map(str, rollout.weights))}% of callers, gated")
    total = len(rollout.old_instances)
    done = sum(1 for s in rollout.steps if s.drained)
    bar = "#" * done + "." * (total - done)
    print(f"progress: [{bar}] {done}/{total} instances replaced")
    if rollout.steps:
        rows = [
            (
                "canary" if i == 0 else f"step {i}",
                s.replaces_instance,
                s.new_instance or "-",
                s.gate,
                f"{s.weight}%" if s.weight else "-",
                "yes" if s.drained else "no",
            )
            for i, s in enumerate(rollout.steps)
        ]
        print(table(("step", "replaces", "new instance", "gate", "share", "old drained"), rows))
    for i, s in enumerate(rollout.steps):
        if s.exited:
            where = "canary" if i == 0 else f"step {i}"
            print(f"{where} {s.new_instance} {s.exited}; its last log lines:")
            for line in s.last_log_lines:
                print(f"  {shown(line)}")
    verdicts = _verdicts(rollout)
    if verdicts_from is None:
        if verdicts:
            print(f"last gate: {shown(verdicts[-1].detail)}")
        return
    for verdict in verdicts[verdicts_from:]:
        print(f"gate at {_when(verdict.at)}: {shown(verdict.detail)}")


def _verdicts(rollout: patch_pb2.Rollout) -> list[patch_pb2.AuditEntry]:
    return [a for a in rollout.audit if a.event == "GateEvaluated"]


def audit_table(rollout: patch_pb2.Rollout, names: dict[str, str]) -> str:
    rows = [(_when(a.at), named(a.actor, names), a.event, a.detail) for a in rollout.audit]
    return table(("when", "who", "event", "detail"), rows)


async def cmd_publish(args: argparse.Namespace) -> int:
    from parley_cli.wheels import WheelBuildError, build_wheel

    if args.wheel and args.dependency_lock:
        print("error: --dependency-lock is built into the wheel: give it without --wheel", file=sys.stderr)
        return 2
    if args.wheel:
        wheel = Path(args.wheel)
    else:
        source = Path(args.source or f"services/{args.service}")
        try:
            lock = Path(args.dependency_lock) if args.dependency_lock else None
            out_dir = Path(args.data_dir) / "wheels"
            wheel = await asyncio.to_thread(build_wheel, source, args.version, out_dir, dependency_lock=lock)
        except WheelBuildError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    from tuf.api.exceptions import LengthOrHashMismatchError

    from parley_cli.publishing import KeyFileError, load_key_file, publish_release  # TUF: only the commands that sign

    key_file = _key_file(args)
    try:
        signer = load_key_file(key_file, args.service)
    except KeyFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    async def work(c: RegistryConnection) -> int:
        try:
            release = await publish_release(
                c.patch,
                signer=signer,
                service=args.service,
                version=args.version,
                wheel_name=wheel.name,
                wheel=await asyncio.to_thread(wheel.read_bytes),
                fixes=[f for f in (args.fixes or "").split(",") if f],
                min_event_schema=args.min_event_schema,
                metadata=c.token(),
            )
        except grpc.aio.AioRpcError as error:
            raise ParleyError(error.code(), error.details() or error.code().name) from None
        except (KeyFileError, LengthOrHashMismatchError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"published {release.service} {release.version}: {release.target_path} sha256 {release.sha256[:16]}…")
        print(f"signed with {key_file}")
        return 0

    return await _with_registry(args, work)


def _key_file(args: argparse.Namespace) -> Path:
    """The publisher's key for a service: --key-file, else <data>/cli/keys/<service>.pem."""
    return Path(args.key_file) if args.key_file else Path(args.data_dir) / "cli" / "keys" / f"{args.service}.pem"


async def cmd_key_create(args: argparse.Namespace) -> int:
    """A new publisher key, kept here (0600); the registry is given its public half and delegates to it."""
    from parley_cli.publishing import KeyFileError, create_key_file, public_pem

    key_file = _key_file(args)
    try:
        signer = create_key_file(key_file)
    except KeyFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    request = patch_pb2.SetPublisherKeyRequest(service=args.service, public_key_pem=public_pem(signer))

    async def work(c: RegistryConnection) -> int:
        try:
            key = await c.call(c.patch.SetPublisherKey, request, as_user=True)
        except BaseException:
            key_file.unlink(missing_ok=True)  # not delegated: a key that signs nothing is only a risk
            raise
        print(f"{args.service} releases are signed by key {key.keyid[:16]}… from now on")
        print(f"private key: {key_file} (0600); keep it with the publisher, back it up offline")
        return 0

    return await _with_registry(args, work)


def _root_signers(args: argparse.Namespace) -> tuple[list[CryptoSigner], list[CryptoSigner]]:
    """The current root keys given (they must exist) and the new ones (made here if missing)."""
    from parley_cli.publishing import create_key_file, load_key_file

    old = [load_key_file(Path(p)) for p in args.old_key]
    new = [load_key_file(Path(p)) if Path(p).exists() else create_key_file(Path(p)) for p in args.new_key]
    return old, new


async def cmd_root_rotate(args: argparse.Namespace) -> int:
    from parley_cli.publishing import KeyFileError
    from parley_cli.root_rotation import rotate_root

    try:
        old, new = _root_signers(args)
    except KeyFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    async def work(c: RegistryConnection) -> int:
        try:
            rotated = await rotate_root(c.patch, old=old, new=new, threshold=args.threshold, metadata=c.token())
        except grpc.aio.AioRpcError as error:
            raise ParleyError(error.code(), error.details() or error.code().name) from None
        except KeyFileError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"root v{rotated.version}: {rotated.threshold} of {len(rotated.keyids)} keys")
        for keyid in rotated.keyids:
            print(f"  {keyid}")
        print("node agents follow the new root on their next refresh; keep the new key files offline")
        return 0

    return await _with_registry(args, work)


async def cmd_list(args: argparse.Namespace) -> int:
    async def work(c: RegistryConnection) -> int:
        releases = await c.call(c.patch.ListReleases, patch_pb2.ListReleasesRequest())
        print(
            table(
                ("service", "version", "fixes", "min schema", "artifact"),
                [
                    (r.service, r.version, ",".join(r.fixes) or "-", r.min_event_schema, r.target_path)
                    for r in releases.releases
                ],
            )
            if releases.releases
            else "no releases published"
        )
        rollouts = await c.call(c.patch.ListRollouts, patch_pb2.ListRolloutsRequest())
        names = await c.names(rollouts.rollouts)
        print()
        print(
            table(
                ("roll-out", "service", "from", "to", "state", "planned by", "approved by"),
                [
                    (
                        *(r.rollout_id, r.service, r.from_version, r.to_version, r.state),
                        named(r.planned_by, names),
                        named(r.approved_by, names) if r.approved_by else "-",
                    )
                    for r in rollouts.rollouts
                ],
            )
            if rollouts.rollouts
            else "no roll-outs"
        )
        return 0

    return await _with_registry(args, work)


def _force_needs_reason(args: argparse.Namespace) -> bool:
    if args.force and not (args.reason or "").strip():
        print("error: --force needs a --reason (it goes into the audit)", file=sys.stderr)
        return False
    return True


def _planned(rollout: patch_pb2.Rollout, names: dict[str, str]) -> None:
    _print_rollout(rollout, names)
    print(f"ask another operator to run: parley --as <them> patch approve {rollout.rollout_id}")


async def cmd_rollout(args: argparse.Namespace) -> int:
    if not _force_needs_reason(args):
        return 2
    try:
        weights = [int(w) for w in args.weights.split(",")] if args.weights else []
    except ValueError:
        print(f"error: --weights {args.weights!r}: percentages separated by commas, e.g. 10,50,100", file=sys.stderr)
        return 2

    async def work(c: RegistryConnection) -> int:
        request = patch_pb2.PlanRolloutRequest(
            service=args.service,
            to_version=args.version,
            force=args.force,
            reason=args.reason or "",
            weights=weights,
        )
        rollout = await c.call(c.patch.PlanRollout, request, as_user=True)
        _planned(rollout, await c.names([rollout]))
        return 0

    return await _with_registry(args, work)


async def cmd_revert(args: argparse.Namespace) -> int:
    """Back to the version before the service's last finished roll-out: a new, gated, approved roll-out."""
    if not _force_needs_reason(args):
        return 2

    async def work(c: RegistryConnection) -> int:
        request = patch_pb2.RevertServiceRequest(service=args.service, reason=args.reason or "", force=args.force)
        rollout = await c.call(c.patch.RevertService, request, as_user=True)
        _planned(rollout, await c.names([rollout]))
        return 0

    return await _with_registry(args, work)


def _command(action: str) -> Any:
    async def run(args: argparse.Namespace) -> int:
        async def work(c: RegistryConnection) -> int:
            method = getattr(c.patch, f"{action}Rollout")
            request = patch_pb2.RolloutCommand(rollout_id=args.rollout_id, reason=getattr(args, "reason", "") or "")
            rollout = await c.call(method, request, as_user=True)
            if rollout.rollout_id != args.rollout_id:  # a done roll-out's rollback is a new roll-out back
                print(f"roll-out {args.rollout_id} is done; planned its revert:")
                _planned(rollout, await c.names([rollout]))
                return 0
            _print_rollout(rollout, await c.names([rollout]))
            return 0

        return await _with_registry(args, work)

    return run


class StatusWatch:
    """What `patch status --watch` prints: the view whenever it changes (a step, its share, its
    gate), and every gate verdict with its figures, even those that came between two polls."""

    def __init__(self) -> None:
        self.last = ""
        self.verdicts_shown = 0

    def changed(self, rollout: patch_pb2.Rollout) -> bool:
        return self._summary(rollout) != self.last

    @staticmethod
    def _summary(rollout: patch_pb2.Rollout) -> str:
        steps = [(s.new_instance, s.gate, s.weight, s.drained) for s in rollout.steps]
        return f"{rollout.state}|{steps}|{len(_verdicts(rollout))}"

    def show(self, rollout: patch_pb2.Rollout, names: dict[str, str]) -> None:
        print(f"--- {datetime.now(UTC).strftime('%H:%M:%S')}")
        _print_rollout(rollout, names, verdicts_from=self.verdicts_shown)
        self.last = self._summary(rollout)
        self.verdicts_shown = len(_verdicts(rollout))


async def cmd_status(args: argparse.Namespace) -> int:
    """One view, or with --watch a refreshed view until the roll-out finishes."""
    if not args.rollout_id:  # argparse's "required" would not say where the ids are
        print(
            "usage: parley patch status ROLLOUT_ID: `parley patch list` lists the roll-outs with their ids",
            file=sys.stderr,
        )
        return 2

    async def work(c: RegistryConnection) -> int:
        watch = StatusWatch()
        while True:
            rollout = await c.call(c.patch.GetRollout, patch_pb2.GetRolloutRequest(rollout_id=args.rollout_id))
            if watch.changed(rollout):
                names = await c.names([rollout])
                watch.show(rollout, names)
            if not args.watch or rollout.state in FINISHED:
                if args.audit:
                    print(audit_table(rollout, names))
                return 0 if rollout.state != "rolled_back" else 1
            await asyncio.sleep(1.0)

    return await _with_registry(args, work)


def _osv_files(path: Path) -> list[str]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    return [f.read_text(encoding="utf-8") for f in files if f.is_file()]


async def cmd_advisories_import(args: argparse.Namespace) -> int:
    records = await asyncio.to_thread(_osv_files, Path(args.path))
    if not records:
        print(f"error: no OSV JSON files at {args.path}", file=sys.stderr)
        return 2

    async def work(c: RegistryConnection) -> int:
        request = patch_pb2.ImportAdvisoriesRequest(osv_json=records)
        result = await c.call(c.patch.ImportAdvisories, request, as_user=True, timeout=120)
        print(
            f"imported {result.imported}, unchanged {result.unchanged}, withdrawn {result.withdrawn} "
            f"(from {len(records)} files)"
        )
        return 0

    return await _with_registry(args, work)


async def cmd_advisories_list(args: argparse.Namespace) -> int:
    async def work(c: RegistryConnection) -> int:
        findings = (await c.call(c.patch.ListFindings, patch_pb2.ListFindingsRequest())).findings
        if not findings:
            print("no running instance is affected by an imported advisory")
            return 0
        now = time.time()
        print(
            table(
                ("advisory", "priority", "cvss", "service", "instance", "package", "installed", "fixed in", "deadline"),
                [
                    (
                        f.advisory_id,
                        f.priority,
                        f"{f.cvss_score:.1f}" if f.cvss_score else "-",
                        f.service,
                        f.instance_id,
                        f.package,
                        f.installed_version,
                        ",".join(f.fixed_in) or "-",
                        _due(f.deadline, now),
                    )
                    for f in findings
                ],
            )
        )
        return 1 if any(f.overdue for f in findings) else 0

    return await _with_registry(args, work)


async def cmd_fleet(args: argparse.Namespace) -> int:
    async def work(c: RegistryConnection) -> int:
        instances = (await c.call(c.fleet.ListInstances, fleet_pb2.ListInstancesRequest())).instances
        findings = (await c.call(c.patch.ListFindings, patch_pb2.ListFindingsRequest())).findings
        now = time.time()
        rows = []
        for status in instances:
            beat = status.last_heartbeat
            mine = [f for f in findings if f.instance_id == beat.instance_id]
            nearest = min((f.deadline for f in mine), default=0.0)
            rows.append(
                (
                    beat.service,
                    beat.version,
                    beat.instance_id,
                    beat.host,
                    "STALE" if status.stale else beat.health,
                    len(beat.distributions),
                    f"{len(mine)} ({', '.join(sorted({f.priority for f in mine}))})" if mine else "0",
                    _due(nearest, now) if mine else "-",
                )
            )
        print(
            table(("service", "version", "instance", "host", "health", "packages", "vulnerable", "next deadline"), rows)
            if rows
            else "no instance has reported yet"
        )
        return 0

    return await _with_registry(args, work)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    patch = sub.add_parser("patch", help="signed releases and roll-outs").add_subparsers(
        dest="patch_command", required=True
    )
    publish = patch.add_parser("publish", help="sign and publish a release of one service (as --as USER)")
    publish.add_argument("service")
    publish.add_argument("version")
    publish.add_argument("--wheel", help="an already built wheel (default: build services/<service> at VERSION)")
    publish.add_argument("--source", help="the service's source folder (default services/<service>)")
    publish.add_argument("--fixes", help="comma-separated OSV ids this release fixes")
    publish.add_argument(
        "--dependency-lock",
        help="pip requirements the release brings itself, each name==version --hash=sha256:… (e.g. a patched grpcio)",
    )
    publish.add_argument("--min-event-schema", type=int, default=1, help="oldest event schema it can read")
    publish.add_argument("--key-file", help="the publisher key (default <data>/cli/keys/<service>.pem)")
    publish.set_defaults(run=cmd_publish)
    key = patch.add_parser("key", help="publisher signing keys").add_subparsers(dest="key_command", required=True)
    create = key.add_parser("create", help="a new publisher key for SERVICE, delegated by the registry (as --as USER)")
    create.add_argument("service")
    create.add_argument("--key-file", help="where to keep the private key (default <data>/cli/keys/<service>.pem)")
    create.set_defaults(run=cmd_key_create)
    root = patch.add_parser("root", help="the release repository's offline root keys").add_subparsers(
        dest="root_command", required=True
    )
    rotate = root.add_parser("rotate", help="replace the root keys (signed here with the offline key files)")
    rotate.add_argument("--old-key", action="append", required=True, help="a current root key file (repeat)")
    rotate.add_argument("--new-key", action="append", required=True, help="a new root key file, made if missing")
    rotate.add_argument("--threshold", type=int, required=True, help="how many new root keys must sign")
    rotate.set_defaults(run=cmd_root_rotate)
    patch.add_parser("list", help="releases and roll-outs").set_defaults(run=cmd_list)
    rollout = patch.add_parser("rollout", help="plan a roll-out of a published version (needs another's approval)")
    rollout.add_argument("service")
    rollout.add_argument("version")
    rollout.add_argument("--force", action="store_true", help="a release that failed a canary before (with --reason)")
    rollout.add_argument("--reason", default="", help="why (recorded in the audit)")
    rollout.add_argument(
        "--weights", help="the new instance's share of callers at each gated phase, e.g. 10,50,100 (the default)"
    )
    rollout.set_defaults(run=cmd_rollout)
    revert = patch.add_parser(
        "revert", help="plan a roll-out back to the version before SERVICE's last finished roll-out"
    )
    revert.add_argument("service")
    revert.add_argument("--reason", default="", help="why (recorded in the audit)")
    revert.add_argument("--force", action="store_true", help="even if that version failed a canary (with --reason)")
    revert.set_defaults(run=cmd_revert)
    for name, action, text in (
        ("approve", "Approve", "approve a planned roll-out (not your own)"),
        ("pause", "Pause", "hold a roll-out before its next step"),
        ("resume", "Resume", "continue a paused roll-out"),
        ("rollback", "Rollback", "roll back to the previous version (a done roll-out: plans its revert)"),
    ):
        p = patch.add_parser(name, help=text)
        p.add_argument("rollout_id")
        if name in ("pause", "rollback"):
            p.add_argument("--reason", default="")
        p.set_defaults(run=_command(action))
    status = patch.add_parser("status", help="a roll-out's steps and gates")
    status.add_argument("rollout_id", nargs="?", help="from `parley patch list`")
    status.add_argument("--watch", action="store_true", help="follow it until it finishes")
    status.add_argument("--audit", action="store_true", help="print every audited event")
    status.set_defaults(run=cmd_status)

    advisories = sub.add_parser("advisories", help="OSV advisories against the fleet").add_subparsers(
        dest="advisories_command", required=True
    )
    imp = advisories.add_parser("import", help="import OSV JSON (a file or a folder of *.json)")
    imp.add_argument("path")
    imp.set_defaults(run=cmd_advisories_import)
    advisories.add_parser("list", help="vulnerable instances, priority and deadline").set_defaults(
        run=cmd_advisories_list
    )
    sub.add_parser("fleet", help="what runs where, what is vulnerable, deadlines").set_defaults(run=cmd_fleet)
