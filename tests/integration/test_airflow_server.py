"""The real Airflow servers (API server, scheduler, DAG processor) run the platform's DAGs:
a trigger through the REST API with params, the way the UI's trigger form sends it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from retail import migrations
from retail.cassandra import connect
from stack.airflow import AirflowServers, task_result, trigger, wait_for_dag, wait_for_run
from stack.local import LocalStack
from tests.integration import prom


@pytest.fixture(scope="module")
def api(local_stack: LocalStack) -> Iterator[httpx.Client]:
    topology = local_stack.topology()
    cluster, session = connect(topology, topology.datacenters[0].name)
    migrations.migrate(cluster, session, topology)  # the dry run below then finds nothing pending
    cluster.shutdown()
    servers = AirflowServers(topology, local_stack.dir)
    servers.up()
    client = servers.client()
    try:
        yield client
    finally:
        client.close()
        servers.down()


def test_a_trigger_with_params_runs_through_the_scheduler_to_success(api: httpx.Client) -> None:
    run_id = trigger(api, "schema_migrations", {"dry_run": True})
    run = wait_for_run(api, "schema_migrations", run_id, timeout=180)
    assert run["state"] == "success"
    assert run["conf"] == {"dry_run": True}
    result = task_result(api, "schema_migrations", run_id, "apply_migrations")
    assert isinstance(result, dict)
    assert result["dry_run"] is True
    assert result["pending"] == []


def test_invalid_params_are_refused_with_a_message_naming_the_param(api: httpx.Client) -> None:
    wait_for_dag(api, "schema_migrations")
    resp = api.post(
        "/dags/schema_migrations/dagRuns",
        json={"logical_date": None, "conf": {"dry_run": "yes please"}},
    )
    assert resp.status_code == 400
    assert "dry_run" in resp.text
    runs = api.get("/dags/schema_migrations/dagRuns").json()["dag_runs"]
    assert all(r["conf"].get("dry_run") != "yes please" for r in runs)


def test_a_failed_run_shows_in_prometheus_through_airflows_own_statsd_metrics(
    api: httpx.Client, local_stack: LocalStack
) -> None:
    # A migration edited after it was applied: the run fails for good (no retry).
    path = migrations.load()[-1].path
    original = path.read_text()
    path.write_text(original + "-- edited after it was applied\n")
    try:
        run_id = trigger(api, "schema_migrations", {"dry_run": False})
        run = wait_for_run(api, "schema_migrations", run_id, timeout=180)
    finally:
        path.write_text(original)
    assert run["state"] == "failed"

    topology = local_stack.topology()
    failed = prom.wait_for(
        topology,
        'airflow_dagrun_duration_seconds_count{dag_id="schema_migrations", state="failed"}',
        timeout=60,
    )
    assert float(failed[0]["value"][1]) >= 1
    alerts = prom.wait_for(
        topology, 'ALERTS{alertname="DagRunFailed", dag_id="schema_migrations"}', timeout=60
    )
    assert alerts[0]["metric"]["severity"] == "warning"
