"""The shipped Prometheus rules and Grafana dashboard: valid, tested, and about the metrics we export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dramatiq_fairway.middlewares.metrics import Metrics
from dramatiq_fairway.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "fairway.json"

# docs/design.md, as exposed (counters with their `_total`).
FAMILIES = {
    "fairway_messages_total",
    "fairway_message_duration_seconds",
    "fairway_message_wait_seconds",
    "fairway_retries_total",
    "fairway_dead_letters_total",
    "fairway_breaker_state",
    "fairway_breaker_transitions_total",
    "fairway_queue_depth",
    "fairway_in_flight",
    "fairway_tenant_served_total",
    "fairway_tenant_in_flight",
    "fairway_tenant_throttled_total",
    "fairway_worker_recycled_total",
}
ALERT_NAMES = {
    "FairwayBacklogHigh",
    "FairwayFailureRatioHigh",
    "FairwayWaitP95High",
    "FairwayBreakerOpen",
    "FairwayDeadLettersRising",
}


def family_of(name: str) -> str:
    """The family a sample or family name in a query belongs to (``_bucket`` etc. stripped)."""
    return re.sub(r"_(bucket|count|sum)$", "", name)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: apt-get install prometheus (scripts/test-all.sh does)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, check=False, cwd=ALERTS.parent)


def test_metrics_middleware_exports_exactly_the_design_families() -> None:
    registry = Metrics(settings=Settings()).registry
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in registry.collect()}
    assert exported == FAMILIES


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_uses_exported_metrics() -> None:
    rules = ALERTS.read_text()
    tests = ALERTS_TEST.read_text()
    assert set(re.findall(r"- alert: (\w+)", rules)) == ALERT_NAMES
    assert set(re.findall(r"alertname: (\w+)", tests)) == ALERT_NAMES
    for name in re.findall(r"\bfairway_\w+", rules):
        assert family_of(name) in FAMILIES, name


def test_dashboard_has_a_panel_per_metric_family() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    families_per_panel = [
        {family_of(name) for target in panel["targets"] for name in re.findall(r"\bfairway_\w+", target["expr"])}
        for panel in panels
    ]
    for families in families_per_panel:
        assert families <= FAMILIES
    covered = {family for families in families_per_panel for family in families}
    assert covered >= FAMILIES
    own_panel = {next(iter(f)) for f in families_per_panel if len(f) == 1}
    assert own_panel == FAMILIES


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "dramatiq-fairway"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]
        assert all(t["refId"] and t["expr"] for t in panel["targets"])
        grid = panel["gridPos"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"panel {panel['title']!r} overlaps another"
        cells |= area
