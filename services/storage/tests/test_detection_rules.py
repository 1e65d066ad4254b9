"""Each detection rule on a scripted attack, and on normal traffic of the same length (no I/O).

Normal traffic follows the Locust users' mix (loadtests/parley_load): users log in from their own
address and now and then a second one (home, office), refresh, send a few messages a minute with
pauses, change a password now and then from a known address; one typo-prone user fails a login;
users join a few channels and write direct messages to a few colleagues, one exports their data
from home; operators erase one account and set a 30-day retention; a roll-out is reviewed for an
hour and approved by an account made a month ago. Each
test counts the normal scenario's findings (false positives) and asserts there are none.
"""

from __future__ import annotations

import itertools
import random

import pytest

from parley_storage.detection import Anomaly, AnomalyKind, DetectionSettings, Rules
from parley_storage.detection import state as detection_state

ids = (f"e{n}" for n in itertools.count())


def rules(*people: str) -> Rules:
    """The rules, having read the registrations of `people` (a month ago): the behaviour rules
    judge an account once its registration says it is a person's, not the platform's prober."""
    r = Rules(DetectionSettings())
    for user_id in people:
        r.account_registered(at=-30 * 86400.0, user_id=user_id, event_id=next(ids))
    return r


def test_password_spraying_fires_on_many_accounts_from_one_source_and_not_on_typos() -> None:
    attack, normal = rules(), rules()
    found = [
        attack.login_failed(at=10.0 * n, source="203.0.113.9", username=f"user{n}", event_id=next(ids))
        for n in range(12)
    ]
    hits = [a for a in found if a is not None]
    assert [a.kind for a in hits] == [AnomalyKind.PASSWORD_SPRAYING]  # once per source and window
    assert hits[0].evidence["accounts"] == "10"
    assert hits[0].source == "203.0.113.9"
    assert "10 different accounts" in hits[0].why
    assert hits[0].score >= 1.0
    # The same length of normal traffic: 12 typos by 6 users, each from their own address.
    quiet = [
        normal.login_failed(at=10.0 * n, source=f"198.51.100.{n % 6}", username=f"user{n % 6}", event_id=next(ids))
        for n in range(12)
    ]
    assert [a for a in quiet if a is not None] == []


def test_a_sensitive_change_after_a_login_from_a_new_source() -> None:
    r = rules()
    r.session_started(at=0.0, session_id="s1", user_id="u1", source="10.0.0.1", event_id=next(ids))
    # The account's usual source: a password change from there is normal.
    r.session_started(at=100.0, session_id="s2", user_id="u1", source="10.0.0.1", event_id=next(ids))
    assert r.sensitive_change(at=110.0, user_id="u1", what="password changed", event_id=next(ids)) is None
    # A new source, then the second factor reset a minute later.
    r.session_started(at=200.0, session_id="s3", user_id="u1", source="192.0.2.66", event_id=next(ids))
    found = r.sensitive_change(at=260.0, user_id="u1", what="second factor reset", event_id=next(ids))
    assert found is not None
    assert found.kind == AnomalyKind.NEW_SOURCE_SENSITIVE_CHANGE
    assert found.session_id == "s3"
    assert found.evidence["new_source"] == "192.0.2.66"
    assert "never used" in found.why
    # One finding per such login; a change after the window is quiet.
    assert r.sensitive_change(at=270.0, user_id="u1", what="password changed", event_id=next(ids)) is None
    r.session_started(at=300.0, session_id="s4", user_id="u1", source="192.0.2.67", event_id=next(ids))
    assert r.sensitive_change(at=300.0 + 3601, user_id="u1", what="password changed", event_id=next(ids)) is None


def test_a_first_login_then_a_password_change_is_onboarding_not_an_anomaly() -> None:
    r = rules()
    r.session_started(at=0.0, session_id="s1", user_id="new", source="10.0.0.7", event_id=next(ids))
    assert r.sensitive_change(at=30.0, user_id="new", what="password changed", event_id=next(ids)) is None


def test_one_session_from_two_sources_at_once() -> None:
    r = rules()
    r.session_started(at=0.0, session_id="s1", user_id="u1", source="10.0.0.1", event_id=next(ids))
    found = r.session_refreshed(at=40.0, session_id="s1", user_id="u1", source="192.0.2.5", event_id=next(ids))
    assert found is not None
    assert found.kind == AnomalyKind.SESSION_TWO_SOURCES
    assert found.session_id == "s1"
    assert found.evidence["first_source"] == "10.0.0.1"
    assert found.evidence["second_source"] == "192.0.2.5"
    # A phone that moved networks between two refreshes 15 minutes apart is not two places at once.
    r.session_started(at=0.0, session_id="s2", user_id="u2", source="10.0.0.2", event_id=next(ids))
    assert r.session_refreshed(at=900.0, session_id="s2", user_id="u2", source="10.9.9.9", event_id=next(ids)) is None


