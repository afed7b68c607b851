"""``retail demo``: the platform's main job on this machine, left running for its user.

The three-DC stack comes up with a supervised consumer per region (waiting for the schema), and
Airflow next to it; the schema_migrations DAG migrates the schema; a realistic event stream
starts at a modest rate, supervised like the consumers; once the consumers keep up with it, the
retail report is printed (and written as an HTML page with charts); then the operations' DAGs
are unpaused, so that the scheduler runs them as it would in production, and their first runs
are shown as they finish. Everything keeps running until ``retail stack down``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from retail.errors import RetailError
from retail.kafka import Topics, region_lag
from retail.topology import Topology
from stack import secrets
from stack.airflow import AirflowServers, trigger, wait_for_dag, wait_for_run
from stack.local import LocalStack

console = Console(stderr=True)

# The operations the scheduler runs on their own schedules (schema_migrations runs on demand).
SCHEDULED = ("pipeline_audit", "balance_check", "materialized_view_rebuild", "replication_repair")
DONE = ("success", "failed")


class Steps:
    """One progress line per step: its number, what it does, and how long it took."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.started = total, 0, time.monotonic()
        self.step_started = self.started

    def next(self, what: str) -> None:
        self.n += 1
        self.step_started = time.monotonic()
        console.rule(f"[{self.n}/{self.total}] {what}")

    def done(self, detail: str = "") -> None:
        now = time.monotonic()
        console.print(
            f"[green]✓[/] step {self.n} in {now - self.step_started:.0f}s"
            f"{f' ({detail})' if detail else ''}; {now - self.started:.0f}s so far"
        )


def demo(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Stack size.")] = "demo",
    rate: Annotated[
        float, typer.Option(min=1, help="Events per second the stream keeps flowing at.")
    ] = 25.0,
    consumers: Annotated[
        int, typer.Option(min=1, help="Supervised consumer processes per region.")
    ] = 1,
    warmup: Annotated[
        float, typer.Option(help="Seconds of stream to let in before the report.")
    ] = 20.0,
    report_file: Annotated[
        Path | None,
        typer.Option(
            "--html", help="Where to write the report's HTML page (default: STATE_DIR/report.html)."
        ),
    ] = None,
) -> None:
    """The platform's main job, left running: the three-DC stack with a supervised consumer per
    region and a live event stream, Airflow migrating the schema through its DAG and running
    the operations on their schedules, and the retail report (terminal and HTML)."""
    from retail import cli as retail_cli
    from retail.topology import profile_topology
    from stack import cli as stack_cli
    from stack.services import service_specs

    steps = Steps(5)
    stack = LocalStack()
    report_file = report_file or stack.settings.state_dir / "report.html"
    topology = profile_topology(profile, None, None)
    # The stack's secrets first: Airflow's connections carry the operations' login and the CA
    # (read when its servers are set up), and Airflow starts beside the stack, before up would
    # have written them. up finds them and keeps them.
    secrets.ensure(stack.dir, topology)
    servers = AirflowServers(topology, stack.dir)

    steps.next("the local stack and Airflow: Cassandra in three DCs, Kafka, monitoring, consumers")
    # Airflow needs none of the servers to start (its metadata DB is SQLite): it comes up
    # meanwhile, in a thread, while the stack's nodes join.
    with ThreadPoolExecutor(1) as pool:
        airflow = pool.submit(servers.up)
        stack_cli.up(
            profile=profile,
            nodes_per_dc=None,
            brokers=None,
            fresh=False,
            timeout=900.0,
            consumers=consumers,
            stream_rate=0,
        )
        with console.status("waiting for Airflow (api-server, scheduler, dag-processor)"):
            airflow.result()
    api = servers.client()
    steps.done(f"{len(stack.services.specs())} supervised consumers; Airflow at {servers.url}")

    steps.next("the schema, through the schema_migrations DAG")
    _run(api, "schema_migrations", {"dry_run": False})
    steps.done()

    steps.next(f"events flowing at {rate:g}/s into the consumers")
    # The stream joins the consumers under the supervisor, which starts it alone.
    stack.services.configure(service_specs(topology, consumers, rate, stack.services.home))
    written = _wait_for_flow(topology, warmup)
    steps.done(f"the consumers keep up: {written}")

    steps.next("the retail report")
    retail_cli.report(
        day=None, region=None, store=None, customer=None, top=5, as_json=False, html=report_file
    )
    steps.done(str(report_file))

    steps.next("the operations on their schedules: their first runs")
    for dag_id in SCHEDULED:  # from now on the scheduler runs them as their schedules say
        wait_for_dag(api, dag_id)
        api.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    console.print(f"unpaused {', '.join(SCHEDULED)}")
    _show_scheduled_runs(api)
    steps.done()

    console.print(
        Panel.fit(
            f"Airflow UI: {servers.url}  (users admin, operator, viewer; passwords in "
            f"{servers.passwords_file})\n"
            f"Prometheus: {topology.prometheus.url}   Alertmanager: {topology.alertmanager.url}\n"
            f"The report as a page: {report_file.resolve()}\n"
            "Everything keeps running: the consumers and the stream are supervised.\n"
            "  retail stack status             nodes, services, consumers (restarts, lag)\n"
            "  retail stack kill consumer-eu-west-1   a crash: the supervisor restarts it\n"
            "  retail stack logs consumer-eu-west-1   its log\n"
            "  retail health                   alerts, throughput, lag, nodes down\n"
            "  retail report --customer ID     a customer's orders\n"
            "  retail stack down               stop everything (add --purge to delete the data)",
            title="open",
        )
    )


