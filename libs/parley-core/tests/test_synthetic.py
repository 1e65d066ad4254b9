"""A synthetic account (the roll-out prober) is one the platform identity, or a joined host's
node agent, registered under a prober's name; the same name registered by anyone else is a
person's (made before auth reserved the range)."""

from __future__ import annotations

from parley_core.synthetic import is_host_prober_name, is_prober_name, is_synthetic_account, prober_username
from parley_core.topology import NODE_AGENT, PLATFORM_USER


def test_only_the_platform_identitys_and_node_agents_prober_names_are_synthetic() -> None:
    assert is_synthetic_account(username="canary-prober-0123456789", registered_by=PLATFORM_USER)
    assert is_synthetic_account(username="canary-prober-0123456789", registered_by=f"service:{NODE_AGENT}")
    assert not is_synthetic_account(username="canary-prober-0123456789", registered_by="service:gateway")
    assert is_synthetic_account(username="canary-prober", registered_by=PLATFORM_USER)  # before per-host names
    assert not is_synthetic_account(username="canary-prober-0123456789", registered_by="user:5f2a")
    assert not is_synthetic_account(username="alice", registered_by=PLATFORM_USER)
    assert not is_prober_name("canary-probes")


def test_a_hosts_prober_name_is_the_prefix_and_ten_hex_digits_of_its_hosts_name() -> None:
    made = prober_username("host-b")
    assert is_host_prober_name(made)
    assert is_prober_name(made)
    assert prober_username("host-b") == made != prober_username("host-c")
    for other in ("canary-prober", "canary-prober-it-support", made + "0", made.upper(), made[:-1]):
        assert not is_host_prober_name(other), other
