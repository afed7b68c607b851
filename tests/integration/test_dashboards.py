"""Every panel of every Grafana dashboard shows data: while the pipeline runs, each panel's
query returns series from the live Prometheus.

The Operations dashboard shows what the DAGs report (repair recency, balance gauges, view and
audit results) and Airflow's own metrics, so the test runs the operations DAGs through the real
Airflow servers first, as the scheduler would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from retail import migrations
from retail.cassandra import connect
from retail.credentials import CASSANDRA_OPS
from retail.dashboards import panel_queries
from retail.generator import StreamGenerator
from retail.kafka import Topics, ensure_topics
from retail.topology import Topology
from stack.airflow import AirflowServers, trigger, wait_for_run
from stack.local import LocalStack
from tests.integration import prom
from tests.integration.pipeline import PipelineRun

pytestmark = pytest.mark.late


def run_operations(local_stack: LocalStack, topology: Topology, prefix: str) -> None:
    """Each operations DAG once through the real Airflow servers, with the params a person
    would pick: balance and audit on the running pipeline's topics, a small repair, a cleanup."""
    ensure_topics(topology, Topics.named("retail"))  # the platform's, which the DAGs watch too
    operations = [
        ("balance_check", {"topic_prefix": prefix}),
        ("pipeline_audit", {"topic_prefix": prefix}),
        ("materialized_view_rebuild", {}),
        ("replication_repair", {"keyspace": "retail_ops"}),
    ]
    # A cleanup of one DC's nodes (the ring panel's gauges), once the others are done: it refuses
    # to start while the repair runs.
    cleanup = ("ring_maintenance", {"dcs": [topology.datacenters[0].name]})
    servers = AirflowServers(topology, local_stack.dir)
    servers.up()
    try:
        with servers.client() as api:
            runs = [(dag_id, trigger(api, dag_id, conf)) for dag_id, conf in operations]
            states = {d: wait_for_run(api, d, r, timeout=300)["state"] for d, r in runs}
            run = trigger(api, *cleanup)
            states[cleanup[0]] = wait_for_run(api, cleanup[0], run, timeout=300)["state"]
    finally:
        servers.down()
    assert states == dict.fromkeys(states, "success")


@pytest.fixture
def running_pipeline(topology: Topology, tmp_path: Path) -> Iterator[PipelineRun]:
    cluster, session = connect(topology, topology.datacenters[0].name, role=CASSANDRA_OPS)
    migrations.migrate(cluster, session, topology)
    run = PipelineRun(topology, session, tmp_path)
    run.start_all()
    try:
        yield run
    finally:
        run.stop_consumers()
        cluster.shutdown()


def test_every_dashboard_panel_returns_data_while_the_pipeline_runs(
    local_stack: LocalStack, topology: Topology, running_pipeline: PipelineRun
) -> None:
    gen = StreamGenerator(seed=5, start=datetime.now(UTC))
    running_pipeline.produce(gen.events(1000), rate=500)
    running_pipeline.wait_consumed()
    run_operations(local_stack, topology, running_pipeline.prefix)
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
