"""`parley patch publish`, `patch key create` and `patch root rotate`: the commands that sign.
TUF and the publisher's keys are loaded by these commands only."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from parley.patch.v1 import patch_pb2

from parley_cli.arguments import command, command_group
from parley_cli.registry_connection import RegistryConnection, with_registry
from parley_client import ParleyError

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner


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

    return await with_registry(args, work)


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

    return await with_registry(args, work)


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

    return await with_registry(args, work)


def add_commands(patch: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    publish = command(patch, "publish", cmd_publish, help="sign and publish a release of one service (as --as USER)")
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
    key = command_group(patch, "key", help="publisher signing keys")
    create = command(
        key, "create", cmd_key_create, help="a new publisher key for SERVICE, delegated by the registry (as --as USER)"
    )
    create.add_argument("service")
    create.add_argument("--key-file", help="where to keep the private key (default <data>/cli/keys/<service>.pem)")
    root = command_group(patch, "root", help="the release repository's offline root keys")
    rotate = command(
        root, "rotate", cmd_root_rotate, help="replace the root keys (signed here with the offline key files)"
    )
    rotate.add_argument("--old-key", action="append", required=True, help="a current root key file (repeat)")
    rotate.add_argument("--new-key", action="append", required=True, help="a new root key file, made if missing")
    rotate.add_argument("--threshold", type=int, required=True, help="how many new root keys must sign")
