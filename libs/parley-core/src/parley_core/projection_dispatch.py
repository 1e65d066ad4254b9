"""The one dispatcher behind every replay: each event goes to the projection handlers in the
order they were added, and a handler that fails halts the projection rather than skip the event.

A projection that skipped an event it failed to apply would go on serving state that silently
differs from the log. So the first failure stops it where it is: the replay applies nothing
more, the process's health turns NOT_SERVING (the runner's `on_halt`), an ERROR log names the
stream, sequence, event type and error, and read-your-writes waiters get ProjectionHalted
(UNAVAILABLE, saying what to do) instead of waiting for a sequence that will never come.
An event of a type this version does not know (a newer version's, during a roll-out) is not a
failure: handlers meet it as UnknownEventType and it passes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from parley_core.bus_events import EventHandler, ReceivedEvent
from parley_core.envelope import UnknownEventType
from parley_core.errors import Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Halt:
    """Where and why a projection stopped."""

    stream: str
    stream_seq: int
    event_type: str
    error: str


OnHalt = Callable[[Halt], Awaitable[None]]


class ProjectionHalted(Unavailable):
    """This process's projection of a stream stopped at an event it could not apply. Its message
    reaches callers, so it names the place, not the error (the ERROR log line has that)."""

    def __init__(self, halt: Halt) -> None:
        super().__init__(
            f"this instance stopped applying {halt.stream} at stream sequence {halt.stream_seq}"
            f" ({halt.event_type or 'no event type'}; its log says why), so it cannot show changes made since:"
            " retry on another instance, and have an operator fix that event or the code and restart this one"
        )
        self.halt = halt


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` stands for one token, a final `>` for one or more."""
    wanted, parts = pattern.split("."), subject.split(".")
    for n, part in enumerate(wanted):
        if part == ">":
            return len(parts) > n
        if n >= len(parts) or part not in ("*", parts[n]):
            return False
    return len(parts) == len(wanted)


@dataclass(frozen=True)
class Projection:
    handler: EventHandler
    subjects: str | None  # only events on these subjects (None: all the replay reads)


@dataclass
class Dispatcher:
    stream: str
    on_halt: OnHalt | None = None
    projections: list[Projection] = field(default_factory=list)
    halted: Halt | None = None

    def add(self, handler: EventHandler, *, subjects: str | None = None) -> None:
        self.projections.append(Projection(handler, subjects))

    async def apply(self, event: ReceivedEvent) -> None:
        """Apply `event` to every projection in order; raises ProjectionHalted if one fails
        (and on every call after)."""
        if self.halted is not None:
            raise ProjectionHalted(self.halted)
        for projection in self.projections:
            if projection.subjects is not None and not subject_matches(projection.subjects, event.subject):
                continue
            try:
                await projection.handler(event)
            except UnknownEventType:
                log.warning(
                    "event of a type this version does not know passed",
                    extra={"stream": self.stream, "seq": event.stream_seq, "event_type": event.envelope.event_type},
                )
            except Exception as exc:
                raise ProjectionHalted(await self._halt(event, exc)) from exc

    async def _halt(self, event: ReceivedEvent, exc: Exception) -> Halt:
        halt = self.halted = Halt(self.stream, event.stream_seq, event.envelope.event_type, repr(exc)[:300])
        log.error(
            "projection halted: stream %s, sequence %d, event type %s: %r",
            self.stream,
            event.stream_seq,
            event.envelope.event_type,
            exc,
            exc_info=exc,
            extra={
                "stream": self.stream,
                "seq": event.stream_seq,
                "event_type": event.envelope.event_type,
                "subject": event.subject,
            },
        )
        if self.on_halt is not None:
            try:
                await self.on_halt(halt)
            except Exception:  # the halt stands (and is logged above) whatever its listener did
                log.exception("a projection halt's listener failed", extra={"stream": self.stream})
        return halt