def _send(r: Rules, sender: str, times: list[float]) -> list[Anomaly]:
    return [a for t in times if (a := r.message_posted(at=t, sender_id=sender, event_id=next(ids))) is not None]


def test_send_rate_far_above_the_accounts_own_baseline() -> None:
    r = rules("u1")
    rng = random.Random(7)
    # An hour of 2 to 8 messages a minute: the baseline.
    baseline = [60.0 * m + rng.uniform(0, 59) for m in range(60) for _ in range(rng.randint(2, 8))]
    assert _send(r, "u1", sorted(baseline)) == []
    burst = [3600.0 + n * 0.5 for n in range(100)]  # 100 in 50 seconds
    found = _send(r, "u1", burst)
    assert [a.kind for a in found] == [AnomalyKind.SEND_RATE]
    assert float(found[0].evidence["baseline_mean"]) < 8
    assert found[0].evidence["baseline"] == "account"
    assert "usual" in found[0].why


def test_a_busy_accounts_usual_rate_is_its_baseline() -> None:
    r = rules("bot")
    # 40 to 50 a minute for an hour (a bot or a very busy channel): above the floor, but usual.
    rng = random.Random(3)
    times = sorted(60.0 * m + rng.uniform(0, 59) for m in range(60) for _ in range(rng.randint(40, 50)))
    found = _send(r, "bot", times)
    # Its first minutes are above the floor before any baseline exists; then it is quiet.
    assert all(a.at < 600 for a in found)


def test_a_bot_flooding_a_quiet_channel_at_its_own_usual_rate() -> None:
    """Far above the channel's baseline, though not above its own: the second baseline."""
    r = rules("bot", *(f"p{n}" for n in range(5)))
    rng = random.Random(5)
    # An hour: the bot posts 40 to 50 a minute into its own channel; people write 0 to 3 a minute in general.
    for m in range(60):
        for t in sorted(60.0 * m + rng.uniform(0, 59) for _ in range(rng.randint(40, 50))):
            r.message_posted(at=t, sender_id="bot", event_id=next(ids), channel_id="builds")
        for t in sorted(60.0 * m + rng.uniform(0, 59) for _ in range(rng.randint(0, 3))):
            r.message_posted(at=t, sender_id=f"p{rng.randint(0, 4)}", event_id=next(ids), channel_id="general")
    # Normal, the same length: a minute more of the bot in its own channel.
    usual = [
        r.message_posted(at=3600.0 + n, sender_id="bot", event_id=next(ids), channel_id="builds") for n in range(45)
    ]
    assert [a for a in usual if a is not None] == []
    # The attack: as many in a minute into general.
    flood = [
        r.message_posted(at=3660.0 + n, sender_id="bot", event_id=next(ids), channel_id="general") for n in range(45)
    ]
    [found] = [a for a in flood if a is not None]
    assert found.kind == AnomalyKind.SEND_RATE
    assert found.evidence["baseline"] == "channel"
    assert found.evidence["channel_id"] == "general"
    assert found.evidence["messages_in_bucket"] == "31"  # over the floor of 30
    assert float(found.evidence["baseline_mean"]) < 3
    assert "into channel general, which usually hears" in found.why


