"""The behaviour rules: a person's use of their account (MSG): send rate, channels joined, people
messaged. They leave out the platform's synthetic accounts."""

from __future__ import annotations

import math
from typing import NamedTuple

from parley_storage.detection.bursts import JOINS, MESSAGED
from parley_storage.detection.shapes import Rate
from parley_storage.detection.state import RuleState
from parley_storage.detection.vocabulary import Anomaly, AnomalyKind, subject_token


class _Exceeded(NamedTuple):
    """A sender's messages in a bucket above a baseline's threshold: the account's own, or the
    channel's it sent them into (`channel_id`)."""

    messages: int  # in the bucket
    baseline: Rate
    threshold: float
    floor: int
    channel_id: str = ""


class BehaviourRules(RuleState):
    # -- the behaviour rules: a person's use of their account (MSG) -----------------------------

    def message_posted(self, *, at: float, sender_id: str, event_id: str, channel_id: str = "") -> Anomaly | None:
        self._tick(at)
        if sender_id in self._synthetic:
            return None
        return self._behaviour(self._send_rate(at=at, sender_id=sender_id, event_id=event_id, channel_id=channel_id))

    def member_joined(self, *, at: float, user_id: str, channel_id: str, event_id: str) -> Anomaly | None:
        self._tick(at)
        if user_id in self._synthetic:
            return None
        return self._behaviour(self._burst(JOINS, user_id, at=at, items=(channel_id,), event_id=event_id))

    def direct_message(self, *, at: float, sender_id: str, channel_id: str, event_id: str) -> Anomaly | None:
        """A message in a direct conversation counts once for each other member."""
        members = self._direct.get(channel_id)
        if sender_id in self._synthetic or members is None:  # a prober's, or not a direct conversation
            return None
        recipients = sorted(members - {sender_id})
        return self._behaviour(self._burst(MESSAGED, sender_id, at=at, items=recipients, event_id=event_id))

    def _behaviour(self, found: Anomaly | None) -> Anomaly | None:
        """A behaviour rule's finding about an account, once its registration says it is a person's."""
        if found is not None and found.user_id not in self._registered:
            self._unjudged_behaviour.setdefault(found.user_id, []).append(found)
            return None
        return found

    # -- send rate against the account's own baseline (MSG MessagePosted) -----------------------

    def _send_rate(self, *, at: float, sender_id: str, event_id: str, channel_id: str) -> Anomaly | None:
        """Fires once per account and bucket, on the first of its two baselines exceeded: its own
        past buckets, or the channel's (a burst into a channel that usually hears little)."""
        s = self.settings
        bucket = int(at // s.rate_bucket_s)
        rate = self._rates.setdefault(sender_id, Rate(bucket=bucket))
        if not rate.count_in(bucket, s):
            return None
        in_channel = 0
        if channel_id:
            channel = self._channel_rates.setdefault(channel_id, Rate(bucket=bucket))
            if channel.count_in(bucket, s):
                counted, sent = self._in_channel.get((channel_id, sender_id), (bucket, 0))
                in_channel = (sent if counted == bucket else 0) + 1
                self._in_channel[(channel_id, sender_id)] = (bucket, in_channel)
        if rate.fired_bucket == bucket:
            return None
        exceeded = self._exceeded(rate.count, rate, s.rate_floor)
        if exceeded is None and in_channel:
            exceeded = self._exceeded(in_channel, self._channel_rates[channel_id], s.rate_channel_floor, channel_id)
        if exceeded is None:
            return None
        rate.fired_bucket = bucket
        return self._rate_anomaly(exceeded, at=at, sender_id=sender_id, event_id=event_id)

    def _exceeded(self, count: int, baseline: Rate, floor: int, channel_id: str = "") -> _Exceeded | None:
        threshold = baseline.threshold(self.settings, floor)
        return _Exceeded(count, baseline, threshold, floor, channel_id) if count > threshold else None

    def _rate_anomaly(self, exceeded: _Exceeded, *, at: float, sender_id: str, event_id: str) -> Anomaly:
        count, baseline, threshold, floor, channel_id = exceeded
        s = self.settings
        mean, stddev = baseline.mean, math.sqrt(baseline.var)
        evidence = {
            "baseline": "channel" if channel_id else "account",
            "messages_in_bucket": str(count),
            "bucket_s": f"{s.rate_bucket_s:g}",
            "baseline_mean": f"{mean:.2f}",
            "baseline_stddev": f"{stddev:.2f}",
            "buckets_learned": str(baseline.buckets_seen),
            "threshold": f"{threshold:.1f}",
        }
        usual = f"{mean:.1f} ± {stddev:.1f}"
        if channel_id:
            evidence["channel_id"] = channel_id
            observed = f"into channel {channel_id}, which usually hears {usual} from everyone"
        else:
            observed = f"against this account's usual {usual}"
        return Anomaly(
            kind=AnomalyKind.SEND_RATE,
            key=subject_token(sender_id),
            subject=f"user:{sender_id}",
            evidence=evidence,
            score=count / threshold,
            why=(
                f"{count} messages in {s.rate_bucket_s:g}s {observed} (threshold: mean + {s.rate_deviations:g} "
                f"deviations, at least {floor})"
            ),
            at=at,
            triggers=(event_id,),
            user_id=sender_id,
        )

    # -- direct conversations, whose messages count towards many people messaged (MSG) ----------

    def direct_channel_created(self, *, channel_id: str, members: frozenset[str]) -> None:
        self._direct[channel_id] = members
