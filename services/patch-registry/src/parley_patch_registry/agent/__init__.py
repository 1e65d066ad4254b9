"""The node agent: runs a host's service instances and carries out roll-out steps on them."""
