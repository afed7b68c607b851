"""``retail``: the platform's command line. Each sub-command is a thin front on the library."""

from __future__ import annotations

import sys
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


@app.command()
def demo(profile: Annotated[str, typer.Option("--profile", "-p")] = "demo") -> None:
    """The platform's main job, end to end. For now: the three-DC stack up, its status,
    and how to stop it."""
    from stack import cli as stack_cli

    stack_cli.up(profile=profile, nodes_per_dc=None, brokers=None, fresh=False, timeout=900.0)
    from stack.local import LocalStack
    from stack.status import collect

    st = collect(LocalStack())
    stack_cli._print_status(st)
    console.print(
        Panel.fit(
            "The stack keeps running in the background.\n"
            "  retail stack status        nodes and services\n"
            "  retail stack logs NODE     a node's system.log\n"
            "  retail stack down          stop everything (add --purge to delete the data)",
            title="next",
        )
    )


@app.command()
def migrate(
    dry_run: Annotated[
        bool, typer.Option(help="List what would be applied; change nothing.")
    ] = False,
    dc: Annotated[str | None, typer.Option(help="Data center to connect through.")] = None,
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
            on_statement=lambda m, stmt: console.print(
                f"[dim]{m.path.name}[/] {stmt.splitlines()[0][:90]}"
            ),
        )
    finally:
        cluster.shutdown()
    console.print(report.summary())


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
