"""``retail health``: the platform's state on one screen, from Prometheus's HTTP API.

A handful of instant queries (:data:`QUERIES`) are fetched, then :func:`assess` turns their
results into checks and a verdict without any I/O, so the rules are unit-tested on plain data.
What makes the verdict "wrong": an alert firing, a Cassandra node down, a scrape target down.
Throughput, lag and dead letters are shown for the operator to read; the alert rules
(monitoring/prometheus/rules/) decide when those numbers are a problem.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from retail.errors import RetailError

# Instant queries, by check. Results are Prometheus vectors: [{"metric": {...}, "value": [t, v]}].
QUERIES = {
    "alerts": 'ALERTS{alertstate="firing"}',
    "throughput": 'sum by (region) (rate(retail_consumer_events_total{outcome="written"}[1m]))',
    "lag": "sum by (region, topic) (retail_consumer_lag)",
    "dead_letters": "sum by (region, topic) "
    '(increase(retail_consumer_events_total{outcome="deadlettered"}[5m]))',
    "cassandra": 'up{job="cassandra"}',
    "targets": "up",
}


class HealthError(RetailError):
    """Prometheus could not be asked: no verdict is possible."""


@dataclass(frozen=True)
class Check:
    """One line of the summary: what was looked at, whether it is fine, and the particulars."""

    name: str
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HealthReport:
    prometheus: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "prometheus": self.prometheus,
            "checks": [asdict(c) for c in self.checks],
        }


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def _labels(sample: dict[str, Any], *names: str) -> str:
    return " ".join(str(sample["metric"].get(n, "?")) for n in names)


def _alerts(results: list[dict[str, Any]]) -> Check:
    if not results:
        return Check("alerts", True, "no alert firing")
    shown = []
    for s in sorted(
        results, key=lambda s: (s["metric"].get("severity", ""), s["metric"]["alertname"])
    ):
        labels = {
            k: v
            for k, v in s["metric"].items()
            if k not in ("__name__", "alertname", "alertstate", "severity", "job", "instance")
        }
        where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        shown.append(f"{s['metric']['alertname']} [{s['metric'].get('severity', '?')}] {where}")
    return Check("alerts", False, f"{len(results)} alert(s) firing", shown)


def _throughput(results: list[dict[str, Any]]) -> Check:
    if not results:
        return Check("throughput", True, "no consumer has reported writes")
    per = sorted((_labels(s, "region"), _value(s)) for s in results)
    total = sum(v for _, v in per)
    return Check(
        "throughput",
        True,
        f"{total:.1f} events/s written",
        [f"{region}: {value:.1f}/s" for region, value in per],
    )


def _lag(results: list[dict[str, Any]]) -> Check:
    if not results:
        return Check("lag", True, "no consumer lag reported")
    per = sorted((_labels(s, "region", "topic"), _value(s)) for s in results)
    total = sum(v for _, v in per)
    # The consumers' last report: a stopped consumer's lag stays as it was.
    return Check(
        "lag",
        True,
        f"{total:.0f} events behind (as last reported)",
        [f"{k}: {v:.0f}" for k, v in per],
    )


def _dead_letters(results: list[dict[str, Any]]) -> Check:
    per = sorted((_labels(s, "region", "topic"), _value(s)) for s in results if _value(s) > 0)
    total = sum(v for _, v in per)
    return Check(
        "dead_letters",
        True,
        f"{total:.0f} dead-lettered in the last 5m",
        [f"{k}: {v:.0f}" for k, v in per],
    )


def _cassandra(results: list[dict[str, Any]]) -> Check:
    if not results:
        return Check("cassandra", False, "Prometheus scrapes no Cassandra node")
    down = sorted(_labels(s, "dc", "node") for s in results if _value(s) == 0)
    if down:
        return Check(
            "cassandra",
            False,
            f"{len(down)} of {len(results)} node(s) down",
            [f"down: {node} (dc {dc})" for dc, node in (d.split(" ", 1) for d in down)],
        )
    dcs = sorted({s["metric"].get("dc", "?") for s in results})
    return Check("cassandra", True, f"{len(results)} node(s) up in {', '.join(dcs)}")


def _targets(results: list[dict[str, Any]]) -> Check:
    if not results:
        return Check("targets", False, "Prometheus scrapes nothing")
    down = sorted(_labels(s, "job", "instance") for s in results if _value(s) == 0)
    if down:
        return Check("targets", False, f"{len(down)} of {len(results)} target(s) down", down)
    return Check("targets", True, f"all {len(results)} targets up")


def assess(prometheus: str, results: dict[str, list[dict[str, Any]]]) -> HealthReport:
    """The verdict from the results of :data:`QUERIES` (pure: no I/O)."""
    checks = [
        _alerts(results.get("alerts", [])),
        _cassandra(results.get("cassandra", [])),
        _targets(results.get("targets", [])),
        _throughput(results.get("throughput", [])),
        _lag(results.get("lag", [])),
        _dead_letters(results.get("dead_letters", [])),
    ]
    return HealthReport(prometheus, checks)


def query(prometheus: str, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """One instant query; raises :class:`HealthError` saying what to do when it cannot."""
    try:
        resp = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=timeout)
        resp.raise_for_status()
        body = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise HealthError(
            f"Prometheus at {prometheus} did not answer ({exc.__class__.__name__}: {exc}). "
            "Is the stack up? `retail stack up` starts it, `retail stack status` shows it; "
            "or point --prometheus at another Prometheus."
        ) from exc
    if body.get("status") != "success":
        raise HealthError(f"Prometheus at {prometheus} refused {promql!r}: {body.get('error')}")
    return body["data"]["result"]


def collect(prometheus: str) -> HealthReport:
    """Ask Prometheus every query of :data:`QUERIES` and assess the answers."""
    return assess(prometheus, {name: query(prometheus, q) for name, q in QUERIES.items()})
