"""``retail``: the platform's command line. Each sub-command is a thin front on the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

from retail import logs
from retail.errors import RetailError
from retail.settings import get_settings

app = typer.Typer(
    help="The retail data platform: local stack, pipeline and operations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logs, driver noise included.")
    ] = False,
) -> None:
    logs.configure(get_settings().log_level, verbose=verbose)


def _register() -> None:
    from stack.cli import app as stack_app

    app.add_typer(stack_app, name="stack")


# What the demo runs after the stream, with the params a person would pick in the UI.
# The consumers have drained: audit everything up to now, first and alone (it says whether
# anything was lost before the repair and the rebuilds change anything).
DEMO_AUDIT: tuple[str, dict] = ("pipeline_audit", {"window_minutes": 30, "settle_minutes": 0})
DEMO_OPERATIONS: list[tuple[str, dict]] = [
    ("balance_check", {"window_seconds": 300}),
    ("materialized_view_rebuild", {"fix_rollups": True, "window_hours": 2}),
    ("replication_repair", {"keyspace": "retail"}),
]


def _run_dags(api: object, runs: list[tuple[str, dict]]) -> dict[str, str]:
    """Trigger DAG runs through the REST API (as the UI does), wait for them, and print their
    outcome; returns the run id per DAG; fails if any failed."""
    import json
    from datetime import datetime

    from rich.table import Table

    from stack.airflow import trigger, wait_for_run

    started = []
    for dag_id, conf in runs:
        started.append((dag_id, trigger(api, dag_id, conf)))  # type: ignore[arg-type]
        console.print(f"triggered {dag_id} {json.dumps(conf)}")
    table = Table("DAG", "run", "state", "seconds")
    failed = []
    with console.status("waiting for the DAG runs"):
        for dag_id, run_id in started:
            run = wait_for_run(api, dag_id, run_id, timeout=900)  # type: ignore[arg-type]
            took = "?"
            if run.get("start_date") and run.get("end_date"):
                end = datetime.fromisoformat(run["end_date"])
                took = f"{(end - datetime.fromisoformat(run['start_date'])).total_seconds():.1f}"
            state = run["state"]
            colour = "green" if state == "success" else "red"
            table.add_row(dag_id, run_id, f"[{colour}]{state}[/]", took)
            if state != "success":
                failed.append(dag_id)
    console.print(table)
    if failed:
        raise RetailError(
            f"DAG runs failed: {', '.join(failed)}; their task logs are in the Airflow UI"
        )
    return dict(started)


@app.command()
def demo(
    profile: Annotated[str, typer.Option("--profile", "-p")] = "demo",
    duration: Annotated[float, typer.Option(help="Seconds of events to stream.")] = 30.0,
    rate: Annotated[float, typer.Option(help="Events per second.")] = 1000.0,
) -> None:
    """The platform's main job, end to end: the three-DC stack and Airflow up, the schema
    migrated by its DAG, a consumer per region, a realistic stream of events, the retail
    report, then the audit, balance, view and repair DAGs through Airflow's REST API."""
    import time

    from retail.kafka import Topics, ensure_topics, region_lag
    from retail.topology import current_topology
    from stack import cli as stack_cli
    from stack.airflow import AirflowServers, task_result
    from stack.local import LocalStack
    from stack.status import collect
    from streaming.processes import consumer_process

    console.rule("1. the local stack")
    stack_cli.up(profile=profile, nodes_per_dc=None, brokers=None, fresh=False, timeout=900.0)
    stack_cli.print_status(collect(LocalStack()))
    console.rule("2. Airflow, and the schema through the schema_migrations DAG")
    stack = LocalStack()
    servers = AirflowServers(stack.topology(), stack.dir)
    with console.status("starting Airflow (api-server, scheduler, dag-processor)"):
        servers.up()
    api = servers.client()
    _run_dags(api, [("schema_migrations", {"dry_run": False})])
    topology = current_topology()
    topics_ = Topics.from_settings()
    ensure_topics(topology, topics_)
    console.rule("3. consumers, one per region")
    home = get_settings().state_dir / "demo" / "consumers"
    consumers = [consumer_process(dc.name, home) for dc in topology.datacenters]
    for proc in consumers:
        proc.start()
        console.print(f"{proc.name}: pid {proc.pid()}, log {proc.main_log}")
    try:
        console.rule(f"4. streaming events for {duration:.0f}s at {rate:.0f}/s")
        produce(count=None, duration=duration, rate=rate, replay=None, seed=None, stores=20)
        with console.status("waiting for the consumers to write everything") as status:
            deadline = time.monotonic() + 300
            regions = [dc.name for dc in topology.datacenters]
            while (lag := sum(region_lag(topology, topics_, r) for r in regions)) > 0:
                dead = [p.name for p in consumers if not p.alive()]
                if dead or time.monotonic() > deadline:
                    raise RetailError(
                        f"consumers not caught up ({lag} events behind; "
                        f"stopped: {dead or 'none'}); see their logs in {home}"
                    )
                status.update(f"waiting for the consumers: {lag} events to write")
                time.sleep(0.5)
    finally:
        for proc in consumers:
            proc.stop(timeout=90)  # SIGTERM: each drains its last batch and commits
    console.rule("5. the retail report")
    report(day=None, region=None, store=None, customer=None, top=5, as_json=False)
    console.rule("6. operations: the audit, balance, view and repair DAGs")
    _run_dags(api, [DEMO_AUDIT])
    run_ids = _run_dags(api, DEMO_OPERATIONS)
    balance = task_result(api, "balance_check", run_ids["balance_check"], "check_balance")
    if isinstance(balance, dict) and balance.get("recommendations"):
        console.print(
            Panel.fit("\n".join(balance["recommendations"]), title="balance_check recommends")
        )
    console.print(
        Panel.fit(
            f"Airflow UI: {servers.url}  (user admin, password {servers.password()})\n"
            f"Prometheus: {topology.prometheus.url}   Alertmanager: {topology.alertmanager.url}\n"
            "The stack keeps running; the consumers have drained and stopped.\n"
            "  retail health                   alerts, throughput, lag, nodes down\n"
            "  retail stack status             nodes and services\n"
            "  retail produce --duration 60    more events (then python -m streaming --region R)\n"
            "  retail report --customer ID     a customer's orders\n"
            "  retail stack down               stop everything (add --purge to delete the data)",
            title="next",
        )
    )


