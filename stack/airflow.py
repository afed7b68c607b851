"""Airflow's servers next to the local stack: the API server (UI and REST API), the scheduler and
the DAG processor, as plain processes with their home in the stack dir (SQLite metadata DB).

They run the repo's dags/ and plugins/ with the connections of the running stack and send
Airflow's own metrics to the stack's StatsD. The simple auth manager knows three users, their
passwords the stack's (``airflow`` in ``credentials.json``, :mod:`retail.credentials`), written
into ``<stack dir>/airflow/home/passwords.json`` (0600 from the open call):

- ``admin`` (role admin): everything;
- ``operator`` (role user, the least role the simple auth manager lets trigger, pause and
  clear DAG runs): runs the operations;
- ``viewer`` (role viewer): sees DAGs, runs and logs, triggers nothing.

Nothing prints a password: ``retail stack airflow`` names the file to read it from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from retail.connections import airflow_environment
from retail.credentials import Credentials, Login, stack_credentials
from retail.errors import RetailError
from retail.settings import Settings, get_settings
from retail.topology import Topology
from stack.process import ManagedProcess
from stack.secrets import write_private

API_HOST = "127.0.0.1"
API_PORT = 8080
COMPONENTS = ("api-server", "scheduler", "dag-processor")
# Login -> simple auth manager role. "user" is the least role that may trigger a DAG run (its
# is_authorized_dag allows POST/PUT/DELETE from "user" up).
ROLES = {"admin": "admin", "operator": "user", "viewer": "viewer"}
ADMIN, OPERATOR, VIEWER = "admin", "operator", "viewer"
# A scheduler that dies takes its LocalExecutor's tasks with it, and the supervised restart finds
# them still "running". Airflow resets a dead scheduler's tasks (and so retries them) only once
# that scheduler has missed heartbeats for scheduler_health_check_threshold (30 s) and at the
# next orphan check, by default 300 s later: longer than balance_check's 4-minute run timeout,
# so the run failed instead of retrying (found by `retail chaos`). Checking every 30 s retries
# an orphaned task within about a minute; the check is one query.
SCHEDULER_RECOVERY = {"AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30"}


class AirflowError(RetailError):
    """Airflow's servers did not start or answer."""


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


