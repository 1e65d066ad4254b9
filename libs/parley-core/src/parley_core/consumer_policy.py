"""Which JetStream consumers may stay: the consumer guard's rules, as a pure function.

Every consumer lives in the streams' account, so nats-server gives no per-service cap, and the
create subject a reader may use (`CONSUMER.CREATE.<stream>.*`) cannot limit a name, a count or
a durability. Left alone, any reader's credential filled a stream's 1,000 consumer slots in two
seconds and no service could start a replay on it again. The platform's guard
(parley_core.consumer_guard) judges each consumer here as soon as the server says who made it:

- a declared durable (topology.CONSUMERS, SIEM_CONSUMERS) stays, made by its service or the
  platform, with its declared filter;
- the platform identity's own consumers (the operator's tools) stay;
- a service's ephemeral consumer stays on a stream it reads, going by itself once unused (an
  inactive threshold no longer than the servers' default for ordered consumers), while that
  service keeps fewer than its quota on that stream;
- a push consumer delivers only into its maker's own inbox (topology.inbox_prefix): one
  delivering anywhere else (an advisory subject, another account's subject) is a violation of
  its maker, made to forge what the server says (a red team framed messaging so);
- anything else goes: an undeclared durable, a consumer on a stream its maker does not read,
  one that would outlive its maker, one over quota, and one nobody was seen making. A service's
  own code never makes such a consumer, so one made with a service's credential is a violation:
  a security finding, which the guard reports and counts towards that service's quarantine.

Who made a consumer is the account of the API call in JetStream's audit advisory, never the
consumer's name, which its maker chooses; the guard takes an advisory only as the server
publishes it (no reply subject, no headers), never one a consumer delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley_core.topology import (
    CONSUMERS,
    PLATFORM_USER,
    SIEM_CONSUMERS,
    STREAMS_BY_NAME,
    ConsumerSpec,
    inbox_prefix,
    reads,
)

# Ephemeral consumers one service may keep on one stream, all its instances together. One
# instance keeps at most 3 on a stream (storage on STORE: its erasures, its detector's own findings
# and the process's one replay of STORE; every other stream it reads once, EventBus.follow;
# test_consumer_guard measures every service on a running platform), an
# ordered consumer's reset briefly holds two, and a roll-out runs two instances: 32 leaves room
# for that on a few hosts. PARLEY_CONSUMER_QUOTA raises it for a larger fleet.
EPHEMERAL_QUOTA = 32
# nats-server drops an unused ephemeral consumer after 5 s unless its maker asks for longer;
# nats-py's ordered consumers (every replay) take that default. Longer: it outlives its maker.
EPHEMERAL_MAX_INACTIVE_S = 5.0

DECLARED: dict[tuple[str, str], ConsumerSpec] = {(c.stream, c.durable): c for c in (*CONSUMERS, *SIEM_CONSUMERS)}


@dataclass(frozen=True)
class ConsumerSeen:
    """A consumer as the server describes it, and who made it (None: no one was seen making it)."""

    stream: str
    name: str
    durable: bool
    filter_subjects: tuple[str, ...]
    inactive_threshold_s: float  # 0: none (it never goes by itself)
    creator: str | None
    deliver_subject: str = ""  # a push consumer's; "" for a pull consumer


@dataclass(frozen=True)
class Verdict:
    keep: bool
    why: str
    # Deleted, and its maker is a service, whose own code never makes such a consumer: its
    # credential is misused (a security finding, and counted towards its quarantine).
    violation: bool = False


def judge(
    consumer: ConsumerSeen,
    *,
    kept_of_creator: int,
    quota: int = EPHEMERAL_QUOTA,
    max_inactive_s: float = EPHEMERAL_MAX_INACTIVE_S,
) -> Verdict:
    """Keep or delete `consumer`; `kept_of_creator`: ephemeral consumers its maker already keeps on
    its stream (this one not counted)."""
    maker = consumer.creator or "no one seen"
    service = consumer.creator not in (None, PLATFORM_USER)
    declared = DECLARED.get((consumer.stream, consumer.name))
    if declared is not None:
        if consumer.creator not in (None, declared.service, PLATFORM_USER):
            return Verdict(False, f"{declared.service}'s declared durable made by {maker}", violation=True)
        if not consumer.durable or consumer.filter_subjects != (declared.filter_subject,) or consumer.deliver_subject:
            return Verdict(False, f"{declared.service}'s declared durable with other settings", violation=service)
        return Verdict(True, f"{declared.service}'s declared durable")
    if consumer.creator == PLATFORM_USER:
        return Verdict(True, "the platform's own")
    if consumer.creator is None:
        return Verdict(False, "not declared, and made while no guard watched")
    if consumer.deliver_subject and not consumer.deliver_subject.startswith(inbox_prefix(maker) + "."):
        why = f"made by {maker} to deliver outside its inbox (to {consumer.deliver_subject})"
        return Verdict(False, why, violation=True)
    if consumer.durable:
        return Verdict(False, f"an undeclared durable consumer made by {maker}", violation=True)
    spec = STREAMS_BY_NAME.get(consumer.stream)
    if spec is None or not reads(consumer.creator, spec):
        return Verdict(False, f"made by {maker}, which does not read {consumer.stream}", violation=True)
    if not 0 < consumer.inactive_threshold_s <= max_inactive_s:
        why = f"made by {maker} to outlive it (inactive threshold {consumer.inactive_threshold_s:g} s)"
        return Verdict(False, why, violation=True)
    if kept_of_creator >= quota:
        return Verdict(False, f"over {maker}'s quota of {quota} consumers on {consumer.stream}", violation=True)
    return Verdict(True, f"{maker}'s ephemeral consumer")