def test_normal_traffic_of_the_same_length_finds_nothing() -> None:
    """The Locust mix for the scenarios' length: every rule fed, no finding (false positives: 0)."""
    r, rng = rules(*(f"u{user}" for user in range(20))), random.Random(11)
    found: list[Anomaly | None] = []
    for user in range(20):
        uid, home, office = f"u{user}", f"10.1.{user}.1", f"10.2.{user}.1"
        # Known addresses (yesterday's sessions), then today from home, then the office again.
        for at, session, address in (
            (-86400.0, "y", office),
            (-43200.0, "z", home),
            (0.0, "a", home),
            (1800.0, "b", office),
        ):
            found.append(
                r.session_started(at=at, session_id=f"{uid}-{session}", user_id=uid, source=address, event_id=next(ids))
            )
        for t in range(900, 3600, 900):
            found.append(
                r.session_refreshed(at=float(t), session_id=f"{uid}-a", user_id=uid, source=home, event_id=next(ids))
            )
        times = sorted(60.0 * m + rng.uniform(0, 59) for m in range(60) for _ in range(rng.randint(0, 6)))
        found.extend(
            r.message_posted(at=t, sender_id=uid, event_id=next(ids), channel_id=f"team{rng.randint(0, 3)}")
            for t in times
        )
        if user % 5 == 0:
            found.append(r.sensitive_change(at=2000.0, user_id=uid, what="password changed", event_id=next(ids)))
        # A few channels joined over the hour, a few direct conversations with colleagues.
        for _ in range(rng.randint(1, 5)):
            channel = f"c{rng.randint(0, 40)}"
            found.append(r.member_joined(at=rng.uniform(0, 3600), user_id=uid, channel_id=channel, event_id=next(ids)))
        for peer in rng.sample([p for p in range(20) if p != user], 4):
            dm = f"dm-{min(user, peer)}-{max(user, peer)}"
            r.direct_channel_created(channel_id=dm, members=frozenset({uid, f"u{peer}"}))
            for t in sorted(rng.uniform(0, 3600) for _ in range(rng.randint(1, 6))):
                found.append(r.direct_message(at=t, sender_id=uid, channel_id=dm, event_id=next(ids)))
        if user == 7:  # an export from home, a known address
            found.append(
                r.sensitive_change(
                    at=2500.0, user_id=uid, what="data exported", event_id=next(ids), read_beside_auth=True
                )
            )
    for n in range(3):
        found.append(r.login_failed(at=100.0 * n, source="10.1.3.1", username="u3", event_id=next(ids)))
    found.append(r.user_erased(at=100.0, actor="platform", user_id="gone", event_id=next(ids)))
    found.append(r.retention_set(at=200.0, actor="platform", channel_id="c1", days=30, event_id=next(ids)))
    found.append(r.retention_set(at=200.0, actor="platform", channel_id="c2", days=0, event_id=next(ids)))
    found.extend(r.account_registered(at=-30 * 86400.0, user_id="bob", event_id=next(ids)))
    r.rollout_planned(at=0.0, rollout_id="r1", actor="alice", event_id=next(ids))
    found.extend(r.rollout_approved(at=3600.0, rollout_id="r1", actor="bob", event_id=next(ids)))
    false_positives = [a for a in found if a is not None]
    print(f"\n[detection rules] an hour of 20 users' normal traffic: {len(false_positives)} false positives")
    assert false_positives == [], [a.why for a in false_positives]


def test_operator_actions_outside_their_pattern() -> None:
    r = rules()
    erased = [r.user_erased(at=60.0 * n, actor="platform", user_id=f"u{n}", event_id=next(ids)) for n in range(6)]
    hits = [a for a in erased if a is not None]
    assert [a.kind for a in hits] == [AnomalyKind.MASS_ERASURE]
    assert hits[0].evidence["erased_accounts"] == "5"
    short = r.retention_set(at=0.0, actor="platform", channel_id="c1", days=1, event_id=next(ids))
    assert short is not None
    assert short.kind == AnomalyKind.SHORT_RETENTION
    assert "1 day" in short.why
    r.rollout_planned(at=1000.0, rollout_id="r9", actor="user:mallory", event_id=next(ids))
    [rushed] = r.rollout_approved(at=1090.0, rollout_id="r9", actor="user:mallory2", event_id=next(ids))
    assert rushed.kind == AnomalyKind.RUSHED_ROLLOUT
    assert rushed.evidence["seconds_to_approval"] == "90.0"


def test_thresholds_and_responses_come_from_the_deployments_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_DETECT_SPRAYING_ACCOUNTS", "3")
    monkeypatch.setenv("PARLEY_DETECT_RESPONSES", '{"session_two_sources": "alert", "send_rate": "revoke_session"}')
    settings = DetectionSettings()
    r = Rules(settings)
    found = [r.login_failed(at=float(n), source="s", username=f"n{n}", event_id=next(ids)) for n in range(3)]
    assert found[-1] is not None
    assert found[-1].kind == AnomalyKind.PASSWORD_SPRAYING
    assert settings.response(AnomalyKind.SESSION_TWO_SOURCES) == "alert"
    assert settings.response(AnomalyKind.SEND_RATE) == "alert"  # no session to revoke: only an alert
    assert settings.response(AnomalyKind.NEW_SOURCE_SENSITIVE_CHANGE) == "revoke_session"
    assert settings.response(AnomalyKind.PASSWORD_SPRAYING) == "slow_source"
    monkeypatch.setenv("PARLEY_DETECT_RESPONSES", '{"session_two_sources": "slow_source"}')
    assert DetectionSettings().response(AnomalyKind.SESSION_TWO_SOURCES) == "alert"  # it names no source to slow


