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


def test_only_the_series_marked_for_the_heartbeat_travel_in_it_as_metrics_shows_them() -> None:
    metrics = ServiceMetrics("gateway")
    live = metrics.gauge("parley_live_streams", "live", heartbeat=True)
    live.set_function(lambda: 3.0)
    records = metrics.counter("parley_security_records", "records", ("kind",), zeroed=[("lockout",)], heartbeat=True)
    records.labels("login_failed").inc(2)
    metrics.gauge("parley_not_carried", "kept to /metrics")
    carried = {(f.name, tuple(sorted(f.labels.items()))): f.value for f in metrics.heartbeat_figures()}
    assert carried == {
        ("parley_live_streams", ()): 3.0,
        ("parley_security_records_total", (("kind", "lockout"),)): 0.0,
        ("parley_security_records_total", (("kind", "login_failed"),)): 2.0,
    }


def test_appended_and_consumed_count_into_each_streams_own_series() -> None:
    metrics = ServiceMetrics("messaging")
    metrics.appended_to("MSG").inc()
    metrics.appended_to("MSG").inc()
    metrics.consumed_from("MSG").inc()
    metrics.consumed_from("AUTH").inc()
    assert metrics.registry.get_sample_value("parley_events_appended_total", {"stream": "MSG"}) == 2
    assert metrics.registry.get_sample_value("parley_events_consumed_total", {"stream": "MSG"}) == 1
    assert metrics.registry.get_sample_value("parley_events_consumed_total", {"stream": "AUTH"}) == 1
    assert metrics.registry.get_sample_value("parley_events_appended_total", {"stream": "AUTH"}) is None
