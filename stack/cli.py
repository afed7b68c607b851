"""``retail stack``: run the platform's real servers on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.status import Status
from rich.table import Table

from retail.topology import PROFILES, profile_topology
from stack import cassandra
from stack.errors import ComponentError
from stack.fetch import fetch_all
from stack.local import LocalStack, Reporter
from stack.process import tail_file
from stack.secrets import COMPOSE_DIR
from stack.services import service_specs
from stack.status import StackStatus, collect

app = typer.Typer(
    help="Run the platform's real servers locally: Cassandra in three DCs, Kafka (KRaft), "
    "Prometheus, Alertmanager and statsd_exporter, as processes on 127.0.x.y addresses.",
    no_args_is_help=True,
)
console = Console(stderr=True)
# Piped output (scripts, CI logs) gets no terminal width; rich would then squeeze the node
# table into 80 columns and cut addresses and tokens.
out = Console(width=None if sys.stdout.isatty() else 140)


class LiveReporter(Reporter):
    """Draws one line per component while the stack starts."""

    def __init__(self, names: list[str]) -> None:
        self.start = time.monotonic()
        self.rows: dict[str, tuple[str, str]] = dict.fromkeys(names, ("…", "starting"))
        self.live = Live(self._table(), console=console, refresh_per_second=4, transient=False)

    def _table(self) -> Table:
        t = Table(
            title=f"starting the stack ({time.monotonic() - self.start:.0f}s)",
            title_justify="left",
            box=None,
            pad_edge=False,
        )
        t.add_column("component")
        t.add_column("", width=2)
        t.add_column("state")
        for name, (mark, detail) in self.rows.items():
            t.add_row(name, mark, detail)
        return t

    def waiting(self, component: str, detail: str) -> None:
        self.rows[component] = ("…", detail)
        self.live.update(self._table())

    def ready(self, component: str, seconds: float) -> None:
        self.rows[component] = ("[green]✓[/]", f"ready after {seconds:.1f}s")
        self.live.update(self._table())


ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        help="Stack size: "
        + "; ".join(f"{k}: {v.description}" for k, v in PROFILES.items())
        + ". Without it (and without --nodes-per-dc or --brokers), `up` starts the stack "
        "recorded here as it was last shaped (nodes added or removed included), or profile test "
        "if there is none.",
    ),
]
NodesOpt = Annotated[
    str | None,
    typer.Option(
        "--nodes-per-dc",
        "-n",
        help="Override the profile's node count: N for every DC, or eu-west=2,us-east=1,...",
    ),
]


@app.command()
def fetch() -> None:
    """Download what the stack runs (Cassandra, Kafka, agents, Prometheus, Alertmanager,
    statsd_exporter) into the cache, if not there yet."""
    stack = LocalStack()
    with console.status("checking the cache") as status:
        artifacts = fetch_all(
            stack.settings.cache_dir, lambda step: status.update(f"fetching {step}")
        )
    console.print(f"everything is in {artifacts.root}")


@app.command()
def up(
    profile: ProfileOpt = None,
    nodes_per_dc: NodesOpt = None,
    brokers: Annotated[int | None, typer.Option(help="Kafka brokers: 1 (default) or 3.")] = None,
    fresh: Annotated[bool, typer.Option(help="Stop and wipe any existing stack first.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 600.0,
    consumers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Consumer processes per region, supervised: restarted with backoff when they "
            "die (0: none).",
        ),
    ] = 1,
    stream_rate: Annotated[
        float,
        typer.Option(
            min=0,
            help="Also keep a realistic event stream flowing at this many events per second, "
            "supervised like the consumers (0: none).",
        ),
    ] = 0.0,
) -> None:
    """Start the stack (fetching what is missing) and wait until every part is ready:
    each Cassandra node UN in every other node's view, Kafka answering metadata,
    Prometheus, Alertmanager and statsd_exporter answering HTTP; then the supervised services
    (the regional consumers, which wait for the schema if it is not migrated yet). On a running
    stack it starts only what is missing or changed."""
    stack = LocalStack()
    saved = stack.saved_topology()
    if profile is None and nodes_per_dc is None and brokers is None and saved is not None:
        topology = saved  # a ring changed by add-node or remove-node keeps its shape
    else:
        topology = profile_topology(profile or "test", nodes_per_dc, brokers)
    services = service_specs(topology, consumers, stream_rate, stack.services.home)
    with console.status("checking the cache") as status:
        fetch_all(stack.settings.cache_dir, lambda step: status.update(f"fetching {step}"))
    names = [c.name for c in stack.components(topology) if c.kind != "supervisor"]
    reporter = LiveReporter(names + (["supervisor"] if services else []))
    started = time.monotonic()
    try:
        with reporter.live:
            stack.up(topology, fresh=fresh, timeout=timeout, reporter=reporter, services=services)
    except ComponentError:
        console.print(
            "\nthe parts that did start are left running for a look; `retail stack down` stops them"
        )
        raise
    console.line()  # the live table leaves the cursor on its last row when output is piped
    console.print(
        f"[green]stack ready[/] in {time.monotonic() - started:.1f}s (state in {stack.dir})"
    )


@app.command()
def down(
    purge: Annotated[bool, typer.Option(help="Also delete data, logs and state.")] = False,
) -> None:
    """Stop every process the stack started, by PID (Cassandra and Kafka get time to flush)."""
    stack = LocalStack()
    with console.status("stopping the stack"):
        stopped = stack.down(purge=purge)
    console.print(
        f"stopped {len(stopped)} processes"
        + (f": {', '.join(stopped)}" if stopped else " (nothing was running)")
    )


@app.command()
def secrets(
    out: Annotated[
        Path, typer.Option(help="Directory to write them to (kept out of git).")
    ] = COMPOSE_DIR / "secrets",
    topology: Annotated[
        Path, typer.Option(help="The deployment's topology (addresses are service names).")
    ] = COMPOSE_DIR / "consumer" / "topology.json",
) -> None:
    """Generate a Compose deployment's secrets: every login, a CA and a certificate per
    Cassandra node and Kafka broker, and the env files of the services that log in (each file
    0600). What exists is kept, so running it again changes no password. `make compose-secrets`
    runs it; docker/compose.yaml reads the result."""
    from retail.topology import Topology
    from stack.secrets import compose

    compose(out, Topology.from_json(topology.read_text()))
    console.print(f"secrets in {out} (passwords are in credentials.json there, mode 0600)")


@app.command()
def airflow(
    stop: Annotated[bool, typer.Option("--stop", help="Stop Airflow's servers.")] = False,
) -> None:
    """Start Airflow's API server (UI and REST API), scheduler and DAG processor next to the
    running stack, with the repo's DAGs and the stack's connections; prints the users and
    the file that holds their passwords (never a password)."""
    from stack.airflow import AirflowServers

    stack = LocalStack()
    servers = AirflowServers(stack.topology(), stack.dir)
    if stop:
        stopped = servers.down()
        console.print(f"stopped {', '.join(stopped) or 'nothing (not running)'}")
        return
    with console.status("starting Airflow (db migrate, api-server, scheduler, dag-processor)"):
        servers.up()
    console.print(
        f"[green]Airflow ready[/] at {servers.url}  users admin, operator (triggers DAGs), "
        f"viewer; passwords *** (in {servers.passwords_file}, readable by you only); "
        "`retail stack down` stops it with the rest"
    )


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return "?"


def _fmt_mb(mb: float | None) -> str:
    return "-" if mb is None else f"{mb:.0f} MiB"


def print_status(st: StackStatus) -> None:
    for dc in dict.fromkeys(n.dc for n in st.nodes):
        t = Table(title=f"Datacenter: {dc}", title_justify="left")
        for col in ("state", "node", "address", "rack", "load", "owns (DC)", "token", "pid", "rss"):
            t.add_column(col)
        for n in (n for n in st.nodes if n.dc == dc):
            color = "green" if n.state == "UN" else "red"
            owns = f"{n.owns:.1%}" if n.owns is not None else "?"
            t.add_row(
                f"[{color}]{n.state}[/]",
                n.name,
                n.address,
                n.rack,
                _fmt_bytes(n.load_bytes),
                owns,
                str(n.token),
                str(n.pid or "-"),
                _fmt_mb(n.rss_mb),
            )
        out.print(t)
    out.print(
        "Status=Up/Down, State=Normal/Leaving/Joining/Moving"
        + (f"; gossip view of {st.observer}" if st.observer else "; no node answered")
    )
    t = Table(title="Services", title_justify="left")
    for col in ("state", "service", "endpoint", "pid", "rss"):
        t.add_column(col)
    for s in st.services:
        color = "green" if s.state == "up" else "red"
        t.add_row(
            f"[{color}]{s.state}[/]", s.name, s.endpoint, str(s.pid or "-"), _fmt_mb(s.rss_mb)
        )
    out.print(t)
    if st.supervised:
        print_supervised(st)


def print_supervised(st: StackStatus) -> None:
    t = Table(title="Supervised services", title_justify="left")
    for col in ("state", "service", "pid", "up for", "restarts", "last exit", "group lag"):
        t.add_column(col)
    for s in st.supervised:
        color = "green" if s.state == "running" else "red"
        t.add_row(
            f"[{color}]{s.state}[/]",
            s.name,
            str(s.pid or "-"),
            "-" if s.uptime_s is None else f"{s.uptime_s:.0f}s",
            str(s.restarts),
            "-" if s.last_exit is None else str(s.last_exit),
            "-" if s.region is None else "?" if s.lag is None else f"{s.lag} ({s.region})",
        )
    out.print(t)


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output with every endpoint.")
    ] = False,
) -> None:
    """Per-DC node table (state, load, ownership) and every service; exits 1 if anything is down."""
    st = collect(LocalStack())
    if as_json:
        print(json.dumps(st.to_dict(), indent=2))
    else:
        print_status(st)
    raise typer.Exit(0 if st.ok else 1)


@app.command()
def logs(
    component: Annotated[
        str | None, typer.Argument(help="Node or service; all if omitted.")
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 30,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
) -> None:
    """Show the end of a component's log (Cassandra's system.log, Kafka's server.log, ...)."""
    stack = LocalStack()
    logs_of = {c.name: c.process.main_log for c in stack.components(stack.topology())}
    logs_of |= {s.name: stack.services.log_of(s.name) for s in stack.services.specs()}
    aliases = {c.endpoint.split(":")[0]: c.name for c in stack.components(stack.topology())}
    name = aliases.get(component or "", component)
    chosen = list(logs_of) if name is None else [n for n in logs_of if n == name]
    if not chosen:
        raise typer.BadParameter(f"no component {component!r}; have: " + ", ".join(logs_of))
    if follow:
        if len(chosen) != 1:
            raise typer.BadParameter("--follow needs one component")
        os.execvp("tail", ["tail", "-n", str(lines), "-F", str(logs_of[chosen[0]])])
    for n in chosen:
        out.rule(f"{n}: {logs_of[n]}")
        out.print(tail_file(logs_of[n], lines), markup=False, highlight=False)


