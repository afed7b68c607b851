"""A StatsD metric travels UDP -> statsd_exporter -> Prometheus."""

from __future__ import annotations

import time
import uuid

import statsd

from retail.topology import Topology
from tests.integration import prom


def test_a_statsd_counter_shows_up_in_a_prometheus_query(topology: Topology) -> None:
    probe = uuid.uuid4().hex[:12]
    client = statsd.StatsClient(topology.statsd.host, topology.statsd.port, prefix="retail")
    client.incr(f"test.probe.{probe}", 7)
    client.incr(f"test.probe.{probe}", 5)

    promql = f'retail_test_probe_total{{probe="{probe}"}}'
    result = prom.wait_for(topology, promql, lambda r: prom.value(r) == 12, timeout=60)
    assert float(result[0]["value"][1]) == 12
    assert result[0]["metric"]["job"] == "statsd_exporter"


def test_prometheus_scrapes_every_part_of_the_stack(topology: Topology) -> None:
    deadline = time.monotonic() + 60
    while True:
        up = {
            (r["metric"]["job"], r["metric"]["instance"]): r["value"][1]
            for r in prom.query(topology, "up")
        }
        if len(up) >= 4 + len(topology.nodes) and all(v == "1" for v in up.values()):
            break
        assert time.monotonic() < deadline, f"not every target is up: {up}"
        time.sleep(1)
    jobs = {job for job, _ in up}
    assert jobs == {"prometheus", "alertmanager", "statsd_exporter", "cassandra", "kafka"}
    nodes = prom.query(topology, 'up{job="cassandra"}')
    assert {(r["metric"]["dc"], r["metric"]["node"]) for r in nodes} == {
        (n.dc, n.name) for n in topology.nodes
    }