def _run(api: httpx.Client, dag_id: str, conf: dict) -> None:
    """Trigger ``dag_id`` as the UI's form does and wait for it; fail with where to look."""
    run_id = trigger(api, dag_id, conf)
    with console.status(f"{dag_id} running"):
        run = wait_for_run(api, dag_id, run_id, timeout=900)
    if run["state"] != "success":
        raise RetailError(f"{dag_id} run {run_id} {run['state']}; its task logs are in the UI")
    console.print(f"{dag_id} {run_id}: [green]success[/] in {_seconds(run)}")


def _wait_for_flow(topology: Topology, warmup: float) -> str:
    """Let the stream run for ``warmup`` seconds, then wait until every region's group has
    caught up with it (lag under a second of stream)."""
    topics = Topics.from_settings()
    regions = [dc.name for dc in topology.datacenters]
    deadline = time.monotonic() + warmup + 300
    with console.status("") as status:
        until = time.monotonic() + warmup
        while (left := until - time.monotonic()) > 0:
            status.update(f"letting the stream in: {left:.0f}s")
            time.sleep(min(left, 1.0))
        while True:
            lag = {r: region_lag(topology, topics, r) for r in regions}
            behind = sum(lag.values())
            if all(v < 200 for v in lag.values()):
                return f"lag {behind} events over {len(regions)} regions"
            if time.monotonic() > deadline:
                raise RetailError(
                    f"the consumers are not keeping up ({lag}); "
                    "see `retail stack status` and `retail stack logs consumer-<region>-1`"
                )
            status.update(f"waiting for the consumers: {behind} events behind")
            time.sleep(1.0)


def _show_scheduled_runs(api: httpx.Client, timeout: float = 90.0) -> None:
    """Wait up to ``timeout`` seconds for the first run the scheduler makes of each unpaused
    DAG; print how each went or that it still runs (a repair of every keyspace takes longer:
    the UI follows it). Fails if one failed."""
    deadline = time.monotonic() + timeout
    latest: dict[str, dict] = {}
    with console.status("") as status:
        while True:
            for dag_id in SCHEDULED:
                runs = api.get(
                    f"/dags/{dag_id}/dagRuns", params={"run_type": "scheduled", "limit": 1}
                ).json()["dag_runs"]
                if runs:
                    latest[dag_id] = runs[0]
            going = [d for d in SCHEDULED if latest.get(d, {}).get("state") not in DONE]
            if not going or time.monotonic() > deadline:
                break
            status.update(f"scheduled runs going: {', '.join(going)}")
            time.sleep(2.0)
    table = Table("DAG", "scheduled run", "state", "seconds")
    for dag_id in SCHEDULED:
        run = latest.get(dag_id, {})
        state = run.get("state", "not created yet")
        colour = {"success": "green", "failed": "red"}.get(state, "yellow")
        table.add_row(dag_id, run.get("dag_run_id", "-"), f"[{colour}]{state}[/]", _seconds(run))
    console.print(table)
    if any(r.get("state") == "failed" for r in latest.values()):
        raise RetailError("a scheduled run failed; its task logs are in the Airflow UI")


def _seconds(run: dict) -> str:
    if not (run.get("start_date") and run.get("end_date")):
        return "-"
    took = datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])
    return f"{took.total_seconds():.1f}s"
