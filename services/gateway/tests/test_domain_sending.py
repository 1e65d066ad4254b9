"""Which waiting sends go to messaging together (parley_gateway.domain.sending), without servers:
one alone when idle, the rest in calls of at most 64 sends and 1 MiB, a full call at once."""

from __future__ import annotations

from dataclasses import dataclass

from parley_core.post_batch_limits import POST_BATCH_MAX_BYTES, POST_BATCH_MAX_ITEMS
from parley_gateway.domain.sending import SendQueue


@dataclass
class Send:
    name: str
    size: int = 100


def queue_of(*sends: Send, in_flight: int = 1, max_items: int = 4, max_bytes: int = 1000) -> SendQueue[Send]:
    queue: SendQueue[Send] = SendQueue(max_items=max_items, max_bytes=max_bytes)
    queue.in_flight = in_flight
    queue.waiting.extend(sends)
    return queue


def names(batch: list[Send] | None) -> list[str]:
    assert batch is not None
    return [s.name for s in batch]


def test_the_caps_are_the_platforms_by_default() -> None:
    queue: SendQueue[Send] = SendQueue()
    assert (queue.max_items, queue.max_bytes) == (POST_BATCH_MAX_ITEMS, POST_BATCH_MAX_BYTES) == (64, 1024 * 1024)


def test_a_send_goes_alone_only_when_nothing_is_in_flight_or_waiting() -> None:
    queue: SendQueue[Send] = SendQueue()
    assert queue.go_alone()
    assert queue.in_flight == 1
    assert not queue.go_alone()  # one in flight: the next one waits
    queue.landed()
    queue.waiting.append(Send("a"))
    assert not queue.go_alone()  # one waiting: it goes first
    assert queue.in_flight == 0


def test_waiting_sends_wait_for_the_call_in_flight_then_go_together() -> None:
    queue = queue_of(Send("a"), Send("b"), Send("c"))
    assert queue.next_call() is None
    queue.landed()
    assert names(queue.next_call()) == ["a", "b", "c"]
    assert queue.in_flight == 1
    assert queue.next_call() is None  # nothing left


def test_one_call_carries_at_most_its_item_cap_and_a_full_one_goes_at_once() -> None:
    queue = queue_of(*(Send(str(i)) for i in range(9)))
    assert names(queue.next_call()) == ["0", "1", "2", "3"]  # more than a call waits: no waiting for the one in flight
    assert names(queue.next_call()) == ["4", "5", "6", "7"]
    assert queue.next_call() is None  # the one left fits in a call: it waits
    assert queue.in_flight == 3
    assert [s.name for s in queue.waiting] == ["8"]


def test_one_call_carries_at_most_its_byte_cap() -> None:
    queue = queue_of(Send("a", 600), Send("b", 300), Send("c", 200), in_flight=0)
    assert names(queue.next_call()) == ["a", "b"]  # 1,100 bytes would be over the 1,000
    assert queue.next_call() is None  # c waits for a call in flight
    queue.landed()
    assert names(queue.next_call()) == ["c"]


def test_a_send_over_the_byte_cap_still_goes_alone() -> None:
    queue = queue_of(Send("big", 5000), Send("small", 10), in_flight=1)
    assert names(queue.next_call()) == ["big"]  # over the cap: leaves at once, by itself
    assert queue.next_call() is None
