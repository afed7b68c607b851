"""``python -m streaming --region eu-west``: a long-running regional consumer.

Reads its region's topics, writes the events into the region's Cassandra DC, commits after the
writes, sends bad events to the dead-letter topic. At start it waits, with backoff and a line
saying what for, until Kafka answers, Cassandra's DC takes connections and the schema is
migrated. SIGTERM (or SIGINT) drains what is polled, commits, and exits 0.

Exit codes: 0 stopped and drained; 1 stopped with its last batch unwritten (nothing lost: it
was not committed, the next start redoes it); 2 a bad option or topology; 3 writes kept failing
in a way retrying does not fix (the log says which and what to do).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from cassandra import DriverException, OperationTimedOut
from cassandra.cluster import Cluster, NoHostAvailable, Session
from confluent_kafka import Consumer, Producer

from retail import logs
from retail.cassandra import connect, read_level_for
from retail.credentials import CASSANDRA_CONSUMER, kafka_consumer
from retail.errors import RetailError
from retail.kafka import Topics, client_config, group_name, missing_topics
from retail.metrics import StatsdMetrics
from retail.rows import KEYSPACE, TABLES
from retail.settings import get_settings
from retail.topology import Topology, current_topology
from streaming.consumer import ConsumerConfig, ConsumerStopped, RegionalConsumer
from streaming.sink import CassandraSink

log = logging.getLogger("streaming")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
T = TypeVar("T")


class NotReady(RetailError):
    """A server the consumer needs is not ready yet; waited for with backoff."""


def wait_for(
    what: str, attempt: Callable[[], T], stop: threading.Event, max_delay: float = 15.0
) -> T:
    """Call ``attempt`` until it succeeds, backing off from 1 s to ``max_delay``; each failure
    logs what is awaited and why. Raises KeyboardInterrupt if ``stop`` is set meanwhile."""
    delay = 1.0
    while True:
        try:
            return attempt()
        except (NotReady, NoHostAvailable, OperationTimedOut, RetailError) as exc:
            log.warning("waiting for %s: %s; retrying in %.0fs", what, exc, delay)
        if stop.wait(delay):
            raise KeyboardInterrupt
        delay = min(delay * 2, max_delay)


def _schema_ready(cluster: Cluster) -> None:
    try:
        cluster.refresh_schema_metadata()
    except DriverException as exc:  # the schema is changing under a migration: not ready yet
        raise NotReady(f"schema metadata not readable yet ({exc})") from exc
    ks = cluster.metadata.keyspaces.get(KEYSPACE)
    missing = [t for t in TABLES if ks is None or t not in ks.tables]
    if missing:
        raise NotReady(
            f"tables {', '.join(missing)} do not exist yet: run `retail migrate` "
            "(or the schema_migrations DAG)"
        )


def _topics_ready(client: dict[str, object], names: list[str]) -> Callable[[], None]:
    def attempt() -> None:
        missing = missing_topics(client, names)
        if missing:
            # The consumers' login may not create topics: the stack, or `retail topics` run by
            # an operator, creates them (and their ACLs) as the admin.
            raise NotReady(
                f"topics {', '.join(missing)} do not exist or are not readable by this login: "
                "create them with `retail topics`"
            )

    return attempt


def _cassandra(
    topology: Topology, dc: str, consistency: str
) -> Callable[[], tuple[Cluster, Session]]:
    def attempt() -> tuple[Cluster, Session]:
        cluster, session = connect(
            topology, dc, consistency_level=consistency, role=CASSANDRA_CONSUMER
        )
        try:
            _schema_ready(cluster)
        except BaseException:
            cluster.shutdown()
            raise
        return cluster, session

    return attempt


@app.command()
def main(
    region: Annotated[str, typer.Option(help="Region (= Cassandra DC) this consumer serves.")],
    consistency: Annotated[str, typer.Option(help="Write consistency level.")] = "LOCAL_QUORUM",
    batch_size: Annotated[int, typer.Option(help="Messages per batch at most.")] = 2000,
    in_flight: Annotated[int, typer.Option(help="Concurrent Cassandra requests at most.")] = 128,
    parallelism: Annotated[
        int,
        typer.Option(help="Groups of partitions written side by side (their round trips overlap)."),
    ] = 3,
    batch_rows: Annotated[
        int, typer.Option(help="Rows of one partition per unlogged batch (1 = no batches).")
    ] = 32,
    group: Annotated[
        str | None, typer.Option(help="Consumer group (default retail-REGION).")
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(help="On SIGTERM, seconds to keep retrying what is polled.")
    ] = 60.0,
    latency_log: Annotated[
        Path | None,
        typer.Option(help="Append every event's end-to-end latency (ms) here (benchmarks)."),
    ] = None,
    health_file: Annotated[
        Path | None,
        typer.Option(
            help="Touch this file every few seconds while the poll loop turns; a healthcheck "
            "that finds it older than a minute knows the consumer is stuck."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Consume one region's retail events and write them into its Cassandra DC."""
    logs.configure(get_settings().log_level, verbose=verbose)
    topology = current_topology()
    dc = topology.datacenter(region)  # fails with the known DCs if the region is wrong
    topics = Topics.from_settings()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: draining and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The region's own Kafka login: it reads the region's topics, commits its group's offsets
    # and writes dead letters, nothing else (retail/kafka_acls.py).
    client = client_config(topology, kafka_consumer(region))
    try:
        wait_for(
            f"Kafka at {topology.bootstrap_servers}",
            _topics_ready(client, [*topics.read_by(region), topics.deadletter]),
            stop,
        )
        cluster, session = wait_for(
            f"Cassandra DC {dc.name} at {', '.join(dc.contact_points)}",
            _cassandra(topology, dc.name, consistency),
            stop,
        )
    except KeyboardInterrupt:
        log.info("stopped before it started")
        raise typer.Exit(0) from None
    metrics = StatsdMetrics(topology.statsd.host, topology.statsd.port)
    group_id = group or group_name(topics.prefix, region)
    workers: list[RegionalConsumer] = []  # the commit callback's target, once made
    consumer = Consumer(
        {
            **client,
            "group.id": group_id,
            "enable.auto.commit": False,
            # Never jump over unread messages: a partition the group never committed starts at
            # its beginning (RegionalConsumer._starts), and a committed offset that is no longer
            # in the log is an error the consumer reports, not a silent skip to either end.
            "auto.offset.reset": "error",
            "partition.assignment.strategy": "cooperative-sticky",
            # A crashed member's partitions move to the others after 10 s, not the default 45.
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 2000,
            # The loop polls between flushes and while one runs; it stops polling only while a
            # full next batch waits for the flush in flight (seconds, bounded by the driver's
            # request timeout), far inside this.
            "max.poll.interval.ms": 300000,
            # The broker answers a fetch as soon as it has data (fetch.min.bytes 1), so this
            # only bounds an empty fetch's wait: long, to spare the broker empty round trips
            # (measured: no change in end-to-end latency from 20 ms to 500 ms).
            "fetch.wait.max.ms": 500,
            # Bounds what librdkafka prefetches: the consumer's memory stays small under a backlog.
            "queued.max.messages.kbytes": 16384,
            # Served by the worker below (callbacks run only inside its polls).
            "on_commit": lambda err, parts: workers[0].on_commit(err, parts),
            "logger": logging.getLogger("streaming.kafka"),
        }
    )
    producer = Producer(
        {
            **client,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "logger": logging.getLogger("streaming.kafka"),
        }
    )
    sink = CassandraSink(
        session,
        metrics,
        local_dc=dc.name,
        concurrency=in_flight,
        batch_rows=batch_rows,
        parallelism=parallelism,
        read_level=read_level_for(consistency, dc.replication_factor),
    )
    cfg = ConsumerConfig(
        region=region,
        batch_size=batch_size,
        drain_timeout=drain_timeout,
        latency_log=latency_log,
    )
    worker = RegionalConsumer(cfg, consumer, producer, sink, metrics, topics)
    workers.append(worker)
    log.info(
        "consumer %s for region %s: topics %s, DC %s at %s, Kafka %s",
        group_id,
        region,
        ", ".join(topics.read_by(region)),
        dc.name,
        consistency,
        topology.bootstrap_servers,
    )
    try:
        drained = worker.run(stop, until=_heartbeat(health_file) if health_file else None)
    except ConsumerStopped as exc:
        log.error("%s", exc)
        raise typer.Exit(3) from None
    finally:
        cluster.shutdown()
    raise typer.Exit(0 if drained else 1)


def _heartbeat(path: Path, every: float = 5.0) -> Callable[[], bool]:
    """A check for the poll loop that never stops it but touches ``path`` at most every
    ``every`` seconds: the file's age says whether the loop still turns."""
    last = 0.0

    def beat() -> bool:
        nonlocal last
        if (now := time.monotonic()) - last >= every:
            path.touch()
            last = now
        return False

    return beat


def run() -> None:
    try:
        app()
    except RetailError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
