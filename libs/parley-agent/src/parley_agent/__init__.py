"""The node agent: runs a host's service instances and carries out roll-out steps on them.

A library of its own (not part of the patch registry) so that `parley up`, tests and load runs
can run services through it; it talks to the registry only over gRPC.
"""

from parley_agent.front_door import FrontDoor
from parley_agent.installer import TufSource, fetch_release, install_version
from parley_agent.node_agent import AgentTimeouts, Instance, NodeAgent

__all__ = ["AgentTimeouts", "FrontDoor", "Instance", "NodeAgent", "TufSource", "fetch_release", "install_version"]
