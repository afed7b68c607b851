"""Airflow's REST API on the real servers, seen from outside: no token, no access (401); the
viewer sees DAGs but may not trigger one (403); the operator's trigger is accepted."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from stack.airflow import ADMIN, OPERATOR, VIEWER, AirflowServers, wait_for_dag
from stack.local import LocalStack

DAG_ID = "schema_migrations"
# A dry run: should the run ever be scheduled, it only lists what it would apply.
TRIGGER = {"logical_date": None, "conf": {"dry_run": True}}


@pytest.fixture(scope="module")
def servers(local_stack: LocalStack) -> Iterator[AirflowServers]:
    servers = AirflowServers(local_stack.topology(), local_stack.dir)
    servers.up()
    try:
        with servers.client(ADMIN) as admin:
            wait_for_dag(admin, DAG_ID)
            # Paused, so that a trigger here only queues a run: a browser test before this one
            # may have unpaused it, and a running run can be neither stopped nor deleted here.
            admin.patch(f"/dags/{DAG_ID}", json={"is_paused": True}).raise_for_status()
        yield servers
    finally:
        servers.down()


def _runs_url(servers: AirflowServers) -> str:
    return f"{servers.url}/api/v2/dags/{DAG_ID}/dagRuns"


def test_the_rest_api_refuses_a_request_without_a_token(servers: AirflowServers) -> None:
    assert httpx.post(_runs_url(servers), json=TRIGGER, timeout=10).status_code == 401
    assert httpx.get(f"{servers.url}/api/v2/dags", timeout=10).status_code == 401
    # A token that is not one of its own: Airflow answers 403 ("Invalid JWT token").
    forged = {"Authorization": "Bearer not-a-token"}
    assert httpx.post(_runs_url(servers), json=TRIGGER, headers=forged).status_code == 403


def test_a_wrong_password_gets_no_token(servers: AirflowServers) -> None:
    resp = httpx.post(
        f"{servers.url}/auth/token",
        json={"username": OPERATOR, "password": "not-the-password"},
        timeout=10,
    )
    assert resp.status_code == 401


def test_the_viewer_sees_the_dags_but_may_not_trigger_one(servers: AirflowServers) -> None:
    with servers.client(VIEWER) as viewer:
        assert viewer.get(f"/dags/{DAG_ID}").status_code == 200
        resp = viewer.post(f"/dags/{DAG_ID}/dagRuns", json=TRIGGER)
        assert resp.status_code == 403, resp.text
        assert viewer.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 403


def test_the_operators_trigger_is_accepted(servers: AirflowServers) -> None:
    with servers.client(OPERATOR) as operator:
        resp = operator.post(f"/dags/{DAG_ID}/dagRuns", json=TRIGGER)
        assert resp.status_code == 200, resp.text
        run_id = resp.json()["dag_run_id"]
        assert resp.json()["triggering_user_name"] == OPERATOR
    # The DAG is paused (see the fixture), so the run only waits: the admin removes it again.
    with servers.client(ADMIN) as admin:
        gone = admin.delete(f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")
        assert gone.status_code == 204, gone.text
