"""The series an alert takes increase() of exist at 0 before their first event: Prometheus's
increase() of a series born at 1 is 0, so the first parked event (or refused audit record, or
response to an anomaly) would otherwise never raise its alert."""

from __future__ import annotations

from parley_core.metrics import ServiceMetrics


def test_parked_events_start_at_zero_for_each_stream_the_service_consumes() -> None:
    storage, gateway = ServiceMetrics("storage"), ServiceMetrics("gateway")
    for stream in ("AUTH", "MSG", "SEC", "PATCH", "STORE"):
        assert storage.registry.get_sample_value("parley_events_parked_total", {"stream": stream}) == 0
    assert gateway.registry.get_sample_value("parley_events_parked_total", {"stream": "MSG"}) == 0
    assert gateway.registry.get_sample_value("parley_events_parked_total", {"stream": "SEC"}) is None  # not its
    storage.parked.labels("MSG").inc()
    assert storage.registry.get_sample_value("parley_events_parked_total", {"stream": "MSG"}) == 1


def test_a_services_own_counter_exports_the_label_values_it_is_given_at_zero() -> None:
    metrics = ServiceMetrics("auth")
    records = metrics.counter("parley_security_records", "records", ("kind",), zeroed=[("lockout",)])
    assert metrics.registry.get_sample_value("parley_security_records_total", {"kind": "lockout"}) == 0
    assert metrics.registry.get_sample_value("parley_security_records_total", {"kind": "login_failed"}) is None
    records.labels("login_failed").inc()
    assert metrics.registry.get_sample_value("parley_security_records_total", {"kind": "login_failed"}) == 1
