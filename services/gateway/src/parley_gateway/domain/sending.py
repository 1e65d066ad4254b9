"""Which of the clients' waiting sends go to messaging, and together (parley_gateway.send_batches
makes the calls): a send that finds no call in flight and none waiting goes at once, alone; the
sends that arrive meanwhile wait, and go together as soon as no call is in flight (no timer, so
no added latency when idle), or at once when more wait than one call may carry.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from parley_core.post_batch_limits import POST_BATCH_MAX_BYTES, POST_BATCH_MAX_ITEMS


class Sized(Protocol):
    @property
    def size(self) -> int:
        """The send's bytes in a call."""
        ...


S = TypeVar("S", bound=Sized)


class SendQueue(Generic[S]):
    """The sends waiting (oldest first) and the calls in flight; one call carries at most
    `max_items` sends and `max_bytes` of them (one send, whatever its size, always goes)."""

    __slots__ = ("in_flight", "max_bytes", "max_items", "waiting")

    def __init__(self, *, max_items: int = POST_BATCH_MAX_ITEMS, max_bytes: int = POST_BATCH_MAX_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.waiting: list[S] = []
        self.in_flight = 0

    def go_alone(self) -> bool:
        """Whether a new send goes at once by itself (the queue is idle); it is then in flight."""
        if self.in_flight or self.waiting:
            return False
        self.in_flight += 1
        return True

    def landed(self) -> None:
        """A call in flight (one alone or a batch) has returned."""
        self.in_flight -= 1

    def next_call(self) -> list[S] | None:
        """The sends to go together now, counted in flight; None while they should wait."""
        if not self.waiting or (self.in_flight and not self._more_than_a_call()):
            return None
        batch = self._take()
        self.in_flight += 1
        return batch

    def _more_than_a_call(self) -> bool:
        """More waits than one call may carry: a full call leaves without waiting for the one in flight."""
        return len(self.waiting) > self.max_items or sum(w.size for w in self.waiting) > self.max_bytes

    def _take(self) -> list[S]:
        """The first waiting sends that one call carries (at least one, whatever its size)."""
        count = size = 0
        for waiting in self.waiting:
            size += waiting.size
            if count and (count == self.max_items or size > self.max_bytes):
                break
            count += 1
        batch, self.waiting = self.waiting[:count], self.waiting[count:]
        return batch
