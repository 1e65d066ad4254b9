"""User names for the operator's views (roll-outs, their audit), which record who acted by id.

The operator's CLI speaks to services as the platform identity, with no user token that auth's
directory would accept, but storage's archive answers it: each user's aggregate begins with
`UserRegistered`, which carries the name. An id the archive does not hold yet (archiving lags
by moments), or whose data was erased, stays an id.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from parley.auth.v1.events_pb2 import UserRegistered
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_cli.terminal import shown
from parley_core.envelope import decode, open_payload
from parley_core.grpc_channel import secure_channel
from parley_core.pki import Pki
from parley_core.topology import PLATFORM_USER

TIMEOUT_S = 10.0


async def usernames(
    storage: storage_pb2_grpc.StorageArchiveServiceAsyncStub, user_ids: Iterable[str]
) -> dict[str, str]:
    """Each id's name where the archive knows it; actors that are not users ("registry") are skipped."""
    names: dict[str, str] = {}
    for user_id in sorted({u for u in user_ids if u and u != "registry"}):
        request = storage_pb2.GetAggregateEventsRequest(aggregate_type="user", aggregate_id=user_id, limit=1)
        try:
            page = await storage.GetAggregateEvents(request, timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError:
            continue  # a view with ids is still a view; the lookup is a courtesy
        for event in page.events:
            payload = None if event.erased else open_payload(decode(event.envelope))
            if isinstance(payload, UserRegistered) and payload.username:
                names[user_id] = payload.username
    return names


def named(user_id: str, names: dict[str, str]) -> str:
    """The name to print for an id (others' names: escaped, see parley_cli.terminal)."""
    return shown(names.get(user_id, user_id))


class ArchiveUsernames:
    """`usernames` over a channel of its own to storage, for `parley up`'s node agent, which tells
    roll-out lines (planned by, approved by) as the platform identity."""

    def __init__(self, pki: Pki, storage_address: str) -> None:
        self._pki = pki
        self._address = storage_address
        self._channel: grpc.aio.Channel | None = None

    async def __call__(self, user_ids: Iterable[str]) -> dict[str, str]:
        if self._channel is None:  # made in the running loop, on first use
            self._channel = secure_channel(self._pki, identity=PLATFORM_USER, address=self._address, peer="storage")
        found = await usernames(storage_pb2_grpc.StorageArchiveServiceStub(self._channel), user_ids)
        return {user_id: shown(name) for user_id, name in found.items()}  # printed to a terminal as they are

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