@app.command()
def migrate(
    dry_run: Annotated[
        bool, typer.Option(help="List what would be applied; change nothing.")
    ] = False,
    dc: Annotated[str | None, typer.Option(help="Data center to connect through.")] = None,
    allow_replication_decrease: Annotated[
        bool, typer.Option(help="Allow removing a DC or lowering a replication factor.")
    ] = False,
) -> None:
    """Apply the versioned CQL migrations in include/cql (the code the schema_migrations DAG
    runs): in order, each recorded with its checksum, under a cluster-wide lock."""
    from retail import migrations
    from retail.cassandra import connect
    from retail.topology import current_topology

    topology = current_topology()
    cluster, session = connect(topology, dc or topology.datacenters[0].name)
    try:
        report = migrations.migrate(
            cluster,
            session,
            topology,
            dry_run=dry_run,
            allow_replication_decrease=allow_replication_decrease,
            on_statement=lambda m, stmt: console.print(
                f"[dim]{m.path.name}[/] {stmt.splitlines()[0][:90]}"
            ),
        )
    finally:
        cluster.shutdown()
    console.print(report.summary())


@app.command("airflow-env")
def airflow_env() -> None:
    """Print the environment a local Airflow needs for the running stack (AIRFLOW_HOME, the
    repo's dags/ and plugins/, StatsD metrics, and the retail_cassandra, retail_kafka and
    retail_statsd connections), as shell exports: eval "$(retail airflow-env)"."""
    import shlex

    from retail.connections import airflow_environment
    from retail.topology import current_topology

    for key, value in airflow_environment(current_topology()).items():
        print(f"export {key}={shlex.quote(value)}")


@app.command()
def topics() -> None:
    """Create the event topics and the dead-letter topic if they are missing."""
    from retail.kafka import Topics, ensure_topics
    from retail.topology import current_topology

    created = ensure_topics(current_topology(), Topics.from_settings())
    console.print(f"created: {', '.join(created)}" if created else "all topics exist")


