"""Each service instance's Prometheus metrics, served on its own `/metrics` port.

Why prometheus-client and not OpenTelemetry's Prometheus exporter: a registry per service
instance (the test stacks run five services in one process, and each must show its own figures),
the text format served directly with no SDK reader pipeline on the hot path, and a stable API;
the OpenTelemetry exporter is a pre-release built on prometheus-client itself and reads the
process-wide meter provider. Traces stay OpenTelemetry's.

The figures every service has are here (calls per RPC with their status code and latency, fed
by parley_core.call_stats, events
appended and consumed per stream, redeliveries, parked events); a service adds its own through
`counter`/`gauge` (auth's audit records by kind, storage's archive lag and anomalies, the
gateway's live streams). A labelled counter shows no series before its first event, and
Prometheus's increase() of a series born at 1 is 0: the alert on the first parked event, the
first refused audit record or the first response to an anomaly would never fire. So the label
values an alert watches are exported at 0 from the start (`counter(..., zeroed=...)`).

With PARLEY_METRICS_LISTEN set (`parley up` sets 127.0.0.1:0), the
instance listens there and writes a Prometheus file_sd target file in <data>/metrics/targets/,
which deploy/monitoring/prometheus.yml scrapes; the file goes when the instance drains.

A series made with `heartbeat=True` also travels in the instance's heartbeat
(`heartbeat_figures`, InstanceHeartbeat.figures): the patch registry keeps the last heartbeats of
every instance, so the console's Health page charts the platform's figures over the last hour
from them, with no Prometheus server in between.

Over TLS unless PARLEY_METRICS_TLS=false: the instance's own certificate from the platform CA
(its names include 127.0.0.1 and localhost), and a client certificate from the same CA is
required, so only the platform's scraper (pki/prometheus.crt) reads the figures. The target
file carries the scheme (`__scheme__`), so Prometheus scrapes each instance the way it serves.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from parley_core.files import ensure_private_dir
from parley_core.topology import STREAMS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class MetricsTls:
    cert: Path  # the instance's own certificate and key
    key: Path
    client_ca: Path  # a scraper must present a certificate from this CA


@dataclass(frozen=True)
class HeartbeatFigure:
    name: str  # the sample's name as /metrics shows it (a counter's ends in _total)
    labels: dict[str, str]
    value: float


class ServiceMetrics:
    def __init__(self, service: str, version: str = "") -> None:
        self.service = service
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_requests = Counter(
            "parley_rpc_requests", "Calls handled, per method and status code", ["method", "code"], registry=r
        )
        self.rpc_latency = Histogram(
            "parley_rpc_latency_seconds", "Unary call latency", ["method"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.events_appended = Counter("parley_events_appended", "Events appended, per stream", ["stream"], registry=r)
        self.events_consumed = Counter(
            "parley_events_consumed", "Events handled by a consumer or replay, per stream", ["stream"], registry=r
        )
        self.redeliveries = Counter(
            "parley_consumer_redeliveries", "Events delivered again to a durable consumer", ["consumer"], registry=r
        )
        self.parked = Counter("parley_events_parked", "Poison events parked, per stream", ["stream"], registry=r)
        for stream in STREAMS:  # those this service consumes, so ParleyParkedEvents sees the first
            if service in (stream.owner, *stream.readers):
                self.parked.labels(stream.name)
        info = Gauge("parley_service_info", "1 per running instance", ["service", "version"], registry=r)
        info.labels(service, version).set(1)
        self._carried: list[Counter | Gauge] = []  # the series sent in heartbeats
        self._per_stream: dict[tuple[str, str], Counter] = {}  # see appended_to
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None
        self._target: Path | None = None

    def appended_to(self, stream: str) -> Counter:
        """events_appended's series for `stream`, made once: labels() takes a lock and a look-up,
        a few microseconds on every event of the write path."""
        return self._series(self.events_appended, "appended", stream)

    def consumed_from(self, stream: str) -> Counter:
        """events_consumed's series for `stream`, made once (see appended_to)."""
        return self._series(self.events_consumed, "consumed", stream)

    def _series(self, counter: Counter, kind: str, stream: str) -> Counter:
        series = self._per_stream.get((kind, stream))
        if series is None:
            series = self._per_stream[(kind, stream)] = counter.labels(stream)
        return series

    def counter(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...] = (),
        *,
        zeroed: Iterable[tuple[str, ...]] = (),
        heartbeat: bool = False,
    ) -> Counter:
        """`zeroed`: label values exported at 0 before their first event (see the module's note);
        `heartbeat`: the series travels in heartbeats too."""
        counter = Counter(name, documentation, list(labels), registry=self.registry)
        for values in zeroed:
            counter.labels(*values)
        if heartbeat:
            self._carried.append(counter)
        return counter

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = (), *, heartbeat: bool = False) -> Gauge:
        gauge = Gauge(name, documentation, list(labels), registry=self.registry)
        if heartbeat:
            self._carried.append(gauge)
        return gauge

    def heartbeat_figures(self) -> list[HeartbeatFigure]:
        """Every sample of the series marked `heartbeat=True`, as /metrics shows them now (a
        counter's `_total`, not its `_created`)."""
        return [
            HeartbeatFigure(sample.name, dict(sample.labels), float(sample.value))
            for series in self._carried
            for family in series.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        ]

    def serve(self, listen: str, *, targets_dir: Path, instance_id: str, tls: MetricsTls | None = None) -> str:
        """Listen on host:port (port 0: any free one); write the file_sd target. Returns host:port."""
        host, _, port = listen.rpartition(":")
        secure: dict[str, Any] = {}
        if tls is not None:
            secure = {
                "certfile": str(tls.cert),
                "keyfile": str(tls.key),
                "client_cafile": str(tls.client_ca),
                "client_auth_required": True,
                "tls_min_version": ssl.TLSVersion.TLSv1_2,
            }
        self._server, self._thread = start_http_server(
            int(port), addr=host or "127.0.0.1", registry=self.registry, **secure
        )
        address = f"{host or '127.0.0.1'}:{self._server.server_port}"
        ensure_private_dir(targets_dir)
        _forget_dead_instances(targets_dir, self.service)
        target = targets_dir / f"{self.service}-{instance_id}.json"
        labels = {
            "service": self.service,
            "instance_id": instance_id,
            "pid": str(os.getpid()),
            "__scheme__": "https" if tls is not None else "http",
        }
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps([{"targets": [address], "labels": labels}]))
        os.replace(temporary, target)  # Prometheus never reads half a file
        self._target = target
        return address

    def stop(self) -> None:
        if self._target is not None:
            self._target.unlink(missing_ok=True)
            self._target = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _forget_dead_instances(targets_dir: Path, service: str) -> None:
    """An instance that crashed left its target behind; a new one of the service removes it, so
    Prometheus does not report a process that is gone (and was replaced) as down for ever."""
    for path in targets_dir.glob(f"{service}-*.json"):
        try:
            pid = int(json.loads(path.read_text())[0]["labels"]["pid"])
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue  # unreadable, or another user's process: left alone
