"""Asking the live Prometheus, with a deadline instead of a sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from retail.topology import Topology

Series = list[dict]


def query(topology: Topology, promql: str) -> Series:
    """The instant vector ``promql`` returns now."""
    resp = httpx.get(
        f"{topology.prometheus.url}/api/v1/query", params={"query": promql}, timeout=10
    )
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def wait_for(
    topology: Topology,
    promql: str,
    until: Callable[[Series], bool] = bool,
    timeout: float = 90.0,
) -> Series:
    """Poll ``promql`` until ``until(result)`` holds; fail with the last result if it never
    does."""
    deadline = time.monotonic() + timeout
    result: Series = []
    while time.monotonic() < deadline:
        result = query(topology, promql)
        if until(result):
            return result
        time.sleep(2.0)
    raise AssertionError(f"{promql} did not get there within {timeout:.0f}s; last: {result}")


def value(result: Series) -> float | None:
    """The value of the first series of an instant query, None if it returned none."""
    return float(result[0]["value"][1]) if result else None


def firing(topology: Topology, alertname: str) -> Series:
    """The alerts named ``alertname`` firing in Prometheus now."""
    return query(topology, f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')
