"""How often `parley up` restarts a crashing service: at most RESTART_LIMIT times in a row, the
count starting again once the service has run RESTART_RESET_AFTER_S since its last restart (the
count once never reset, so five crashes weeks apart left a service down for good)."""

from __future__ import annotations

from dataclasses import dataclass, field

RESTART_LIMIT = 5
RESTART_RESET_AFTER_S = 600.0


@dataclass
class RestartBudget:
    limit: int = RESTART_LIMIT
    reset_after_s: float = RESTART_RESET_AFTER_S
    used: dict[str, int] = field(default_factory=dict)  # restarts in a row, per service
    _last: dict[str, float] = field(default_factory=dict)  # when each was last restarted (monotonic)

    def take(self, service: str, now: float) -> bool:
        """`service` crashed at `now`: whether it is restarted (and counted), or its budget is spent."""
        if now - self._last.get(service, now) >= self.reset_after_s:
            self.used[service] = 0  # it ran long enough since its last restart: a fresh crash
        if self.used.get(service, 0) >= self.limit:
            return False
        self.used[service] = self.used.get(service, 0) + 1
        self._last[service] = now
        return True