class AirflowServers:
    """Start, reach and stop the local Airflow servers."""

    def __init__(
        self, topology: Topology, stack_dir: Path, settings: Settings | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self.dir = stack_dir / "airflow"
        self.home = self.dir / "home"
        self.url = f"http://{API_HOST}:{API_PORT}"
        self.env = {
            **airflow_environment(topology, self.settings),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__API__HOST": API_HOST,
            "AIRFLOW__API__PORT": str(API_PORT),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # Four task slots, not the default 32 pre-forked workers: a 2-core machine.
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                f"{user}:{role}" for user, role in ROLES.items()
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            **SCHEDULER_RECOVERY,
        }

    @property
    def passwords_file(self) -> Path:
        return self.home / "passwords.json"

    def processes(self) -> list[ManagedProcess]:
        return [
            ManagedProcess(
                name=f"airflow-{c}", argv=[airflow_bin(), c], home=self.dir / c, env=self.env
            )
            for c in COMPONENTS
        ]

    def credentials(self) -> Credentials:
        return stack_credentials(self.settings)

    def login(self, user: str = OPERATOR) -> Login:
        """A user's login (``admin``, ``operator``, ``viewer``), from the stack's credentials."""
        return self.credentials().login("airflow", user)

    def write_passwords(self) -> None:
        """The simple auth manager's passwords file from the stack's credentials, created 0600
        (it reads it; it writes it only to add a user it finds missing)."""
        creds = self.credentials()
        passwords = {
            user: creds.login("airflow", user).password.get_secret_value() for user in ROLES
        }
        write_private(self.passwords_file, json.dumps(passwords).encode())

    def up(self, timeout: float = 180.0) -> None:
        """Migrate the metadata DB, start the servers and wait until the API says every
        component is healthy."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.write_passwords()
        migrate = subprocess.run(
            [airflow_bin(), "db", "migrate"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if migrate.returncode != 0:
            raise AirflowError(f"`airflow db migrate` failed:\n{migrate.stderr[-2000:]}")
        for proc in self.processes():
            proc.start()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            for proc in self.processes():
                if not proc.alive():
                    raise AirflowError(f"{proc.name} exited during start:\n{proc.tail(30)}")
            try:
                health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=3).json()
                unhealthy = [
                    name
                    for name in ("metadatabase", "scheduler", "dag_processor")
                    if (health.get(name) or {}).get("status") != "healthy"
                ]
                if not unhealthy:
                    return
                last = f"not healthy yet: {', '.join(unhealthy)}"
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(1.0)
        raise AirflowError(f"Airflow not healthy after {timeout:.0f}s ({last}); see {self.dir}")

    def down(self) -> list[str]:
        procs = [p for p in self.processes() if p.terminate()]
        for proc in procs:
            proc.wait_stopped(30.0)
        return [p.name for p in procs]

    def token(self, user: str = OPERATOR) -> str:
        """A REST API token (JWT) for ``user``."""
        login = self.login(user)
        resp = httpx.post(
            f"{self.url}/auth/token",
            json={"username": login.username, "password": login.password.get_secret_value()},
            timeout=10,
        )
        if resp.status_code != 201:
            raise AirflowError(f"Airflow refused the login of {user!r} ({resp.status_code})")
        return str(resp.json()["access_token"])

    def client(self, user: str = OPERATOR) -> httpx.Client:
        """An HTTP client for the REST API, logged in as ``user`` (by default the operator,
        who may trigger, pause and unpause DAGs)."""
        return httpx.Client(
            base_url=f"{self.url}/api/v2",
            headers={"Authorization": f"Bearer {self.token(user)}"},
            timeout=30,
        )


def wait_for_dag(api: httpx.Client, dag_id: str, timeout: float = 120.0) -> dict:
    """The DAG as the API shows it, once the DAG processor has parsed it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = api.get(f"/dags/{dag_id}")
        if resp.status_code == 200:
            return resp.json()
        time.sleep(1.0)
    errors = api.get("/importErrors").json().get("import_errors")
    raise AirflowError(f"DAG {dag_id} not parsed within {timeout:.0f}s; import errors: {errors}")


def trigger(api: httpx.Client, dag_id: str, conf: dict) -> str:
    """Unpause ``dag_id`` and trigger a run with ``conf`` as the UI's form does; returns the run
    id. Raises with Airflow's message when the params are refused."""
    wait_for_dag(api, dag_id)
    api.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    resp = api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
    if resp.status_code != 200:
        raise AirflowError(f"trigger of {dag_id} refused ({resp.status_code}): {resp.text}")
    return resp.json()["dag_run_id"]


def wait_for_run(api: httpx.Client, dag_id: str, run_id: str, timeout: float = 300.0) -> dict:
    """The run once it has finished (success or failed)."""
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        run = api.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}").json()
        if run.get("state") in ("success", "failed"):
            return run
        time.sleep(1.0)
    raise AirflowError(f"run {run_id} of {dag_id} still {run.get('state')} after {timeout:.0f}s")


def task_running(api: httpx.Client, dag_id: str, run_id: str, timeout: float = 300.0) -> bool:
    """Wait until a task of the run is seen running: True, or False if the run ended first."""
    run = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = api.get(f"{run}/taskInstances").json().get("task_instances", [])
        if any(t["state"] == "running" for t in tasks):
            return True
        if api.get(run).json().get("state") in ("success", "failed"):
            return False
        time.sleep(0.3)
    raise AirflowError(f"no task of {dag_id} running after {timeout:.0f}s")


def trigger_while_running(api: httpx.Client, dag_id: str, conf: dict, tries: int = 3) -> str:
    """Trigger runs of ``dag_id`` until one is seen with a task running; its run id (a run
    whose tasks all ended between two looks is tried again, ``tries`` times in all)."""
    for _ in range(tries):
        run_id = trigger(api, dag_id, conf)
        if task_running(api, dag_id, run_id):
            return run_id
    raise AirflowError(f"no task of {dag_id} was seen running in {tries} runs")


def task_result(api: httpx.Client, dag_id: str, run_id: str, task_id: str) -> object:
    """What ``task_id`` returned in the run (its XCom), or None."""
    resp = api.get(
        f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        "/xcomEntries/return_value"
    )
    return resp.json().get("value") if resp.status_code == 200 else None
