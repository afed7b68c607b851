"""Metrics as an interface: StatsD in production, in memory in unit tests.

Names are dotted StatsD names whose parts carry the labels (``retail.consumer.eu-west.orders.
written``); the statsd_exporter mapping in ``monitoring/statsd/mapping.yml`` turns the parts into
Prometheus labels. Every part must come from a bounded set (regions, topics, partitions, tables,
outcomes): never an event, order or customer id, which would create a series per value.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import statsd


class Metrics(Protocol):
    def incr(self, name: str, count: int = 1) -> None: ...
    def gauge(self, name: str, value: float) -> None: ...
    def timing(self, name: str, ms: float) -> None: ...


class StatsdMetrics:
    """Sends to a StatsD server (statsd_exporter) over UDP: fire and forget, never blocks."""

    def __init__(self, host: str, port: int, prefix: str = "retail") -> None:
        self.client = statsd.StatsClient(host, port, prefix=prefix)

    def incr(self, name: str, count: int = 1) -> None:
        self.client.incr(name, count)

    def gauge(self, name: str, value: float) -> None:
        self.client.gauge(name, value)

    def timing(self, name: str, ms: float) -> None:
        self.client.timing(name, ms)


class MemoryMetrics:
    """Keeps everything in dicts, for tests that check what was counted."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = defaultdict(int)
        self.gauges: dict[str, float] = {}
        self.timings: dict[str, list[float]] = defaultdict(list)

    def incr(self, name: str, count: int = 1) -> None:
        self.counters[name] += count

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def timing(self, name: str, ms: float) -> None:
        self.timings[name].append(ms)


@contextmanager
def timed(metrics: Metrics, name: str) -> Iterator[None]:
    """Time a block in milliseconds, whether it succeeds or raises."""
    start = time.perf_counter()
    try:
        yield
    finally:
        metrics.timing(name, (time.perf_counter() - start) * 1000)
