"""deploy/monitoring/: the scrape configuration and alert rules pass promtool (its config and
rules checks, and the rules' unit tests in alerts_test.yml), and every series the rules and the
Grafana dashboard query is one a Parley service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from parley_core.pki import ensure_pki
from parley_core.topology import METRICS_SCRAPER

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
SERIES = re.compile(r"\bparley_[a-z_]+")
# Declared as metric names in the code: metrics.py's shared ones and each service's own.
DECLARED = re.compile(r'"(parley_[a-z_]+)"')
SUFFIXES = ("_total", "_bucket", "_count", "_sum")
PROMTOOL = shutil.which("promtool")


def exported() -> set[str]:
    names: set[str] = set()
    for source in [*ROOT.glob("libs/*/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py")]:
        text = source.read_text()
        markers = ("prometheus_client", "ctx.metrics", ".metrics.gauge", "ServiceMetrics")
        if not any(marker in text for marker in markers):
            continue
        names.update(DECLARED.findall(text))
    return names


def queried() -> set[str]:
    lines = (MONITORING / "alerts.yml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return set(SERIES.findall(text + "\n".join(exprs)))


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_every_queried_series_is_exported() -> None:
    known = exported()
    assert {"parley_rpc_requests", "parley_anomalies", "parley_archive_lag_seconds"} <= known
    missing = sorted(name for name in queried() if name not in known and base(name) not in known)
    assert missing == []


def test_the_dashboard_is_grafana_json() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"]
    assert dashboard["title"] == "Parley"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert all(target["expr"] and target["refId"] for target in panel["targets"])


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_accepts_the_scrape_config_with_the_certificates_parley_up_issues(tmp_path: Path) -> None:
    """promtool opens the TLS files the config names: here, a data folder's as `parley up` makes it."""
    assert PROMTOOL is not None
    monitoring = tmp_path / "deploy" / "monitoring"
    monitoring.mkdir(parents=True)
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(MONITORING / name, monitoring / name)
    ensure_pki(tmp_path / ".parley" / "pki", [METRICS_SCRAPER])
    done = subprocess.run(
        [PROMTOOL, "check", "config", "prometheus.yml"],
        cwd=monitoring,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
@pytest.mark.parametrize("args", [("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml")])
def test_promtool_accepts_it(args: tuple[str, ...]) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