@app.command()
def kill(
    node: Annotated[
        str,
        typer.Argument(help="Node name (eu-west-1), address, service, or consumer-eu-west-1."),
    ],
) -> None:
    """SIGKILL one node or service, as a crash would (a supervised consumer comes back)."""
    console.print(f"killed {LocalStack().kill(node)}")


@app.command()
def start(
    node: Annotated[str, typer.Argument(help="Node name (eu-west-1), address, or service.")],
    timeout: float = 300.0,
) -> None:
    """Start a stopped node or service and wait until it is ready (a node: UN everywhere)."""
    with console.status(f"starting {node}"):
        name = LocalStack().start(node, timeout=timeout)
    console.print(f"[green]{name} ready[/]")


class StatusReporter(Reporter):
    """Shows a long ring change's progress on one status line, and logs each new state."""

    def __init__(self, status: Status) -> None:
        self.status = status
        self.last = ""

    def waiting(self, component: str, detail: str) -> None:
        self.status.update(f"{component}: {detail}")
        if detail.split(",")[0] != self.last.split(",")[0]:
            console.log(f"{component}: {detail}")
        self.last = detail

    def ready(self, component: str, seconds: float) -> None:
        console.log(f"{component}: done after {seconds:.0f}s")


@app.command("add-node")
def add_node(
    dc: Annotated[str, typer.Argument(help="The data center to grow: eu-west, us-east, ...")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the join.")] = 900.0,
) -> None:
    """Bootstrap a new Cassandra node into a running DC: the next free address, a token in the
    middle of the DC's widest range (from one node to two: an even split), streaming the ranges
    it takes over; waits until it is Up/Normal everywhere and records it in the topology. The
    DC's replication factor stays. Afterwards run the `ring_maintenance` DAG: the DC's other
    nodes still hold the ranges they gave up until their cleanup."""
    from stack.ring import add_node as join

    stack = LocalStack()
    with console.status(f"adding a node to {dc}") as st:
        node = join(stack, dc, timeout=timeout, reporter=StatusReporter(st))
    console.print(
        f"[green]{node.name} joined {dc}[/] at {node.address}, token {node.token}; "
        "clean up the DC's other nodes with the ring_maintenance DAG"
    )
    print_status(collect(stack))


@app.command("remove-node")
def remove_node(
    node: Annotated[str, typer.Argument(help="Node name (eu-west-2) or address.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the decommission.")] = 1800.0,
) -> None:
    """Decommission a Cassandra node: its ranges stream to the nodes that take them over, then
    it stops and leaves the topology (its files are removed). Refuses the last node of a DC, a
    node its DC's replication factor needs, a DC's seed, and any change while a node is down or
    another join or leave runs."""
    from stack.ring import remove_node as leave

    stack = LocalStack()
    with console.status(f"decommissioning {node}") as st:
        gone = leave(stack, node, timeout=timeout, reporter=StatusReporter(st))
    console.print(
        f"[green]{gone.name} left the ring[/]; its ranges now live on the other {gone.dc} nodes"
    )
    print_status(collect(stack))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def nodetool(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="Node name (eu-west-1) or address.")],
) -> None:
    """Run Cassandra's nodetool against a node, e.g. `retail stack nodetool eu-west-1 status`."""
    stack = LocalStack()
    target = stack.topology().node(node)
    argv = cassandra.nodetool_argv(target, list(ctx.args), stack.artifacts)
    sys.exit(subprocess.run(argv, check=False).returncode)


def main() -> None:
    """The ``retail`` command: the platform's commands, ``retail stack ...``, ``retail demo``,
    ``retail fuzz`` and ``retail chaos``."""
    from retail import cli as platform
    from stack.chaos import chaos
    from stack.demo import demo
    from stack.fuzz import fuzz

    platform.app.add_typer(app, name="stack")
    platform.app.command()(demo)
    platform.app.command()(fuzz)
    platform.app.command()(chaos)
    platform.main()
