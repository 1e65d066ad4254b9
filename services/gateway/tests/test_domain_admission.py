"""The gateway's admission decisions (parley_gateway.domain.admission), without servers: budgets
per address and per user with the time passed in, request size, live-stream caps per user."""

from __future__ import annotations

import pytest

from parley_core.errors import ResourceExhausted
from parley_gateway.domain.admission import Admission, LiveStreamCaps, RateLimited
from parley_gateway.limits import GatewayLimits

NOW = 100.0


def admission(**limits: float) -> Admission:
    return Admission(GatewayLimits(**limits))  # type: ignore[arg-type]


def test_admission_checks_source_and_user_separately() -> None:
    check = admission(source_rate=10, source_burst=5, user_rate=1, user_burst=2)
    check.admit(source="ipv4:10.0.0.1", user_id="alice", now=NOW)
    check.admit(source="ipv4:10.0.0.1", user_id="alice", now=NOW)
    with pytest.raises(RateLimited) as refused:
        check.admit(source="ipv4:10.0.0.1", user_id="alice", now=NOW)
    assert refused.value.retry_after_s == pytest.approx(1.0)
    assert str(refused.value) == "too many requests from this user; retry in 1000 ms"
    check.admit(source="ipv4:10.0.0.1", user_id="bob", now=NOW)  # another user from the same address
    for _ in range(5):
        check.admit(source="ipv4:10.0.0.2", user_id=None, now=NOW)
    with pytest.raises(RateLimited, match=r"^too many requests from this address; retry in 100 ms$"):
        check.admit(source="ipv4:10.0.0.2", user_id=None, now=NOW)


def test_a_budget_refills_with_the_time_passed_in() -> None:
    check = admission(source_rate=1000, source_burst=1000, user_rate=4, user_burst=1)
    check.admit(source="ipv4:10.0.0.1", user_id="alice", now=NOW)
    with pytest.raises(RateLimited) as refused:
        check.admit(source="ipv4:10.0.0.1", user_id="alice", now=NOW + 0.125)
    assert refused.value.retry_after_s == 0.125  # half a token saved up of the four a second
    check.admit(source="ipv4:10.0.0.1", user_id="alice", now=NOW + 0.25)


def test_the_wait_a_refusal_names_is_rounded_up_to_the_millisecond() -> None:
    check = admission(source_rate=1000, source_burst=1000, user_rate=3, user_burst=1)
    check.admit(source="ipv4:10.0.0.1", user_id="alice", now=NOW)
    with pytest.raises(RateLimited) as refused:
        check.admit(source="ipv4:10.0.0.1", user_id="alice", now=NOW)
    assert refused.value.retry_after_s == 0.334  # a third of a second: never a retry that comes too early


def test_an_address_over_its_budget_is_refused_before_the_users_budget_is_spent() -> None:
    check = admission(source_rate=1, source_burst=1, user_rate=1, user_burst=1)
    check.admit(source="ipv4:10.0.0.1", user_id=None, now=NOW)
    with pytest.raises(RateLimited, match="address"):
        check.admit(source="ipv4:10.0.0.1", user_id="alice", now=NOW)
    check.admit(source="ipv4:10.0.0.2", user_id="alice", now=NOW)  # alice's budget was untouched


def test_a_request_over_the_size_limit_is_refused_with_both_sizes() -> None:
    check = admission(max_request_bytes=2048)
    check.check_size(2048)
    with pytest.raises(ResourceExhausted, match=r"^request is 2049 bytes; the limit is 2048 bytes$"):
        check.check_size(2049)


def test_live_stream_caps_are_per_user_and_a_closed_stream_gives_its_slot_back() -> None:
    caps = LiveStreamCaps(GatewayLimits(live_streams_per_user=2, live_channels_per_stream=3))
    with caps.held("mallory"), caps.held("mallory"):
        assert caps.open_streams == 2
        with pytest.raises(ResourceExhausted, match="at most 2 live streams per user"), caps.held("mallory"):
            pass
        with caps.held("bob"):  # another user is not affected
            assert caps.open_streams == 3
    assert caps.open_streams == 0
    with pytest.raises(RuntimeError), caps.held("mallory"):
        raise RuntimeError("the stream failed")
    with caps.held("mallory"), caps.held("mallory"):  # both slots free again
        pass
    caps.check_channels(3)
    with pytest.raises(ResourceExhausted, match="at most 3 channels per live stream"):
        caps.check_channels(4)
