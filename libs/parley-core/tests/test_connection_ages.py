"""Which connections a source holds beyond the per-source cap (parley_core.connection_ages),
without sockets: its oldest stay, age being the sweep that first saw a connection."""

from __future__ import annotations

from parley_core.connection_ages import ConnectionAges

A, B = "ipv4:10.0.0.1", "ipv4:10.0.0.2"


def test_a_source_at_its_cap_keeps_everything_and_one_over_loses_its_newest() -> None:
    ages = ConnectionAges(2)
    assert ages.beyond_cap({A: [(10, 3), (11, 4)], B: [(12, 5)]}) == {}
    assert ages.beyond_cap({A: [(10, 3), (11, 4), (13, 6)], B: [(12, 5)]}) == {A: [(13, 6)]}


def test_age_is_the_sweep_that_first_saw_a_connection_not_its_inode() -> None:
    ages = ConnectionAges(2)
    ages.beyond_cap({A: [(500, 3), (501, 4)]})
    # Accepted later on another CPU, from a lower batch of inodes: still the newest.
    assert ages.beyond_cap({A: [(500, 3), (501, 4), (7, 8), (8, 9)]}) == {A: [(7, 8), (8, 9)]}


def test_a_closed_connection_is_forgotten_and_its_reused_inode_is_new() -> None:
    ages = ConnectionAges(1)
    ages.beyond_cap({A: [(20, 3)]})
    ages.beyond_cap({A: [(21, 4)]})  # 20 closed; 21 is the oldest now
    assert ages.beyond_cap({A: [(21, 4), (20, 5)]}) == {A: [(20, 5)]}  # 20 again: a new connection
