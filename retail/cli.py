"""The platform's commands: migrate, roles, produce, report, health, airflow-env. Each is a
thin front on the library. The ``retail`` command adds the local stack's (``retail stack``,
``retail demo``) from :mod:`stack.cli`; ``python -m retail`` runs these alone, without the
stack."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from cassandra import Unauthorized
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
    from retail.credentials import CASSANDRA_OPS
    from retail.topology import current_topology

    topology = current_topology()
    cluster, session = connect(topology, dc or topology.datacenters[0].name, role=CASSANDRA_OPS)
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


@app.command()
def roles() -> None:
    """Set up Cassandra's logins from the platform's credentials (RETAIL_SECRETS_DIR): on a new
    cluster, replicate system_auth per the topology, create the admin role and disable the
    default `cassandra` superuser; then create the consumer, operations and analyst roles with
    their passwords and grants. Safe to run again; `retail stack up` runs it itself."""
    from retail.credentials import stack_credentials
    from retail.ops.access import secure
    from retail.topology import current_topology

    secure(current_topology(), stack_credentials(), report=console.print)
    console.print("Cassandra roles: retail_admin, retail_ops, retail_consumer, retail_analyst")


AIRFLOW_ENV_FILE = "airflow-connections.env"


@app.command("airflow-env")
def airflow_env() -> None:
    """Print the environment a local Airflow needs for the running stack (AIRFLOW_HOME, the
    repo's dags/ and plugins/, StatsD metrics, and the retail_cassandra, retail_kafka and
    retail_statsd connections), as shell exports: eval "$(retail airflow-env)".

    Passwords are never printed: a connection that holds one is shown masked, in a comment, and
    its export goes to a file only you can read (in the secrets directory), which the output
    sources."""
    import json
    import shlex

    from retail.connections import airflow_environment, masked
    from retail.credentials import write_private
    from retail.topology import current_topology

    private: list[str] = []
    for key, value in airflow_environment(current_topology()).items():
        if key.startswith("AIRFLOW_CONN_"):
            conn = json.loads(value)
            shown = masked(conn)
            if shown != conn:
                print(f"# {key}={json.dumps(shown)}  (passwords masked)")
                private.append(f"export {key}={shlex.quote(value)}\n")
                continue
        print(f"export {key}={shlex.quote(value)}")
    if private:
        directory = get_settings().secrets_path
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / AIRFLOW_ENV_FILE
        write_private(path, "".join(private).encode())
        print(f"# the connections with their passwords, readable by you only: {path}")
        print(f". {shlex.quote(str(path))}")


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
    product popularity, inventory that follows sales), or replay a JSON-lines file. With only
    --rate it streams until stopped (SIGTERM or Ctrl-C: what was sent is flushed first)."""
    import itertools
    import secrets
    import time
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from retail.credentials import KAFKA_PRODUCER
    from retail.generator import StreamGenerator
    from retail.kafka import Topics, client_config, missing_topics
    from retail.producer import EventProducer, records_from_events, records_from_jsonl
    from retail.topology import current_topology

    if replay is None and count is None and duration is None and rate is None:
        raise typer.BadParameter(
            "say how much: --count N, --duration SECONDS, --replay FILE, or --rate R alone "
            "to stream until stopped"
        )
    topology = current_topology()
    topics_ = Topics.from_settings()
    # The producer's login may write the event topics, not create them (the stack does, or
    # `retail topics` as the admin).
    missing = missing_topics(client_config(topology, KAFKA_PRODUCER), topics_.events)
    if missing:
        raise RetailError(
            f"topics {', '.join(missing)} do not exist (or the producer may not write them): "
            "create them with `retail topics`"
        )
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
        end = time.monotonic() + duration if duration is not None else float("inf")
        stop = _stop_on_signal()
        events = itertools.takewhile(lambda _: time.monotonic() < end and not stop.is_set(), events)
        records = records_from_events(events, topics_)
        total = count
    producer = EventProducer(topology)
    if not console.is_terminal:  # a service or a pipe: a line now and then, not a bar
        sent = producer.send(records, rate=rate, on_sent=_progress_lines())
    else:
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


def _progress_lines(every: float = 30.0) -> Callable[[int], None]:
    """An ``on_sent`` callback that prints the count so far every ``every`` seconds."""
    import time

    started = last = time.monotonic()
    sent = 0

    def on_sent(n: int) -> None:
        nonlocal sent, last
        sent += n
        if (now := time.monotonic()) - last >= every:
            last = now
            console.print(f"sent {sent} events ({sent / (now - started):.0f}/s)")

    return on_sent


def _stop_on_signal() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so that a stream stops between two events and what
    was sent is flushed, not lost in the client's buffer."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command()
def report(
    day: Annotated[str | None, typer.Option(help="UTC day, YYYY-MM-DD (default today).")] = None,
    region: Annotated[list[str] | None, typer.Option(help="Region(s); default all.")] = None,
    store: Annotated[str | None, typer.Option(help="Store for hourly sales and stock.")] = None,
    customer: Annotated[str | None, typer.Option(help="Customer whose orders to list.")] = None,
    top: Annotated[int, typer.Option(help="How many top products per region.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    html: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write a self-contained HTML page with charts to FILE."),
    ] = None,
) -> None:
    """Answer the retail questions: sales by region, store and hour; top products; a
    customer's orders; stock by store. ``--html FILE`` also writes them as one page with
    charts that opens without a network."""
    import json
    from datetime import UTC, date, datetime

    from retail import report as rep
    from retail.cassandra import connect
    from retail.credentials import CASSANDRA_ANALYST
    from retail.render import print_report
    from retail.topology import current_topology

    topology = current_topology()
    the_day = date.fromisoformat(day) if day else datetime.now(UTC).date()
    regions = region or [dc.name for dc in topology.datacenters]
    for r in regions:
        topology.datacenter(r)
    cluster, session = connect(
        topology,
        topology.datacenters[0].name,
        consistency_level="LOCAL_QUORUM",
        role=CASSANDRA_ANALYST,
    )
    try:
        result = rep.build(session, regions, the_day, store=store, customer=customer, top=top)
    finally:
        cluster.shutdown()
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print_report(result)
    if html is not None:
        from retail.report_html import write_html

        console.print(f"wrote {write_html(result, html)}", soft_wrap=True)


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
    """Run the platform's commands, turning the platform's errors into a clear message. The
    ``retail`` command (:func:`stack.cli.main`) adds the local stack's and the demo to them."""
    try:
        app()
    except RetailError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        tail = getattr(exc, "log_tail", "")
        if tail:
            path = getattr(exc, "log_path", "")
            console.print(Panel(tail, title=f"end of {path or 'its log'}", border_style="red"))
        sys.exit(1)
    except Unauthorized as exc:
        # A role asked for more than it was granted (retail.roles): say which, not a traceback.
        console.print(f"[bold red]refused by Cassandra:[/] {_server_message(exc)}")
        console.print(
            "Each command logs in with the least it needs (DESIGN.md, Security); `retail "
            "migrate` grants the platform's roles their permissions on its keyspace."
        )
        sys.exit(1)


def _server_message(exc: Exception) -> str:
    text = str(exc)
    return text.split('message="', 1)[-1].rstrip('"') if 'message="' in text else text


if __name__ == "__main__":
    main()
