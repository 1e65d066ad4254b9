"""The CLI's connection to the patch registry (and to storage, for the names of the users a
roll-out records): mutual TLS as the platform identity (on a joined host's folder, its node
agent's), plus the `--as` user's access token for commands a person must take."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from parley.fleet.v1 import fleet_pb2_grpc
from parley.patch.v1 import patch_pb2, patch_pb2_grpc
from parley.storage.v1 import storage_pb2_grpc

from parley_cli.joined_host import HOST_STATE_FILE, joined_host
from parley_cli.state import load_running_state, no_platform
from parley_cli.usernames import usernames
from parley_client import ParleyError
from parley_core.grpc_channel import secure_channel
from parley_core.pki import ensure_pki, tooling_identity
from parley_core.platform_state import STATE_FILE


class RegistryConnection:
    def __init__(self, args: argparse.Namespace) -> None:
        data_dir: Path = args.data_dir
        # The first host's folder, or a joined host's that runs a registry of its own (`host join`
        # writes its front doors to host.json): the registry left when the first host is lost.
        state_path = next((p for p in (data_dir / STATE_FILE, data_dir / HOST_STATE_FILE) if p.exists()), None)
        if state_path is None and not joined_host(data_dir):
            raise no_platform(data_dir)
        if state_path == data_dir / STATE_FILE:
            load_running_state(data_dir)  # stopped: say so and how to start it, not a refused connection
        services = fleet_addresses(data_dir, json.loads(state_path.read_text()) if state_path else {})
        if "patch-registry" not in services:
            raise SystemExit(f"no patch registry runs on the host of {data_dir}; use a folder of a host running one")
        identity = tooling_identity(data_dir / "pki")  # a joined host's folder holds its agent's
        pki = ensure_pki(data_dir / "pki", [identity])
        address = services["patch-registry"]["address"]
        self.channel = secure_channel(pki, identity=identity, address=address, peer="patch-registry")
        self.patch = patch_pb2_grpc.PatchServiceStub(self.channel)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(self.channel)
        # Storage's archive turns the user ids that roll-outs record into names (ids without it).
        self.storage_channel: grpc.aio.Channel | None = None
        self.storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub | None = None
        if "storage" in services:
            address = services["storage"]["address"]
            self.storage_channel = secure_channel(pki, identity=identity, address=address, peer="storage")
            self.storage = storage_pb2_grpc.StorageArchiveServiceStub(self.storage_channel)
        self._args = args

    def token(self) -> tuple[tuple[str, str], ...]:
        user = self._args.user
        if not user:
            raise SystemExit("this command is taken by a person: name yourself with --as USER (after `parley login`)")
        path = login_file(Path(self._args.data_dir), user)
        if not path.exists():
            raise SystemExit(f"error: {user} is not logged in here; run `parley login {user}`")
        return (("authorization", f"Bearer {json.loads(path.read_text())['access_token']}"),)

    async def call(self, method: Any, request: Any, *, as_user: bool = False, timeout: float = 30.0) -> Any:
        metadata = self.token() if as_user else ()
        try:
            return await method(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise ParleyError(error.code(), error.details() or error.code().name) from None

    async def names(self, rollouts: Sequence[patch_pb2.Rollout]) -> dict[str, str]:
        # The --as user's own name comes from its saved login: a roll-out it just planned names it
        # before the archive has its registration (or where no storage is reachable).
        own = own_name(Path(self._args.data_dir), self._args.user)
        if self.storage is None:
            return own
        ids = [i for r in rollouts for i in (r.planned_by, r.approved_by, *(a.actor for a in r.audit))]
        return own | await usernames(self.storage, ids)

    async def close(self) -> None:
        await self.channel.close()
        if self.storage_channel is not None:
            await self.storage_channel.close()


def fleet_addresses(data_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The state's services; on a joined host without a registry (or storage) of its own, the
    first host's that the bundle's fleet.json names."""
    services: dict[str, Any] = dict(state.get("services", {}))
    if joined := joined_host(data_dir):
        fleet = {"patch-registry": joined.registry_address, "storage": joined.storage_address}
        services = {name: {"address": a} for name, a in fleet.items() if a} | services
    return services


def login_file(data_dir: Path, user: str) -> Path:
    """Where `parley login USER` saved the user's session in this folder."""
    return data_dir / "cli" / f"{user.casefold()}.json"


def own_name(data_dir: Path, user: str | None) -> dict[str, str]:
    """{user id: name} of the --as user, from its saved login; {} without one."""
    if not user or not (path := login_file(data_dir, user)).exists():
        return {}
    user_id = json.loads(path.read_text()).get("user_id")
    return {str(user_id): user} if user_id else {}


async def with_registry(args: argparse.Namespace, work: Any) -> int:
    connection = RegistryConnection(args)
    try:
        code: int = await work(connection)
        return code
    finally:
        await connection.close()
