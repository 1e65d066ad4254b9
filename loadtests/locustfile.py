"""Locust load test of Parley's gateway: `make load` (headless) or `locust -f loadtests/locustfile.py`.

Each simulated user registers, logs in, creates or joins a few of a shared pool of channels,
holds one live stream open for its whole life, and mixes sends, history reads, reactions to
messages it received and edits of its own messages. Every RPC is
one Locust request event named after the RPC; every message that arrives on a live stream is a
`Deliver` event whose response time is the send-to-deliver latency (sent_at to arrival, same
clock on loopback). Add a task as one more `@task` method that calls `self.client.call(...)`
with the new RPC. With `PARLEY_LOAD_REQUEST_LOG=FILE` every request event is also appended to
FILE as a JSON line (parley_load.request_log), for tests that audit a run.
"""

from __future__ import annotations

# gevent must patch grpcio before any channel exists, so blocking calls yield to other users.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import deque  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # type: ignore[import-untyped]  # noqa: E402
import grpc  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import Runner, WorkerRunner  # noqa: E402
from parley_load.grpc_client import REQUEST_TYPE, GatewayClient  # noqa: E402
from parley_load.preflight import require_open_registration  # noqa: E402
from parley_load.request_log import ENV_VAR as REQUEST_LOG_ENV  # noqa: E402
from parley_load.request_log import RequestLog  # noqa: E402
from parley_load.target import Target  # noqa: E402

# grpcio's gevent mode waits for each call, and each read of a live stream, on a thread of the
# hub's pool: 10 threads by default. With more users than that, deliveries queued for a thread
# and send-to-deliver p99 measured the pool instead of Parley.
gevent.get_hub().threadpool.maxsize = int(os.environ.get("PARLEY_LOAD_THREADS", "1000"))

PASSWORD = "load-test-passphrase"  # noqa: S105 - throw-away load-test accounts
# Channels shared by the users of one Locust process; each user joins a few of them.
CHANNEL_POOL_SIZE = int(os.environ.get("PARLEY_LOAD_CHANNELS", "20"))
CHANNELS_PER_USER = int(os.environ.get("PARLEY_LOAD_CHANNELS_PER_USER", "3"))
CHANNEL_POOL: list[str] = []
EMOJIS = ("👍", "🎉", "👀", "✅")
RECENT = 20  # messages a user remembers to react to or edit


_target: Target | None = None


def _resolve_target(environment: Environment, runner: Runner | None = None, **_: Any) -> None:
    """Fail at start, not in every user, when there is no platform to load or it would refuse
    the users' registrations (checked once, by the process that reports the run)."""
    global _target
    _target = Target.resolve(environment.host)
    if not isinstance(runner, WorkerRunner):
        require_open_registration(_target)


def _open_request_log(environment: Environment, **_: Any) -> None:
    path = os.environ.get(REQUEST_LOG_ENV)
    if path:
        log = RequestLog(Path(path))
        environment.events.request.add_listener(log.record)  # type: ignore[no-untyped-call]
        environment.events.quit.add_listener(lambda **_: log.close())  # type: ignore[no-untyped-call]


events.init.add_listener(_resolve_target)  # type: ignore[no-untyped-call]
events.init.add_listener(_open_request_log)  # type: ignore[no-untyped-call]


class ParleyUser(User):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        assert _target is not None
        self.client = GatewayClient(_target, self.environment.events.request.fire)
        self.username = f"load-{uuid.uuid4().hex[:12]}"
        self.client.register(self.username, PASSWORD)
        self.client.login(self.username, PASSWORD)
        if len(CHANNEL_POOL) < CHANNEL_POOL_SIZE:
            CHANNEL_POOL.append(self.client.create_channel(f"load-{len(CHANNEL_POOL)}").channel_id)
        for channel_id in random.sample(CHANNEL_POOL, min(CHANNELS_PER_USER, len(CHANNEL_POOL))):
            self.client.join_channel(channel_id)
        self.channels = [c.channel_id for c in self.client.my_channels()]
        self.received: deque[tuple[str, int]] = deque(maxlen=RECENT)  # (channel, seq) seen live
        self.sent: deque[tuple[str, int]] = deque(maxlen=RECENT)  # own messages, editable
        self._live = gevent.spawn(self._hold_live_stream)

    def on_stop(self) -> None:
        self._live.kill(block=True, timeout=5)
        self.client.close()

    def _hold_live_stream(self) -> None:
        """One live stream per user for its whole life, reopened when the gateway ends it."""
        while True:
            started = time.perf_counter()
            stream: Any = self.client.subscribe(self.channels)
            try:
                for event in stream:
                    kind = event.WhichOneof("event")
                    if kind == "ready":
                        self.client.report("Subscribe (ready)", started, event.ByteSize(), None)
                    elif kind == "message":
                        self._report_delivery(event.message)
                        self.received.append((event.message.channel_id, event.message.channel_seq))
            except grpc.RpcError as exc:
                self.client.report("Subscribe (stream)", started, 0, exc)
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self.client.login(self.username, PASSWORD)
                gevent.sleep(1.0)  # back off before reopening; not a test wait
            except gevent.GreenletExit:
                stream.cancel()
                raise

    def _report_delivery(self, message: Any) -> None:
        latency_ms = max(0.0, (time.time_ns() - message.sent_at.ToNanoseconds()) / 1e6)
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name="Deliver (send-to-deliver)",
            response_time=latency_ms,
            response_length=message.ByteSize(),
            exception=None,
            context={},
        )

    def _retry_after_login(self, action: Any) -> None:
        """Access tokens last 15 minutes; a long run logs in again instead of failing on."""
        try:
            action()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:  # reported already; keep the user going
                return
            self.client.login(self.username, PASSWORD)

    @task(10)
    def send(self) -> None:
        channel_id = random.choice(self.channels)  # noqa: S311 - picking a channel, not a secret
        body = f"load message {uuid.uuid4().hex[:8]} from {self.username}"

        def send() -> None:
            sent = self.client.send(channel_id, body, uuid.uuid4().hex)
            self.sent.append((sent.channel_id, sent.channel_seq))

        self._retry_after_login(send)

    @task(3)
    def read_history(self) -> None:
        channel_id = random.choice(self.channels)  # noqa: S311 - picking a channel, not a secret
        self._retry_after_login(lambda: self.client.history(channel_id))

    @task(1)
    def list_channels(self) -> None:
        self._retry_after_login(self.client.my_channels)

    @task(2)
    def react(self) -> None:
        """React to a message that arrived on the live stream, as people answer with an emoji."""
        if not self.received:
            return
        channel_id, seq = random.choice(self.received)  # noqa: S311 - picking a message, not a secret
        emoji = random.choice(EMOJIS)  # noqa: S311
        self._retry_after_login(lambda: self.client.react(channel_id, seq, emoji))

    @task(1)
    def edit(self) -> None:
        """Correct one of the user's own recent messages."""
        if not self.sent:
            return
        channel_id, seq = random.choice(self.sent)  # noqa: S311 - picking a message, not a secret
        self._retry_after_login(lambda: self.client.edit(channel_id, seq, f"edited {uuid.uuid4().hex[:8]}"))
