"""A durable consumer's pull requests, each one's deliveries gathered in one go.

nats-py's `fetch` waits for every delivered event with a task and a timer of its own
(`Subscription.next_msg`): about 18 us of CPU per event, more than the rest of the consumer's
work on it. Here a request's deliveries are collected by the inbox subscription's callback, and
the caller wakes once, when the request is answered: its events are all there, or JetStream said
it has no more (status 404 or 408), or the wait is over.

A delivery that arrives after its request's wait ended is kept for the next request's batch,
as nats-py keeps it in its queue: not lost, and acknowledged like any other.
"""

from __future__ import annotations

import asyncio
import json

import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from parley_core.bus_events import BusConnection
from parley_core.nats_connect import js_api_prefix

# The end of a request that has delivered what it could (none left, its time is up, or the
# request was refused for now): what it brought is the batch. Any other status is an error.
# Their values: a str Enum member hashes by its name, so the members would match no set lookup.
ANSWERED = frozenset(
    code.value for code in (api.StatusCode.NO_MESSAGES, api.StatusCode.REQUEST_TIMEOUT, api.StatusCode.CONFLICT)
)
# The server ends a request with a status when its time is up; the client waits this much longer
# for that answer before it gives up on it itself.
ANSWER_GRACE_S = 0.2


class Pulls:
    def __init__(self, bus: BusConnection, *, stream: str, durable: str) -> None:
        self._bus = bus
        self._next = f"{js_api_prefix(bus.nc)}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = ""
        self._sub: Subscription | None = None
        self._delivered: list[Msg] = []
        self._wanted = 0
        self._answered: asyncio.Future[Msg | None] | None = None

    async def start(self) -> None:
        self._inbox = self._bus.nc.new_inbox()
        self._sub = await self._bus.nc.subscribe(self._inbox, cb=self._arrived)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def pull(self, batch: int, *, wait_s: float | None) -> list[Msg]:
        """Up to `batch` events. With `wait_s`, the request waits up to that long for the first
        event and answers with those there by then (no_wait with expires: it does not linger for
        more); without, it answers at once with those there now. Raises a JetStream APIError for
        any answer but 'no more' (e.g. 503: no consumer answers the request)."""
        assert self._sub is not None, "start() first"
        if len(self._delivered) >= batch:
            return self._take(batch)
        request: dict[str, object] = {"batch": batch - len(self._delivered), "no_wait": True}
        if wait_s is not None:
            request["expires"] = int(wait_s * 1_000_000_000)
        self._wanted = batch
        self._answered = answered = asyncio.get_running_loop().create_future()
        try:
            await self._bus.nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
            async with asyncio.timeout((wait_s or 0.0) + ANSWER_GRACE_S):
                refusal = await answered
        except TimeoutError:
            refusal = None  # no answer in time (NATS away, a reconnect): what came is the batch
        finally:
            self._answered = None
        if refusal is not None:
            raise nats.js.errors.APIError.from_msg(refusal)
        return self._take(batch)

    def _take(self, batch: int) -> list[Msg]:
        taken, self._delivered = self._delivered[:batch], self._delivered[batch:]
        return taken

    async def _arrived(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers and not msg.data else None
        if status is None:
            self._delivered.append(msg)
            if len(self._delivered) >= self._wanted:
                self._answer(None)
        elif status in ANSWERED:
            self._answer(None)
        elif status != api.StatusCode.CONTROL_MESSAGE.value:  # a heartbeat (none is asked for) says nothing
            self._answer(msg)

    def _answer(self, refusal: Msg | None) -> None:
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(refusal)
