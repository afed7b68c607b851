"""Every panel of every Grafana dashboard shows data: while the pipeline runs, each panel's
query returns series from the live Prometheus.

It runs late in the session: the Operations dashboard shows what the DAG tests left behind
(repair recency, balance gauges, view and audit results, Airflow's own metrics)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from retail import migrations
from retail.cassandra import connect
from retail.dashboards import panel_queries
from retail.generator import StreamGenerator
from retail.topology import Topology
from tests.integration import prom
from tests.integration.pipeline import PipelineRun

pytestmark = pytest.mark.late


@pytest.fixture
def running_pipeline(topology: Topology, tmp_path: Path) -> Iterator[PipelineRun]:
    cluster, session = connect(topology, topology.datacenters[0].name)
    migrations.migrate(cluster, session, topology)
    run = PipelineRun(topology, session, tmp_path)
    run.start_all()
    try:
        yield run
    finally:
        run.stop_consumers()
        cluster.shutdown()


def test_every_dashboard_panel_returns_data_while_the_pipeline_runs(
    topology: Topology, running_pipeline: PipelineRun
) -> None:
    gen = StreamGenerator(seed=5, start=datetime.now(UTC))
    queries = panel_queries()
    assert len(queries) > 20
    empty = queries
    deadline = time.monotonic() + 150
    while empty and time.monotonic() < deadline:
        # A steady stream: rates need two scrapes of moving counters.
        running_pipeline.produce(gen.events(400), rate=200)
        empty = [q for q in empty if not prom.query(topology, q.expr)]
    assert not empty, "panels without data:\n" + "\n".join(
        f"  {q.dashboard} / {q.panel}: {q.expr}" for q in empty
    )
