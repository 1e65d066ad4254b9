"""The consumer guard's rules, without a server: a consumer as JetStream describes it and its maker
as the server names it -> keep or delete, and whether its maker's credential is misused."""

from __future__ import annotations

import pytest

from parley_core.consumer_guard import seen_from_info
from parley_core.consumer_policy import EPHEMERAL_MAX_INACTIVE_S, EPHEMERAL_QUOTA, ConsumerSeen, judge
from parley_core.topology import CONSUMERS, PLATFORM_USER, SIEM_CONSUMERS


def ordered(stream: str, creator: str | None, *, name: str = "x_1", inactive_s: float = 5.0) -> ConsumerSeen:
    """A replay's ordered consumer (nats-py: no durable name, the servers' 5 s inactive threshold)."""
    return ConsumerSeen(stream, name, False, ("parley.>",), inactive_s, creator)


@pytest.mark.parametrize("spec", [*CONSUMERS, *SIEM_CONSUMERS], ids=lambda c: c.durable)
def test_each_declared_durable_stays_made_by_its_service_the_platform_or_before_the_guard(spec: object) -> None:
    for creator in (spec.service, PLATFORM_USER, None):  # type: ignore[attr-defined]
        seen = ConsumerSeen(spec.stream, spec.durable, True, (spec.filter_subject,), 0.0, creator)  # type: ignore[attr-defined]
        assert judge(seen, kept_of_creator=10_000).keep


def test_a_declared_durable_made_by_another_service_or_with_another_filter_goes() -> None:
    archive = next(c for c in CONSUMERS if c.durable == "storage-archive-msg")
    by_gateway = judge(ConsumerSeen("MSG", archive.durable, True, (">",), 0.0, "gateway"), kept_of_creator=0)
    assert not by_gateway.keep
    assert by_gateway.violation
    narrowed = judge(ConsumerSeen("MSG", archive.durable, True, ("parley.msg.x",), 0.0, "storage"), kept_of_creator=0)
    assert not narrowed.keep
    ephemeral = judge(ConsumerSeen("MSG", archive.durable, False, (">",), 5.0, None), kept_of_creator=0)
    assert not ephemeral.keep
    assert not ephemeral.violation


def test_the_platforms_own_consumers_stay_whatever_they_are() -> None:
    durable = ConsumerSeen("PARKED", "operator-listing", True, ("parley.parked.>",), 0.0, PLATFORM_USER)
    assert judge(durable, kept_of_creator=10_000).keep
    assert judge(ordered("MSG", PLATFORM_USER, inactive_s=3600), kept_of_creator=10_000).keep


def test_an_undeclared_durable_goes_and_is_a_violation_whatever_its_name() -> None:
    for name in ("gateway_flood1", "storage-archive-xyz", "messaging_4cad12d299e348aca916"):
        verdict = judge(ConsumerSeen("MSG", name, True, (">",), 0.0, "gateway"), kept_of_creator=0)
        assert not verdict.keep, name
        assert verdict.violation, name


def test_a_services_ephemeral_consumer_stays_on_a_stream_it_reads_within_its_quota() -> None:
    assert judge(ordered("AUTH", "gateway"), kept_of_creator=0).keep
    assert judge(ordered("AUTH", "gateway"), kept_of_creator=EPHEMERAL_QUOTA - 1).keep
    over = judge(ordered("AUTH", "gateway"), kept_of_creator=EPHEMERAL_QUOTA)
    assert not over.keep
    assert over.violation
    assert "quota" in over.why
    assert judge(ordered("AUTH", "gateway"), kept_of_creator=3, quota=3).violation


def test_the_name_names_no_one_only_the_server_named_maker_counts() -> None:
    """An attacker naming its consumers after auth gains auth nothing, and costs auth nothing."""
    as_auth = ordered("MSG", "gateway", name="auth_0123456789abcdef0123")
    assert judge(as_auth, kept_of_creator=0).keep  # counted as the gateway's, within its quota
    assert not judge(ordered("SEC", "gateway", name="storage_0123"), kept_of_creator=0).keep


def test_an_ephemeral_consumer_on_a_stream_its_maker_does_not_read_goes() -> None:
    verdict = judge(ordered("SEC", "gateway"), kept_of_creator=0)  # SEC: storage alone reads it
    assert not verdict.keep
    assert verdict.violation
    assert not judge(ordered("NOPE", "storage"), kept_of_creator=0).keep


@pytest.mark.parametrize("inactive_s", [0.0, EPHEMERAL_MAX_INACTIVE_S + 0.001, 86_400.0])
def test_an_ephemeral_consumer_made_to_outlive_its_maker_goes(inactive_s: float) -> None:
    verdict = judge(ordered("MSG", "gateway", inactive_s=inactive_s), kept_of_creator=0)
    assert not verdict.keep
    assert verdict.violation


def test_a_consumer_no_one_was_seen_making_goes_but_blames_no_one() -> None:
    verdict = judge(ordered("MSG", None), kept_of_creator=0)
    assert not verdict.keep
    assert not verdict.violation


def test_a_consumer_as_the_jetstream_api_describes_it() -> None:
    """A create answer (the audit advisory's response) and a CONSUMER.LIST entry carry the same shape."""
    answer = {
        "stream_name": "MSG",
        "name": "gateway_ab12",
        "created": "2026-12-05T04:23:29.202631879Z",
        "config": {
            "name": "gateway_ab12",
            "filter_subject": "parley.msg.channel.>",
            "inactive_threshold": 5_000_000_000,
        },
    }
    assert seen_from_info(answer, "gateway") == ConsumerSeen(
        "MSG", "gateway_ab12", False, ("parley.msg.channel.>",), 5.0, "gateway"
    )
    durable = {"stream_name": "AUTH", "name": "d", "config": {"durable_name": "d", "filter_subjects": ["a", "b"]}}
    assert seen_from_info(durable, None) == ConsumerSeen("AUTH", "d", True, ("a", "b"), 0.0, None)


def test_a_push_consumer_delivering_outside_its_makers_inbox_is_its_makers_violation() -> None:
    """The red team's frame: patch-registry's push consumer delivering its stored forgeries onto
    `$JS.EVENT.ADVISORY.API`. A replay's delivery into its own inbox stays."""
    info = {
        "stream_name": "PATCH",
        "name": "fwd1",
        "config": {"deliver_subject": "$JS.EVENT.ADVISORY.API", "inactive_threshold": 5_000_000_000},
    }
    framing = judge(seen_from_info(info, "patch-registry"), kept_of_creator=0)
    assert not framing.keep
    assert framing.violation
    assert "deliver outside its inbox" in framing.why
    own = {**info, "config": {**info["config"], "deliver_subject": "_INBOX_patch_registry.abc"}}
    assert judge(seen_from_info(own, "patch-registry"), kept_of_creator=0).keep
    other = {**info, "config": {**info["config"], "deliver_subject": "_INBOX_messaging.abc"}}
    assert not judge(seen_from_info(other, "patch-registry"), kept_of_creator=0).keep
