"""Which NATS node `parley host add --nats-node` hands over, and when it refuses (no servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from parley_cli.host_bundle import BundleRefused, parse_services
from parley_cli.nats_handover import MOVED_MARKER, choose_node, moved_to


def cluster_state(size: int) -> dict[str, Any]:
    return {
        "nats": [
            {"name": f"nats-server-{i}", "route": f"127.0.0.1:{7000 + i}", "running": True, "pid": None}
            for i in range(size)
        ]
    }


def test_node1_is_handed_over_first_with_the_routes_of_the_nodes_that_stay(tmp_path: Path) -> None:
    node = choose_node(cluster_state(3), tmp_path)
    assert node["name"] == "parley-node1"
    assert node["routes"] == ["127.0.0.1:7000", "127.0.0.1:7002"]


def test_a_moved_node_is_skipped_and_node0_never_leaves(tmp_path: Path) -> None:
    state = cluster_state(3)
    for index in (1, 2):
        (tmp_path / "nats" / f"node{index}").mkdir(parents=True)
    (tmp_path / "nats" / "node1" / MOVED_MARKER).write_text("host-b\n")
    state["nats"][1]["running"] = False
    node = choose_node(state, tmp_path)
    assert node["name"] == "parley-node2"
    assert node["routes"] == ["127.0.0.1:7000"]
    assert moved_to(tmp_path / "nats" / "node1") == "host-b"
    (tmp_path / "nats" / "node2" / MOVED_MARKER).write_text("host-c\n")
    state["nats"][2]["running"] = False
    with pytest.raises(BundleRefused, match="node0"):
        choose_node(state, tmp_path)


def test_a_single_nats_server_has_no_node_to_hand_over(tmp_path: Path) -> None:
    with pytest.raises(BundleRefused, match="--nats-cluster 3"):
        choose_node(cluster_state(1), tmp_path)


def test_a_host_may_run_a_nats_node_alone_but_not_nothing() -> None:
    assert parse_services("", nats_node=True) == ()
    with pytest.raises(BundleRefused, match="--nats-node"):
        parse_services("")
