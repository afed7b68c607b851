"""``retail fuzz``: hostile messages among valid events into the running stack's real topics,
drained by its supervised consumers, then checked from outside (:mod:`retail.fuzz`)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from retail.errors import RetailError
from retail.fuzz import hostile_messages, produce, reconcile, wait_consumed
from retail.generator import StreamGenerator
from retail.kafka import Topics
from stack.local import LocalStack

console = Console(stderr=True)


def consumer_restarts(stack: LocalStack) -> int:
    """Restarts of the supervised consumers so far, as the supervisor counts them."""
    return sum(s.restarts for s in stack.services.status({}) if s.region is not None)


def fuzz(
    hostile: Annotated[int, typer.Option(help="Hostile messages to send.")] = 10_000,
    valid: Annotated[int, typer.Option(help="Valid events sent among them.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Decides the events and the mutations.")] = 1,
    timeout: Annotated[
        float, typer.Option(help="Seconds the consumers get to drain everything sent.")
    ] = 900.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Fuzz the live pipeline: send hostile messages (truncated, oversized, wrong types, deep
    nesting, invalid UTF-8, control characters in ids, impossible times, lying headers and
    topics ...) among valid events into the running stack's topics, wait until its consumers
    have drained them, and check that every hostile one is in the dead-letter topic with a
    reason, every valid one is written in its region's DC, and no consumer restarted. Needs a
    stack with supervised consumers (`make demo`, or `retail stack up --consumers 1`). Exits 1
    on any finding."""
    stack = LocalStack()
    topology = stack.topology()
    if not any(s.region for s in stack.services.specs()):
        raise RetailError(
            "the stack runs no supervised consumers to fuzz; start them with "
            "`retail stack up --consumers 1` (or `make demo`)"
        )
    topics = Topics.from_settings()
    restarts = consumer_restarts(stack)
    now = datetime.now(UTC)
    events = list(StreamGenerator(seed=seed, start=now).events(valid + hostile))
    bad = list(hostile_messages(events[valid:], topics, seed=seed, now=now))
    console.print(f"sending {valid:,} valid events and {hostile:,} hostile messages")
    started = time.monotonic()

    def sent_so_far(n: int) -> None:
        if n % 5000 == 0:
            console.print(f"  {n:,} sent")

    sent = produce(topology, events[:valid], bad, topics, seed=seed, on_sent=sent_so_far)
    console.print(f"sent in {time.monotonic() - started:.0f}s; waiting for the consumers")
    last = [0.0]

    def waiting(lag: int) -> None:
        if time.monotonic() - last[0] >= 15:
            last[0] = time.monotonic()
            console.print(f"  {lag:,} messages not consumed yet")

    wait_consumed(topology, topics, timeout, on_wait=waiting)
    console.print("drained; checking the dead-letter topic and every DC")
    result = reconcile(topology, topics, sent)
    result.consumer_restarts = consumer_restarts(stack) - restarts
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        table = Table("mutation", "sent", title="hostile messages")
        for kind, n in result.by_kind.items():
            table.add_row(kind, f"{n:,}")
        Console().print(table)
        for line in result.examples:
            console.print(f"  [red]{line}[/]")
    console.print(result.summary(), style="green" if result.ok else "bold red")
    if not result.ok:
        raise typer.Exit(1)
