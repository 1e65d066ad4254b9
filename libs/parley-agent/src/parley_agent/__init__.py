"""The node agent: runs a host's service instances and carries out roll-out steps on them.

A library of its own (not part of the patch registry) so that `parley up`, tests and load runs
can run services through it; it talks to the registry only over gRPC.
"""

from parley_agent.front_door import FrontDoor
from parley_agent.installer import TufSource, fetch_release, install_version
from parley_agent.node_agent import AgentTimeouts, Door, Instance, NodeAgent, door_for
from parley_agent.shared_port import SharedPort

__all__ = [
    "AgentTimeouts",
    "Door",
    "FrontDoor",
    "Instance",
    "NodeAgent",
    "SharedPort",
    "TufSource",
    "door_for",
    "fetch_release",
    "install_version",
]