def test_a_replay_finds_the_same_ids() -> None:
    def run() -> list[str]:
        r = rules()
        r.session_started(at=0.0, session_id="s1", user_id="u1", source="a", event_id="x1")
        found = r.session_refreshed(at=1.0, session_id="s1", user_id="u1", source="b", event_id="x2")
        assert found is not None
        return [found.event_id]

    assert run() == run()


def test_state_follows_the_active_accounts_not_the_whole_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detection_state, "SWEEP_EVERY", 100)
    r = rules()
    for n in range(1000):  # a thousand one-off sessions, a minute apart
        r.session_started(at=60.0 * n, session_id=f"s{n}", user_id=f"u{n % 10}", source="10.0.0.1", event_id=next(ids))
    assert len(r._sessions) <= 100  # only those used within the two-sources window, and the newest
    # What matters is kept: a session used a moment ago, from elsewhere, still fires.
    found = r.session_refreshed(at=60.0 * 999 + 5, session_id="s999", user_id="u9", source="192.0.2.1", event_id="x")
    assert found is not None


def test_many_channels_joined_in_a_short_time_and_not_a_few() -> None:
    r = rules("u1", "u2", "crawler")
    # Normal, same length: one account joins 14 channels in ten minutes (under the threshold),
    # another joins the same channel again and again.
    quiet = [r.member_joined(at=40.0 * n, user_id="u1", channel_id=f"c{n}", event_id=next(ids)) for n in range(14)]
    quiet += [r.member_joined(at=30.0 * n, user_id="u2", channel_id="c1", event_id=next(ids)) for n in range(20)]
    assert [a for a in quiet if a is not None] == []
    # The attack: 20 channels in 100 seconds.
    joined = [r.member_joined(at=5.0 * n, user_id="crawler", channel_id=f"c{n}", event_id=next(ids)) for n in range(20)]
    hits = [a for a in joined if a is not None]
    assert [a.kind for a in hits] == [AnomalyKind.MANY_CHANNELS_JOINED]  # once per account and window
    assert hits[0].user_id == "crawler"
    assert hits[0].evidence["channels"] == "15"
    assert "joined 15 channels within 600s" in hits[0].why


def test_direct_messages_to_many_people_and_not_a_long_conversation() -> None:
    r = rules("a", "spammer")
    for n in range(20):
        r.direct_channel_created(channel_id=f"dm{n}", members=frozenset({"spammer", f"v{n}"}))
    r.direct_channel_created(channel_id="chat", members=frozenset({"a", "b"}))
    # Normal, same length: 60 messages in one conversation; a message in an ordinary channel.
    quiet = [r.direct_message(at=2.0 * n, sender_id="a", channel_id="chat", event_id=next(ids)) for n in range(60)]
    quiet.append(r.direct_message(at=1.0, sender_id="a", channel_id="general", event_id=next(ids)))
    assert [a for a in quiet if a is not None] == []
    sent = [
        r.direct_message(at=3.0 * n, sender_id="spammer", channel_id=f"dm{n}", event_id=next(ids)) for n in range(20)
    ]
    hits = [a for a in sent if a is not None]
    assert [a.kind for a in hits] == [AnomalyKind.MANY_USERS_MESSAGED]
    assert hits[0].evidence["recipients"] == "15"
    assert "v0" in hits[0].evidence["recipient_ids"]
    assert "15 different people" in hits[0].why


@pytest.mark.parametrize("login_read_first", [True, False])
def test_a_data_export_after_a_login_from_a_new_source(login_read_first: bool) -> None:
    """The export is on STORE and the login on AUTH, read side by side: either may come first."""
    r = rules()
    r.session_started(at=0.0, session_id="s1", user_id="u1", source="10.0.0.1", event_id="usual")

    def new_login() -> Anomaly | None:
        return r.session_started(at=100.0, session_id="s2", user_id="u1", source="192.0.2.66", event_id="new")

    def export() -> Anomaly | None:
        return r.sensitive_change(at=130.0, user_id="u1", what="data exported", event_id="x", read_beside_auth=True)

    found = [new_login(), export()] if login_read_first else [export(), new_login()]
    [anomaly] = [a for a in found if a is not None]
    assert anomaly.kind == AnomalyKind.NEW_SOURCE_SENSITIVE_CHANGE
    assert anomaly.session_id == "s2"
    assert anomaly.evidence["change"] == "data exported"
    assert anomaly.evidence["seconds_after_login"] == "30.0"
    assert anomaly.triggers == ("new", "x")  # the same id in either order


