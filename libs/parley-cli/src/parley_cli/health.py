"""Health checks of running services: the node agent's own, so `parley status` sees what the agent sees."""

from parley_agent.health import check_health

__all__ = ["check_health"]
