"""How storage records its decided facts (domain/) on its own STORE stream: each as codec.py
writes it, after whatever its subject holds (a fact names its aggregate; none of them is
decided at a version). Through the EventLog where storage's projection folds the fact, so the
caller reads its own write; else on the bus."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Protocol

from parley_core.actor import Actor
from parley_core.envelope import NewEvent
from parley_storage import codec
from parley_storage.detection.findings import Finding
from parley_storage.domain import Fact

STORAGE = Actor.service("storage")


class AppendsAfterLast(Protocol):
    """parley_core's EventBus and EventLog both."""

    def append_after_last(self, subject: str, event: NewEvent) -> Awaitable[object]: ...


async def record(log: AppendsAfterLast, facts: Iterable[Fact | Finding], actor: Actor = STORAGE) -> None:
    """Append each fact in order (a failure leaves the later ones unwritten: the caller retries)."""
    for fact in facts:
        await log.append_after_last(codec.subject_of(fact), codec.new_event(fact, actor))
