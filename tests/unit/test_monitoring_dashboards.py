"""Grafana dashboards as code (retail/dashboards.py): the committed JSON is what the code
generates, every panel's PromQL parses (promtool), and every metric name a panel or an alert
uses is one that the statsd_exporter mapping or the JMX exporter rules produce."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from retail import dashboards
from retail.settings import get_settings
from stack.fetch import Artifacts

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
EXPECTED_FILES = {"pipeline.json", "cassandra.json", "kafka.json", "operations.json", "retail.json"}
# Prometheus's own series, used by panels and alerts.
BUILTIN = {"up", "ALERTS"}
_METRIC = re.compile(r"\b((?:retail|airflow|cassandra|kafka|statsd)_[a-z0-9_]+|up|ALERTS)\b")


def test_the_committed_dashboards_are_what_the_code_generates() -> None:
    assert {p.name for p in dashboards.DASHBOARD_DIR.glob("*.json")} == EXPECTED_FILES
    assert dashboards.stale() == [], "run `python -m retail.dashboards` and commit the JSON"


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    assert dashboards.main(["--out", str(tmp_path)]) == 0
    assert dashboards.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "kafka.json").write_text("{}")
    assert dashboards.main(["--check", "--out", str(tmp_path)]) == 1


def test_every_panel_queries_the_provisioned_prometheus_datasource() -> None:
    uids = set()
    for path in sorted(dashboards.DASHBOARD_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "prometheus", panel["title"]
    assert len(uids) == len(EXPECTED_FILES)
    provisioned = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert [d["uid"] for d in provisioned["datasources"]] == ["prometheus"]


def test_panel_queries_lists_every_target_with_its_dashboard_and_panel() -> None:
    queries = dashboards.panel_queries()
    assert len(queries) >= 40
    assert {q.dashboard for q in queries} == {
        "Retail / Pipeline",
        "Retail / Cassandra",
        "Retail / Kafka",
        "Retail / Operations",
        "Retail / Business",
    }
    assert all(q.panel and q.expr for q in queries)
    # Grafana-only macros would not run against Prometheus's API.
    assert not [q for q in queries if "$" in q.expr]


def test_every_panel_query_parses(tmp_path: Path) -> None:
    promtool = Artifacts(get_settings().cache_dir).promtool
    if not promtool.exists():
        pytest.fail("promtool is not in the cache: run `make setup`")
    rules = {
        "groups": [
            {
                "name": "dashboard_queries",
                "rules": [
                    {"record": f"dashboard_query_{i}", "expr": q.expr}
                    for i, q in enumerate(dashboards.panel_queries())
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _name_patterns() -> list[re.Pattern[str]]:
    """What the exporters can produce: mapping and JMX rule names, captures as wildcards."""
    names = []
    mapping = yaml.safe_load((MONITORING / "statsd/mapping.yml").read_text())
    for m in mapping["mappings"]:
        if m.get("action") != "drop":
            names.append((m["name"], r"(_sum|_count)?"))  # a timer is a summary
    for rules in ("jmx/cassandra.yml", "jmx/kafka.yml"):
        for rule in yaml.safe_load((MONITORING / rules).read_text())["rules"]:
            names.append((rule["name"].lower(), ""))
    patterns = []
    for name, suffix in names:
        parts = re.split(r"\$\{?\d+\}?", name)
        patterns.append(re.compile("[a-z0-9_]+".join(map(re.escape, parts)) + suffix))
    return patterns


def _unknown(exprs: list[str]) -> set[str]:
    patterns = _name_patterns()
    used = {name for expr in exprs for name in _METRIC.findall(expr)}
    return {n for n in used - BUILTIN if not any(p.fullmatch(n) for p in patterns)}


def test_panels_use_only_metrics_the_exporters_produce() -> None:
    assert _unknown([q.expr for q in dashboards.panel_queries()]) == set()


def test_alerts_use_only_metrics_the_exporters_produce() -> None:
    exprs = [
        rule["expr"]
        for path in sorted((MONITORING / "prometheus/rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    assert _unknown(exprs) == set()


def test_an_unknown_metric_name_is_caught() -> None:
    assert _unknown(["rate(retail_consumer_evnts_total[1m])"]) == {"retail_consumer_evnts_total"}
