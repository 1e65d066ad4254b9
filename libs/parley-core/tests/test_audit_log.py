"""Where the audit chain ends on the live SEC stream: the newest record a trusted key signed,
whatever else was published there (real nats-server; the records made here, no services)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.js import JetStreamContext
from parley.auth.v1.events_pb2 import AuditKeyPublished, SecurityEventRecorded, SigningKeyPublished

from parley_core.audit import AuditChain, TrustedKeys, trusted_keys
from parley_core.audit_log import chain_head
from parley_core.envelope import NewEvent, seal
from parley_testing.nats import NatsTestServer

AUDIT_KEY = Ed25519PrivateKey.generate()
TOKEN_KEY = Ed25519PrivateKey.generate()


def public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


KEYS: TrustedKeys = trusted_keys(
    [
        AuditKeyPublished(key_id="audit-1", public_key=public(AUDIT_KEY)),
        SigningKeyPublished(key_id="token-1", public_key=public(TOKEN_KEY)),
    ]
)


async def publish(
    js: JetStreamContext, chain: AuditChain, key: Ed25519PrivateKey, key_id: str
) -> SecurityEventRecorded:
    record = chain.link(SecurityEventRecorded(kind="login_succeeded", user_id="u1", key_id=key_id))
    record.signature = key.sign(record.record_hash)
    chain.advance(record)
    event = NewEvent(aggregate_type="security", aggregate_id="u1", payload=record, actor="service:auth")
    data = seal(event, aggregate_version=record.chain_index, producer="test@0", trace_context={})
    await js.publish("parley.sec.login_succeeded.u1", data.SerializeToString())
    return record


async def sec(nats_server: NatsTestServer) -> JetStreamContext:
    js = (await nats_server.connect("platform")).jetstream()
    await js.add_stream(name="SEC", subjects=["parley.sec.>"])
    return js


async def test_a_chain_from_before_audit_keys_ends_at_its_newest_token_signed_record(
    nats_server: NatsTestServer,
) -> None:
    js = await sec(nats_server)
    chain = AuditChain()
    await publish(js, chain, TOKEN_KEY, "token-1")
    newest = await publish(js, chain, TOKEN_KEY, "token-1")
    await js.publish("parley.sec.junk.x", b"junk")

    head = await chain_head(js, KEYS)
    assert head.record == newest
    assert head.forged == 0


async def test_a_token_signed_record_after_an_audit_signed_one_is_forged(nats_server: NatsTestServer) -> None:
    js = await sec(nats_server)
    chain = AuditChain()
    await publish(js, chain, TOKEN_KEY, "token-1")
    audit_signed = await publish(js, chain, AUDIT_KEY, "audit-1")
    await publish(js, AuditChain(chain.last_index, chain.last_hash), TOKEN_KEY, "token-1")  # a stolen token key's
    await publish(js, AuditChain(chain.last_index, chain.last_hash), Ed25519PrivateKey.generate(), "audit-1")

    head = await chain_head(js, KEYS)
    assert head.record == audit_signed
    assert head.forged == 2
    assert (await chain_head(js, KEYS, after_seq=2)).record is None  # a bounded lookup: audit-signed only
