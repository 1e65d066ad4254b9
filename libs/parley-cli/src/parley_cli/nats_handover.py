"""A NATS cluster node of the first host handed over to a joined host.

`parley up --nats-cluster 3` runs the cluster's nodes on the first host (nats/node0, node1, …).
`parley host add NAME --nats-node` hands one of them (never node0) to the new host: the bundle
names the node (its server name, so JetStream sees the same peer) and the routes of the nodes
that stay, and the first host stops its own copy of that node for good, marking its folder
(`moved-to`) so neither its supervisor nor a later start runs it again. The joined host starts
the node with an empty store under the same name; JetStream's peers bring it up to date
(every stream has 3 replicas), as they would a node whose disk was replaced. Until it has
caught up the cluster runs on the other two nodes, which is why one node is handed over at a
time.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from parley_cli.host_bundle import BundleRefused
from parley_core.files import write_private_file

MOVED_MARKER = "moved-to"


def node_name(index: int) -> str:
    return f"parley-node{index}"


def moved_to(folder: Path) -> str | None:
    """The host a node of the first host was handed over to, or None while it runs here."""
    marker = folder / MOVED_MARKER
    return marker.read_text(encoding="utf-8").strip() if marker.is_file() else None


def choose_node(state: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """The next node the first host may hand over, and the routes of the nodes that stay.
    Refuses when the platform runs no cluster or keeps only node0."""
    nodes = state.get("nats", [])
    if len(nodes) < 3:
        raise BundleRefused(
            "a host runs a NATS node of a JetStream cluster: start the platform with `parley up --nats-cluster 3`"
        )
    here = [n for n in nodes if n.get("running") and n.get("route")]
    for index in range(1, len(nodes)):
        if moved_to(data_dir / "nats" / f"node{index}") is None and any(n["name"] == _state_name(index) for n in here):
            routes = [str(n["route"]) for n in here if n["name"] != _state_name(index)]
            return {"name": node_name(index), "index": index, "routes": routes}
    raise BundleRefused(
        "every NATS node but the first host's node0 runs on another host already (or is down): a cluster of "
        f"{len(nodes)} nodes hands over at most {len(nodes) - 1}"
    )


def hand_over(data_dir: Path, state: dict[str, Any], node: dict[str, Any], host: str) -> None:
    """Marks the node as moved, then stops the first host's copy (SIGTERM, a clean JetStream
    shutdown): the same server name must never run twice in the cluster."""
    index = int(node["index"])
    write_private_file(data_dir / "nats" / f"node{index}" / MOVED_MARKER, (host + "\n").encode())
    entry = next(n for n in state["nats"] if n["name"] == _state_name(index))
    if entry.get("pid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(entry["pid"]), signal.SIGTERM)


def _state_name(index: int) -> str:
    return f"nats-server-{index}"  # Platform.nats_name of a cluster node