@app.command()
def produce(
    count: Annotated[int | None, typer.Option("--count", "-n", help="Events to send.")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds to stream for.")] = None,
    rate: Annotated[float | None, typer.Option(help="Events per second (default: max).")] = None,
    replay: Annotated[Path | None, typer.Option(help="Send a JSON-lines file as it is.")] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the generated stream: the same seed sends the same events again "
            "(same ids, so it changes nothing already written). Default: a new one each run."
        ),
    ] = None,
    stores: Annotated[int, typer.Option(help="Stores per region.")] = 20,
) -> None:
    """Stream realistic retail events into Kafka (stores in all three regions, skewed store and
    product popularity, inventory that follows sales), or replay a JSON-lines file."""
    import itertools
    import secrets
    import time
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from retail.generator import StreamGenerator
    from retail.kafka import Topics, ensure_topics
    from retail.producer import EventProducer, records_from_events, records_from_jsonl
    from retail.topology import current_topology

    if replay is None and count is None and duration is None:
        raise typer.BadParameter("say how much: --count N, --duration SECONDS or --replay FILE")
    topology = current_topology()
    topics_ = Topics.from_settings()
    ensure_topics(topology, topics_)
    if replay is not None:
        records = records_from_jsonl(replay, topics_)
        total = None
    else:
        if seed is None:
            seed = secrets.randbits(31)
            console.print(f"seed {seed} (pass --seed {seed} to send this stream again)")
        # Event times start now and advance at the target rate (or 1,000/s when unthrottled).
        gen = StreamGenerator(
            seed=seed,
            stores_per_region=stores,
            start=datetime.now(UTC),
            events_per_second=rate or 1000.0,
        )
        events = gen.events(count) if count is not None else iter(gen)
        if duration is not None:
            end = time.monotonic() + duration
            events = itertools.takewhile(lambda _: time.monotonic() < end, events)
        records = records_from_events(events, topics_)
        total = count
    producer = EventProducer(topology)
    with Progress(
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("producing", total=total)
        sent = producer.send(records, rate=rate, on_sent=lambda n: progress.advance(task, n))
    console.print(f"sent {sent} events to {topology.bootstrap_servers}")


@app.command()
def report(
    day: Annotated[str | None, typer.Option(help="UTC day, YYYY-MM-DD (default today).")] = None,
    region: Annotated[list[str] | None, typer.Option(help="Region(s); default all.")] = None,
    store: Annotated[str | None, typer.Option(help="Store for hourly sales and stock.")] = None,
    customer: Annotated[str | None, typer.Option(help="Customer whose orders to list.")] = None,
    top: Annotated[int, typer.Option(help="How many top products per region.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Answer the retail questions: sales by region, store and hour; top products; a
    customer's orders; stock by store."""
    import json
    from datetime import UTC, date, datetime

    from retail import report as rep
    from retail.cassandra import connect
    from retail.render import print_report
    from retail.topology import current_topology

    topology = current_topology()
    the_day = date.fromisoformat(day) if day else datetime.now(UTC).date()
    regions = region or [dc.name for dc in topology.datacenters]
    for r in regions:
        topology.datacenter(r)
    cluster, session = connect(
        topology, topology.datacenters[0].name, consistency_level="LOCAL_QUORUM"
    )
    try:
        result = rep.build(session, regions, the_day, store=store, customer=customer, top=top)
    finally:
        cluster.shutdown()
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print_report(result)


@app.command()
def health(
    prometheus: Annotated[
        str | None,
        typer.Option(help="Prometheus URL (default: the current topology's, port 9090)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """The platform on one screen, from Prometheus: alerts firing, Cassandra nodes and scrape
    targets down, events written per region, consumer lag, dead letters. Exits 1 when something
    is wrong or Prometheus cannot be asked."""
    import json

    from rich.table import Table

    from retail.health import collect
    from retail.topology import current_topology

    report = collect(prometheus or current_topology().prometheus.url)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        table = Table(title=f"retail health ({report.prometheus})", show_lines=False)
        for column in ("check", "state", "summary"):
            table.add_column(column)
        for check in report.checks:
            state = "[green]ok[/]" if check.ok else "[bold red]PROBLEM[/]"
            details = "".join(f"\n  {d}" for d in check.details)
            table.add_row(check.name, state, check.summary + details)
        Console().print(table)
        verdict = "all good" if report.ok else "something is wrong: see the PROBLEM lines"
        console.print(verdict, style="green" if report.ok else "bold red")
    if not report.ok:
        raise typer.Exit(1)


def main() -> None:
    """Console entry point: run the CLI, turning the platform's errors into a clear message."""
    _register()
    try:
        app()
    except RetailError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        tail = getattr(exc, "log_tail", "")
        if tail:
            path = getattr(exc, "log_path", "")
            console.print(Panel(tail, title=f"end of {path or 'its log'}", border_style="red"))
        sys.exit(1)


if __name__ == "__main__":
    main()
