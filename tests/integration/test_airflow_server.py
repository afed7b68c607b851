"""The real Airflow servers (API server, scheduler, DAG processor) run the platform's DAGs:
a trigger through the REST API with params, the way the UI's trigger form sends it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from retail import migrations
from retail.cassandra import connect
from stack.airflow import AirflowServers
from stack.local import LocalStack


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


def wait_for_dag(api: httpx.Client, dag_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = api.get(f"/dags/{dag_id}")
        if resp.status_code == 200:
            return resp.json()
        time.sleep(1.0)
    errors = api.get("/importErrors").json()
    raise AssertionError(f"{dag_id} not parsed within {timeout:.0f}s; import errors: {errors}")


def wait_for_run(api: httpx.Client, dag_id: str, run_id: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        run = api.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}").json()
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(1.0)
    raise AssertionError(f"run {run_id} still {run.get('state')} after {timeout:.0f}s")


def test_a_trigger_with_params_runs_through_the_scheduler_to_success(api: httpx.Client) -> None:
    wait_for_dag(api, "schema_migrations")
    assert api.patch("/dags/schema_migrations", json={"is_paused": False}).status_code == 200
    resp = api.post(
        "/dags/schema_migrations/dagRuns", json={"logical_date": None, "conf": {"dry_run": True}}
    )
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["dag_run_id"]

    run = wait_for_run(api, "schema_migrations", run_id)
    assert run["state"] == "success"
    assert run["conf"] == {"dry_run": True}
    xcom = api.get(
        f"/dags/schema_migrations/dagRuns/{quote(run_id, safe='')}/taskInstances/"
        "apply_migrations/xcomEntries/return_value"
    )
    assert xcom.status_code == 200, xcom.text
    assert xcom.json()["value"]["dry_run"] is True
    assert xcom.json()["value"]["pending"] == []


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
