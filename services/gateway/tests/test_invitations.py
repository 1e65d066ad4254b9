"""Pending invitations through the gateway: each user lists their own only, joining accepts one,
declining drops it, and nobody declines or sees someone else's.

Every service runs in-process (the `stack` composition) on a real TLS nats-server; the clients are
the SDK over real gRPC.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest_asyncio

from parley_client import ParleyClient
from parley_core.pki import Pki
from parley_testing.stack import PASSWORD, Stack
from parley_testing.statuses import refusal


class People:
    def __init__(self, stack: Stack, pki: Pki) -> None:
        self._address = f"127.0.0.1:{stack.ports['gateway']}"
        self._ca = pki.ca_pem()
        self.clients: list[ParleyClient] = []

    async def new(self, prefix: str) -> ParleyClient:
        client = ParleyClient.connect(self._address, ca_cert=self._ca)
        self.clients.append(client)
        name = f"{prefix}{uuid.uuid4().hex[:6]}"
        await client.register(name, PASSWORD)
        await client.login(name, PASSWORD)
        return client


@pytest_asyncio.fixture
async def people(stack: Stack, pki: Pki) -> AsyncIterator[People]:
    made = People(stack, pki)
    try:
        yield made
    finally:
        for client in made.clients:
            await client.close()


async def test_each_user_lists_their_own_pending_invitations_newest_first(people: People) -> None:
    owner, bob, carol = await people.new("owner"), await people.new("bob"), await people.new("carol")
    assert await bob.invitations() == []
    secret = await owner.create_channel("secret", private=True)
    plans = await owner.create_channel("plans")
    await owner.invite(secret.channel_id, bob.user_id or "")
    await owner.invite(plans.channel_id, bob.user_id or "")

    listed = await bob.invitations()
    assert [(i.channel_id, i.channel_name, i.invited_by) for i in listed] == [
        (plans.channel_id, "plans", owner.user_id),
        (secret.channel_id, "secret", owner.user_id),
    ]
    assert [(i.private, i.member_count) for i in listed] == [(False, 1), (True, 1)]
    # Carol was invited nowhere and sees nothing of bob's; the inviter's own list is empty too.
    assert await carol.invitations() == []
    assert await owner.invitations() == []


async def test_joining_accepts_and_declining_drops_an_invitation(people: People) -> None:
    owner, bob = await people.new("owner"), await people.new("bob")
    secret = await owner.create_channel("secret", private=True)
    other = await owner.create_channel("other", private=True)
    await owner.invite(secret.channel_id, bob.user_id or "")
    await owner.invite(other.channel_id, bob.user_id or "")

    await bob.join_channel(secret.channel_id)
    assert [i.channel_id for i in await bob.invitations()] == [other.channel_id]

    await bob.decline_invitation(other.channel_id)
    assert await bob.invitations() == []
    # Declined for good: the private channel needs a new invitation, which lists again.
    assert (await refusal(bob.join_channel(other.channel_id))).code == grpc.StatusCode.PERMISSION_DENIED
    again = await refusal(bob.decline_invitation(other.channel_id))
    assert again.code == grpc.StatusCode.NOT_FOUND
    await owner.invite(other.channel_id, bob.user_id or "")
    assert [i.channel_id for i in await bob.invitations()] == [other.channel_id]


async def test_nobody_declines_an_invitation_that_is_not_theirs(people: People) -> None:
    owner, bob, carol = await people.new("owner"), await people.new("bob"), await people.new("carol")
    secret = await owner.create_channel("secret", private=True)
    await owner.invite(secret.channel_id, bob.user_id or "")

    # Carol has no invitation there: the same answer as for a channel that does not exist.
    theirs = await refusal(carol.decline_invitation(secret.channel_id))
    missing = await refusal(carol.decline_invitation(uuid.uuid4().hex))
    assert theirs.code == missing.code == grpc.StatusCode.NOT_FOUND
    assert theirs.message == missing.message == "you have no pending invitation to this channel"
    assert [i.channel_id for i in await bob.invitations()] == [secret.channel_id]  # untouched
    assert (await refusal(carol.decline_invitation(""))).code == grpc.StatusCode.INVALID_ARGUMENT
    # A member (the owner) has nothing to decline either.
    assert (await refusal(owner.decline_invitation(secret.channel_id))).code == grpc.StatusCode.NOT_FOUND


async def test_a_ban_withdraws_the_invitation_and_no_token_lists_nothing(people: People, stack: Stack) -> None:
    owner, bob = await people.new("owner"), await people.new("bob")
    plans = await owner.create_channel("plans")
    await owner.invite(plans.channel_id, bob.user_id or "")
    await owner.ban(plans.channel_id, bob.user_id or "")
    assert await bob.invitations() == []

    anonymous = ParleyClient.connect(f"127.0.0.1:{stack.ports['gateway']}", ca_cert=stack.pki.ca_pem())
    people.clients.append(anonymous)
    assert (await refusal(anonymous.invitations())).code == grpc.StatusCode.UNAUTHENTICATED
    assert (await refusal(anonymous.decline_invitation(plans.channel_id))).code == grpc.StatusCode.UNAUTHENTICATED
