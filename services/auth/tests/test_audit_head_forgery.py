"""A stolen NATS credential that may publish on SEC (auth's own) cannot steer the audit chain:
auth continues the chain only from a record signed with an audit key it trusts, and a forged
record, however it claims to be the head, is skipped (the verifier names it; auth links past it)."""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js import JetStreamContext
from parley.auth.v1 import auth_pb2
from parley.auth.v1.events_pb2 import SecurityEventRecorded

from parley_auth.audit_trail import AUDIT_HEAD_SCAN_LIMIT
from parley_core.audit import AuditChain
from parley_core.audit_log import chain_head
from parley_core.envelope import NewEvent, decode, open_payload, seal
from parley_testing.nats import NatsTestServer
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack
from parley_testing.waiting import eventually

JUNK = 4 * AUDIT_HEAD_SCAN_LIMIT


def forged_record(after: SecurityEventRecorded, key_id: str) -> bytes:
    """A record that claims to follow `after` far ahead, under the real key's id, signed with another key."""
    chain = AuditChain(last_index=after.chain_index + 1000, last_hash=b"\x01" * 32)
    record = chain.link(SecurityEventRecorded(kind="login_succeeded", user_id="forged", actor="forger", key_id=key_id))
    record.signature = Ed25519PrivateKey.generate().sign(record.record_hash)
    event = NewEvent(aggregate_type="security", aggregate_id="forged", payload=record, actor="forger")
    return seal(event, aggregate_version=record.chain_index, producer="forger@0", trace_context={}).SerializeToString()


async def test_a_forged_record_on_sec_does_not_become_the_chain_head(stack: Stack, nats_server: NatsTestServer) -> None:
    name = f"alice{uuid.uuid4().hex[:8]}"
    await stack.gateway().Register(auth_pb2.RegisterRequest(username=name, password=PASSWORD), timeout=TIMEOUT_S)
    await stack.login(name)
    auth = stack.app("auth")
    stolen = (await nats_server.connect("auth")).jetstream()  # auth's NATS password, not its audit key
    real = (await chain_head(stolen, auth.audit.trusted_keys())).record
    assert real is not None

    await stolen.publish("parley.sec.login_succeeded.forged", forged_record(real, auth._audit_signer.key_id))
    login = await stack.login(name)  # auth's next record: its append meets the forgery and reloads the head

    raw = await stolen.get_last_msg("SEC", f"parley.sec.login_succeeded.{login.user_id}")
    head = open_payload(decode(raw.data or b""))
    assert isinstance(head, SecurityEventRecorded)
    assert head.chain_index == real.chain_index + 1
    assert head.prev_hash == real.record_hash
    assert head.kind == "login_succeeded"


async def test_a_flood_of_junk_on_sec_does_not_stall_a_login(stack: Stack, nats_server: NatsTestServer) -> None:
    """Auth reads the whole stream for its head only at start; after a conflict, at most
    AUDIT_HEAD_SCAN_LIMIT of the newest messages, however many were piled on SEC."""
    name = f"alice{uuid.uuid4().hex[:8]}"
    await stack.gateway().Register(auth_pb2.RegisterRequest(username=name, password=PASSWORD), timeout=TIMEOUT_S)
    await stack.login(name)
    auth = stack.app("auth")
    nc = await nats_server.connect("auth")
    stolen = nc.jetstream()
    real = (await chain_head(stolen, auth.audit.trusted_keys())).record
    assert real is not None
    before = (await stolen.stream_info("SEC")).state.last_seq
    for n in range(JUNK):
        junk = forged_record(real, auth._audit_signer.key_id) if n % 2 else b"junk"
        await nc.publish(f"parley.sec.junk.n{n % 7}", junk)
    await nc.flush()
    await eventually(lambda: _grown(stolen, before + JUNK), "the junk on SEC", TIMEOUT_S)
    read_before = auth.sec_messages_read

    login = await stack.login(name)  # within the call's own deadline

    assert auth.sec_messages_read - read_before <= AUDIT_HEAD_SCAN_LIMIT
    raw = await stolen.get_last_msg("SEC", f"parley.sec.login_succeeded.{login.user_id}")
    linked = open_payload(decode(raw.data or b""))
    assert isinstance(linked, SecurityEventRecorded)
    assert (linked.chain_index, linked.prev_hash) == (real.chain_index + 1, real.record_hash)


async def _grown(js: JetStreamContext, last_seq: int) -> bool | None:
    return (await js.stream_info("SEC")).state.last_seq >= last_seq or None