def test_an_export_before_the_login_from_a_new_source_is_not_explained_by_it() -> None:
    r = rules()
    r.session_started(at=0.0, session_id="s1", user_id="u1", source="10.0.0.1", event_id=next(ids))
    exported = r.sensitive_change(
        at=50.0, user_id="u1", what="data exported", event_id=next(ids), read_beside_auth=True
    )
    later = r.session_started(at=100.0, session_id="s2", user_id="u1", source="192.0.2.66", event_id=next(ids))
    assert exported is None
    assert later is None


@pytest.mark.parametrize("registration_read_first", [True, False])
def test_a_rollout_approved_by_a_new_account(registration_read_first: bool) -> None:
    """The registration is on AUTH and the approval on PATCH, read side by side."""
    r = rules()
    day = 86400.0
    r.rollout_planned(at=10 * day, rollout_id="r1", actor="olga", event_id="planned")

    def registered() -> list[Anomaly]:
        return r.account_registered(at=10 * day - 3600, user_id="newbie", event_id="registered")

    def approved() -> list[Anomaly]:
        return r.rollout_approved(at=10 * day + 3600, rollout_id="r1", actor="newbie", event_id="approved")

    found = registered() + approved() if registration_read_first else approved() + registered()
    [anomaly] = found  # reviewed for an hour: not rushed
    assert anomaly.kind == AnomalyKind.NEW_ACCOUNT_APPROVAL
    assert anomaly.evidence["account_age_s"] == "7200"
    assert anomaly.user_id == "newbie"
    assert "an account made 7200s before" in anomaly.why
    assert anomaly.triggers == ("registered", "approved")
    # An account older than the threshold approves without a finding.
    r.account_registered(at=0.0, user_id="veteran", event_id=next(ids))
    r.rollout_planned(at=10 * day, rollout_id="r2", actor="olga", event_id=next(ids))
    assert r.rollout_approved(at=10 * day + 3600, rollout_id="r2", actor="veteran", event_id=next(ids)) == []


def _behave(r: Rules, user_id: str) -> list[Anomaly]:
    """What the roll-out prober does at its busiest, then more: 100 sends in 50 seconds, 20
    channels joined and 20 people written to directly in a minute."""
    found = _send(r, user_id, [n * 0.5 for n in range(100)])
    for n in range(20):
        r.direct_channel_created(channel_id=f"{user_id}-dm{n}", members=frozenset({user_id, f"v{n}"}))
        found.append(r.member_joined(at=3.0 * n, user_id=user_id, channel_id=f"c{n}", event_id=next(ids)))
        found.append(r.direct_message(at=3.0 * n, sender_id=user_id, channel_id=f"{user_id}-dm{n}", event_id=next(ids)))
    return [a for a in found if a is not None]


@pytest.mark.parametrize("registration_read_first", [True, False])
def test_the_platforms_prober_is_left_out_of_the_behaviour_rules_and_a_person_doing_the_same_is_not(
    registration_read_first: bool,
) -> None:
    """The registrations are on AUTH and the sends on MSG, read side by side: a finding read
    before its account's registration waits for it."""
    r = rules()

    def registered() -> list[Anomaly]:
        prober = r.account_registered(at=0.0, user_id="prober", event_id=next(ids), synthetic=True)
        person = r.account_registered(at=0.0, user_id="person", event_id=next(ids))
        return prober + person

    if registration_read_first:
        found = registered() + _behave(r, "prober") + _behave(r, "person")
    else:
        found = _behave(r, "prober") + _behave(r, "person")
        assert found == []  # neither judged yet
        found = registered()
    assert sorted(a.kind for a in found) == sorted(
        [AnomalyKind.SEND_RATE, AnomalyKind.MANY_CHANNELS_JOINED, AnomalyKind.MANY_USERS_MESSAGED]
    )
    assert {a.user_id for a in found} == {"person"}
    # The prober's rules still watch its sessions: its credential used from two places is found.
    r.session_started(at=100.0, session_id="p1", user_id="prober", source="10.0.0.5", event_id=next(ids))
    assert r.session_refreshed(at=130.0, session_id="p1", user_id="prober", source="203.0.113.7", event_id=next(ids))
