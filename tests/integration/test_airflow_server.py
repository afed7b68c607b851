"""The real Airflow servers (API server, scheduler, DAG processor) run the platform's DAGs:
a trigger through the REST API with params, the way the UI's trigger form sends it, and the UI
itself in headless Chromium: sign in, trigger with a param typed into the form, watch the run
succeed; invalid values refused by the form."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from retail import migrations
from retail.cassandra import connect
from retail.credentials import CASSANDRA_OPS
from stack.airflow import (
    OPERATOR,
    AirflowServers,
    task_result,
    trigger,
    trigger_while_running,
    wait_for_dag,
    wait_for_run,
)
from stack.local import LocalStack
from tests.integration import prom
from tests.integration.airflow_ui import airflow_ui


@pytest.fixture(scope="module")
def servers(local_stack: LocalStack) -> Iterator[AirflowServers]:
    """Airflow's servers, started once for the module (a start costs CI about a minute)."""
    topology = local_stack.topology()
    cluster, session = connect(topology, topology.datacenters[0].name, role=CASSANDRA_OPS)
    migrations.migrate(cluster, session, topology)  # the dry runs below then find nothing pending
    cluster.shutdown()
    servers = AirflowServers(topology, local_stack.dir)
    servers.up()
    try:
        yield servers
    finally:
        servers.down()


@pytest.fixture(scope="module")
def api(servers: AirflowServers) -> Iterator[httpx.Client]:
    client = servers.client()
    try:
        yield client
    finally:
        client.close()


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


def set_paused(api: httpx.Client, dag_id: str, paused: bool) -> None:
    wait_for_dag(api, dag_id)
    api.patch(f"/dags/{dag_id}", json={"is_paused": paused}).raise_for_status()


def test_the_ui_triggers_a_run_with_a_param_set_in_its_form_and_shows_it_succeed(
    servers: AirflowServers, api: httpx.Client, tmp_path: Path
) -> None:
    # Paused, as every DAG is at creation (a test above may have unpaused it): the form then
    # offers to unpause it on trigger, which a user keeps ticked.
    set_paused(api, "schema_migrations", True)
    with airflow_ui(servers.url, tmp_path) as ui:
        ui.log_in(OPERATOR, servers.login(OPERATOR).password.get_secret_value())
        ui.open_dag("schema_migrations")
        ui.open_trigger_form()
        ui.set_checkbox("Unpause schema_migrations on trigger", True)
        ui.set_switch("dry_run", True)
        ui.submit()

        run_id = ui.wait_for_run_page("schema_migrations")
        states = ui.wait_for_run_state(timeout=240)
        assert states[-1] == "Success", f"run {run_id} in the UI went through {states}"

        run = api.get(f"/dags/schema_migrations/dagRuns/{quote(run_id, safe='')}").json()
        assert run["state"] == "success"
        assert run["conf"] == {"dry_run": True, "allow_replication_decrease": False}
        assert run["triggering_user_name"] == OPERATOR
        assert api.get("/dags/schema_migrations").json()["is_paused"] is False
        result = task_result(api, "schema_migrations", run_id, "apply_migrations")
        assert isinstance(result, dict)
        assert result["dry_run"] is True


def test_the_ui_trigger_form_refuses_invalid_params(
    servers: AirflowServers, api: httpx.Client, tmp_path: Path
) -> None:
    # balance_check runs every 5 minutes once unpaused: the user clears "unpause on trigger",
    # so nothing here starts its schedule on the shared stack.
    set_paused(api, "balance_check", True)
    runs_before = api.get("/dags/balance_check/dagRuns").json()["total_entries"]
    bad_prefix = "no such; prefix"
    with airflow_ui(servers.url, tmp_path) as ui:
        ui.log_in(OPERATOR, servers.login(OPERATOR).password.get_secret_value())
        ui.open_dag("balance_check")
        ui.open_trigger_form()
        ui.set_checkbox("Unpause balance_check on trigger", False)

        # Below the minimum (10): the field does not keep it, it snaps to the minimum.
        ui.type_param("window_seconds", "5")
        ui.wait(lambda _: ui.param_value("window_seconds") == "10", "window_seconds set to 10")
        # Emptied, a required param: a message under the field and no Trigger.
        ui.type_param("window_seconds", "")
        assert ui.param_error("window_seconds") == "This field is required"
        ui.wait(lambda _: not ui.trigger_button().is_enabled(), "a disabled Trigger button")
        ui.type_param("window_seconds", "60")
        # Outside its pattern: the form sends it and shows Airflow's refusal, naming the param.
        ui.type_param("topic_prefix", bad_prefix)
        ui.submit()
        error = ui.form_error()
        assert "Invalid input for param topic_prefix" in error
        assert bad_prefix in error

        runs = api.get("/dags/balance_check/dagRuns").json()
        assert runs["total_entries"] == runs_before, runs["dag_runs"]
        assert all(r["conf"].get("topic_prefix") != bad_prefix for r in runs["dag_runs"])
        assert api.get("/dags/balance_check").json()["is_paused"] is True


def test_a_task_the_scheduler_took_down_with_it_is_retried_and_its_run_succeeds(
    servers: AirflowServers, api: httpx.Client
) -> None:
    # The scheduler is SIGKILLed (its whole process group: the LocalExecutor's task processes go
    # with it) while a balance_check task runs, and started again, as a supervisor would. The run
    # must still succeed within the DAG's 4-minute run timeout: the task is retried.
    run_id = trigger_while_running(api, "balance_check", {})
    scheduler = next(p for p in servers.processes() if p.name == "airflow-scheduler")
    assert scheduler.kill()
    scheduler.start()
    servers.wait_healthy(300)

    try:
        run = wait_for_run(api, "balance_check", run_id, timeout=400)
    finally:
        set_paused(api, "balance_check", True)  # no scheduled runs for the rest of the module
    assert run["state"] == "success"
    tries = api.get(
        f"/dags/balance_check/dagRuns/{quote(run_id, safe='')}/taskInstances/check_balance"
    ).json()["try_number"]
    assert tries >= 2, "the kill did not interrupt the task it was meant to"
