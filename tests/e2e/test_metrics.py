"""Every service's Prometheus /metrics after a short Locust load (`make load`'s users): found
through the file_sd targets the instances write, scraped over TLS with the scraper's certificate
from the platform CA (as deploy/monitoring/prometheus.yml does), parsed with
prometheus-client's own text parser, and the series the alert rules and dashboard use are there
with plausible values."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from parley.auth.v1 import auth_pb2
from prometheus_client.parser import text_string_to_metric_families

from parley_core.topology import METRICS_SCRAPER
from parley_testing.locust import short_locust_run
from parley_testing.stack import APPS, TIMEOUT_S, Stack
from parley_testing.waiting import eventually

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def metrics_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_METRICS_LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("PARLEY_STORAGE_LAG_INTERVAL_SECONDS", "0.5")


async def short_load(stack: Stack, tmp_path: Path) -> None:
    """`make load`'s Locust users against the stack's gateway, 5 of them for 8 s."""
    code, out = await short_locust_run(stack, tmp_path, locustfile=LOCUSTFILE, run_time="8s")
    assert code == 0, out


def scraper_tls(stack: Stack, *, with_certificate: bool = True) -> ssl.SSLContext:
    """As Prometheus is configured: the platform CA, and the scraper's own certificate."""
    context = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    if with_certificate:
        own = stack.pki.identity(METRICS_SCRAPER)
        context.load_cert_chain(own.cert, own.key)
    return context


def scrape(address: str, context: ssl.SSLContext) -> Samples:
    with urllib.request.urlopen(f"https://{address}/metrics", timeout=TIMEOUT_S, context=context) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def targets(data_dir: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in (data_dir / "metrics" / "targets").glob("*.json"):
        [group] = json.loads(path.read_text())
        assert group["labels"]["__scheme__"] == "https"  # Prometheus scrapes it over TLS
        found[group["labels"]["service"]] = group["targets"][0]
    return found


async def test_every_service_serves_its_metrics_after_a_short_load(
    metrics_on: None, stack: Stack, tmp_path: Path
) -> None:
    addresses = targets(stack.data_dir)
    assert set(addresses) == set(APPS)
    await short_load(stack, tmp_path)
    with pytest.raises(grpc.aio.AioRpcError):  # one failed login, for the security figures
        await stack.gateway().Login(auth_pb2.LoginRequest(username="nobody", password="wrong"), timeout=TIMEOUT_S)

    tls = scraper_tls(stack)

    async def scraped(service: str) -> Samples:
        return await asyncio.to_thread(scrape, addresses[service], tls)

    # Neither plain HTTP nor TLS without a certificate from the platform CA gets the figures.
    with pytest.raises(ConnectionResetError):  # the server's TLS answers no plain request
        await asyncio.to_thread(urllib.request.urlopen, f"http://{addresses['auth']}/metrics", timeout=TIMEOUT_S)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionResetError)):  # refused in the handshake
        await asyncio.to_thread(scrape, addresses["auth"], scraper_tls(stack, with_certificate=False))

    gateway = await scraped("gateway")
    assert total(gateway, "parley_rpc_requests_total", method="/parley.gateway.v1.Gateway/Login", code="OK") >= 1
    assert total(gateway, "parley_rpc_requests_total", code="UNAUTHENTICATED") >= 1
    assert total(gateway, "parley_rpc_latency_seconds_count") >= total(gateway, "parley_rpc_requests_total") * 0.5
    assert ("parley_live_streams", ()) in gateway
    messaging = await scraped("messaging")
    sent = total(messaging, "parley_events_appended_total", stream="MSG")
    assert sent >= 1
    auth = await scraped("auth")
    assert total(auth, "parley_security_records_total", kind="login_failed") >= 1
    assert total(auth, "parley_events_appended_total", stream="AUTH") >= 1
    assert total(auth, "parley_service_info", service="auth") == 1

    async def archived() -> Samples | None:
        storage = await scraped("storage")
        return storage if total(storage, "parley_events_consumed_total", stream="MSG") >= sent else None

    storage = await eventually(archived, "storage archived every MSG event it was shown", TIMEOUT_S)
    assert ("parley_archive_lag_events", (("stream", "MSG"),)) in storage
    assert total(storage, "parley_archive_lag_seconds") >= 0
    # The default series of prometheus-client are absent (a registry per service), ours present.
    assert not any(name.startswith("python_gc") for name, _ in storage)
    # What the alert rules take increase() of is there before its first event (a series born at 1
    # would hide that event from increase()).
    assert ("parley_events_parked_total", (("stream", "MSG"),)) in storage
    assert ("parley_anomalies_total", (("kind", "password_spraying"), ("response", "slow_source"))) in storage
    assert ("parley_anomalies_total", (("kind", "send_rate"), ("response", "alert"))) in storage
    assert total(auth, "parley_security_records_total", kind="change_not_made") == 0
    assert ("parley_security_records_total", (("kind", "lockout"),)) in auth

    async def measured() -> Samples | None:
        registry = await scraped("patch-registry")
        return registry if ("parley_rollouts", (("state", "rolled_back"),)) in registry else None

    # Findings per priority and overdue, roll-outs per state: every one, 0 included.
    registry = await eventually(measured, "the patch registry's first measurement", TIMEOUT_S)
    assert total(registry, "parley_findings", priority="critical") == 0
    assert total(registry, "parley_findings_overdue", priority="critical") == 0
    assert total(registry, "parley_rollouts", state="rolled_back") == 0
