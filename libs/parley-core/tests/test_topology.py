"""The trust matrix as topology declares it: one writer per stream, consumers told apart by owner.

What the broker makes of it is tested against a real nats-server in test_nats_permissions.py.
"""

from __future__ import annotations

from parley.messaging.v1 import messaging_pb2
from parley.patch.v1 import patch_pb2

from parley_core import nats_accounts, topology


def test_the_trust_matrix_has_one_writer_per_stream_and_owners_prefix_their_consumers() -> None:
    for spec in topology.STREAMS:
        writers = [s for s in topology.SERVICES if set(spec.subjects) <= set(nats_accounts.permissions_for(s).publish)]
        assert writers == ([spec.owner] if spec.owner in topology.SERVICES else []), spec.name
    for consumer in topology.CONSUMERS:
        assert consumer.durable.startswith(f"{consumer.service}-"), consumer
    # The cross-owner grants of the past are gone: storage appends to no channel or username.
    storage = nats_accounts.permissions_for("storage").publish
    assert not [p for p in storage if p.startswith(("parley.msg.", "parley.auth.", "parley.sec."))]
    assert not [p for p in nats_accounts.permissions_for("patch-registry").publish if p.startswith("parley.sec.")]
    # The platform's security findings are its own: no service may write or read them.
    findings = topology.STREAMS_BY_NAME[topology.PLATFORM_FINDINGS]
    assert findings.owner == topology.PLATFORM_USER
    assert not [s for s in topology.SERVICES if topology.reads(s, findings)]


def test_each_account_imports_only_its_own_streams_subjects_and_its_users_may_publish_them() -> None:
    """The account layer (natsconf) and the permission layer name the same subjects."""
    for service in topology.SERVICES:
        imported = nats_accounts.imports_of(service)
        own = {subject for spec in topology.STREAMS if spec.owner == service for subject in spec.subjects}
        stream_subjects = {s for s in imported if s.startswith("parley.")}
        assert stream_subjects == own | {f"parley.parked.{service}.>"}, service
        allowed = set(nats_accounts.permissions_for(service).publish)
        assert {nats_accounts.local_subject(service, s) for s in imported} <= allowed, service
        assert not [s for s in allowed if s.startswith(nats_accounts.JS_API + ".")], (
            service
        )  # no API outside its import


def test_a_stream_accepts_only_its_owners_event_packages() -> None:
    msg, parked = topology.STREAMS_BY_NAME["MSG"], topology.STREAMS_BY_NAME["PARKED"]
    assert msg.owner_writes("parley.messaging.v1.MessagePosted")
    assert msg.owner_writes("parley.messaging.v1.SomethingNewer")  # a newer release's type: still its owner's
    assert not msg.owner_writes("parley.auth.v1.UserRegistered")
    assert not msg.owner_writes("")
    assert parked.owner_writes("parley.auth.v1.UserRegistered")  # copies of anyone's events


def test_a_methods_own_callers_are_some_of_its_services_and_name_a_method_it_serves() -> None:
    """A per-method rule only narrows its service's (the NetworkPolicies follow GRPC_CALLERS), and
    a renamed method cannot leave its rule behind unseen."""
    modules = {"messaging": messaging_pb2, "patch-registry": patch_pb2}
    assert set(topology.GRPC_METHOD_CALLERS) <= set(modules)
    for service, methods in topology.GRPC_METHOD_CALLERS.items():
        servicers = modules[service].DESCRIPTOR.services_by_name.values()
        served = {f"/{s.full_name}/{m.name}" for s in servicers for m in s.methods}
        for method, callers in methods.items():
            assert method in served, method
            assert callers, method
            assert set(callers) < set(topology.GRPC_CALLERS[service]), method
            assert topology.grpc_callers(service, method) == callers


def test_a_method_without_its_own_rule_has_its_services_callers() -> None:
    assert (
        topology.grpc_callers("messaging", "/parley.messaging.v1.MessagingService/PostMessage")
        == (topology.GRPC_CALLERS["messaging"])
    )
    assert topology.grpc_callers("messaging", "/parley.messaging.v1.MessagingService/PostMessages") == ("gateway",)
