"""`retail health`: the verdict from Prometheus query results (pure), and the command's answer
when Prometheus cannot be reached (a real closed port, no server pretended)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from typer.testing import CliRunner

from retail.cli import app
from retail.health import QUERIES, HealthError, assess, query

PROM = "http://127.0.0.1:9090"


def _v(value: float, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1790000000.0, str(value)]}


def _up(job: str, instance: str, value: float, **labels: str) -> dict[str, Any]:
    return _v(value, __name__="up", job=job, instance=instance, **labels)


def _node(dc: str, n: int, value: float) -> dict[str, Any]:
    return _up("cassandra", f"127.0.{n}.1:9500", value, dc=dc, node=f"{dc}-{n}")


def _healthy() -> dict[str, list[dict[str, Any]]]:
    nodes = [_node("eu-west", 1, 1), _node("us-east", 2, 1), _node("ap-southeast", 3, 1)]
    return {
        "alerts": [],
        "cassandra": nodes,
        "targets": [*nodes, _up("kafka", "127.0.10.1:9404", 1), _up("prometheus", "p:9090", 1)],
        "throughput": [_v(120.5, region="eu-west"), _v(80, region="us-east")],
        "lag": [_v(3, region="eu-west", topic="orders")],
        "dead_letters": [_v(0, region="eu-west", topic="orders")],
    }


def _check(report: Any, name: str) -> Any:
    return next(c for c in report.checks if c.name == name)


def test_a_healthy_platform_is_ok_and_says_what_it_does() -> None:
    report = assess(PROM, _healthy())
    assert report.ok
    assert _check(report, "throughput").summary == "200.5 events/s written"
    assert _check(report, "throughput").details == ["eu-west: 120.5/s", "us-east: 80.0/s"]
    assert _check(report, "cassandra").summary == "3 node(s) up in ap-southeast, eu-west, us-east"
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_a_node_down_is_wrong_and_named() -> None:
    results = _healthy()
    results["cassandra"][1] = _node("us-east", 2, 0)
    results["targets"][1] = _node("us-east", 2, 0)
    report = assess(PROM, results)
    assert not report.ok
    cassandra = _check(report, "cassandra")
    assert (cassandra.ok, cassandra.summary) == (False, "1 of 3 node(s) down")
    assert cassandra.details == ["down: us-east-2 (dc us-east)"]
    assert _check(report, "targets").details == ["cassandra 127.0.2.1:9500"]


def test_a_firing_alert_is_wrong_and_listed_with_what_it_is_about() -> None:
    results = _healthy()
    results["alerts"] = [
        _v(
            1,
            __name__="ALERTS",
            alertname="KafkaPartitionSkew",
            alertstate="firing",
            severity="warning",
            topic="orders",
            job="statsd_exporter",
        )
    ]
    report = assess(PROM, results)
    assert not report.ok
    assert _check(report, "alerts").details == ["KafkaPartitionSkew [warning] topic=orders"]


def test_a_target_down_is_wrong() -> None:
    results = _healthy()
    results["targets"][3] = _up("kafka", "127.0.10.1:9404", 0)
    report = assess(PROM, results)
    assert not report.ok
    assert _check(report, "targets").details == ["kafka 127.0.10.1:9404"]


def test_an_idle_pipeline_is_not_a_failure_but_no_cassandra_target_is() -> None:
    results = {name: [] for name in QUERIES}
    report = assess(PROM, results)
    assert _check(report, "throughput").ok and _check(report, "lag").ok
    assert not _check(report, "cassandra").ok  # Prometheus scraping no node is not healthy
    assert not report.ok


def test_dead_letters_are_counted_but_left_to_the_alert_rules() -> None:
    results = _healthy()
    results["dead_letters"] = [_v(12, region="eu-west", topic="orders")]
    report = assess(PROM, results)
    assert report.ok
    assert _check(report, "dead_letters").details == ["eu-west orders: 12"]


@pytest.fixture
def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unreachable_prometheus_raises_a_message_saying_what_to_do(closed_url: str) -> None:
    with pytest.raises(HealthError, match="retail stack up"):
        query(closed_url, "up", timeout=2)


def test_the_command_exits_non_zero_when_prometheus_is_unreachable(closed_url: str) -> None:
    result = CliRunner().invoke(app, ["health", "--prometheus", closed_url])
    assert result.exit_code != 0
    assert isinstance(result.exception, HealthError)
