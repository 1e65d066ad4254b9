"""Synthetic transactions through each new instance whose gate is pending, once per gate phase:
evidence for the registry's gate when users send little (parley_agent.probe makes the calls)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from parley_agent.instances import Instance
from parley_agent.probe import TRANSACTIONS, Prober, ProbeUnavailable
from parley_core.pki import Pki

log = logging.getLogger(__name__)

# Synthetic transactions per new instance while its gate is pending, and how many run at once.
PROBE_TRANSACTIONS = 30
PROBE_WORKERS = 3
# The prober's account, in the file it had when only messaging was probed (an agent keeps its account).
PROBER_STATE_FILE = "probe-messaging.json"


@dataclass(kw_only=True, eq=False)
class GateProbes:
    pki: Pki
    environment: Mapping[str, str]
    data_dir: Path
    host: str
    warn: Callable[[str], None]
    pending: dict[str, int] = field(default_factory=dict, init=False)  # new instance -> its gate phase's share
    _prober: Prober | None = field(default=None, init=False)  # one account for every service's transactions
    _probing: dict[tuple[str, int], asyncio.Task[None]] = field(default_factory=dict, init=False)

    def start(self, instances: Mapping[str, Instance]) -> None:
        """Synthetic transactions through each new instance whose gate is pending (once a phase)."""
        for instance_id, weight in self.pending.items():
            instance = instances.get(instance_id)
            if instance is None or not instance.serving or instance.service not in TRANSACTIONS:
                continue
            if (instance_id, weight) not in self._probing:
                self._probing[(instance_id, weight)] = asyncio.create_task(self._probe(instance, weight))

    async def stop(self) -> None:
        for task in self._probing.values():
            task.cancel()
        await asyncio.gather(*self._probing.values(), return_exceptions=True)

    async def _probe(self, instance: Instance, weight: int) -> None:
        if self._prober is None:
            self._prober = Prober(
                pki=self.pki,
                environment=self.environment,
                state_file=self.data_dir / PROBER_STATE_FILE,
                host=self.host,
            )
        prober = self._prober
        budget = iter(range(PROBE_TRANSACTIONS))

        async def worker() -> int:
            done = 0
            while self.pending.get(instance.instance_id) == weight and next(budget, None) is not None:
                if instance.process is None or instance.process.returncode is not None:
                    break
                done += await prober.transaction(instance.service, instance.address)
            return done

        try:
            succeeded = sum(await asyncio.gather(*(worker() for _ in range(PROBE_WORKERS))))
        except ProbeUnavailable as error:
            self.warn(f"no synthetic calls through {instance.instance_id}: {error}")
            return
        log.info("synthetic transactions through %s: %d succeeded", instance.instance_id, succeeded)
