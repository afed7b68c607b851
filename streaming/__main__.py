"""``python -m streaming --region eu-west``: a long-running regional consumer.

Reads the event topics, writes its region's events into its local Cassandra DC, commits after
the writes, sends bad events to the dead-letter topic. SIGTERM (or SIGINT) drains the last batch,
commits, and exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka import Consumer, Producer

from retail import logs
from retail.cassandra import connect
from retail.errors import RetailError
from retail.kafka import Topics, ensure_topics
from retail.metrics import StatsdMetrics
from retail.settings import get_settings
from retail.topology import current_topology
from streaming.consumer import ConsumerConfig, RegionalConsumer
from streaming.sink import CassandraSink

log = logging.getLogger("streaming")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    region: Annotated[str, typer.Option(help="Region (= Cassandra DC) this consumer serves.")],
    consistency: Annotated[str, typer.Option(help="Write consistency level.")] = "LOCAL_QUORUM",
    batch_size: Annotated[int, typer.Option(help="Messages per poll.")] = 2000,
    in_flight: Annotated[int, typer.Option(help="Concurrent Cassandra writes at most.")] = 128,
    batch_rows: Annotated[
        int, typer.Option(help="Rows of one partition per unlogged batch (1 = no batches).")
    ] = 32,
    group: Annotated[
        str | None, typer.Option(help="Consumer group (default retail-REGION).")
    ] = None,
    latency_log: Annotated[
        Path | None,
        typer.Option(help="Append every event's end-to-end latency (ms) here (benchmarks)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Consume retail events for one region and write them into its local Cassandra DC."""
    logs.configure(get_settings().log_level, verbose=verbose)
    topology = current_topology()
    dc = topology.datacenter(region)  # fails with the known DCs if the region is wrong
    topics = Topics.from_settings()
    ensure_topics(topology, topics)
    metrics = StatsdMetrics(topology.statsd.host, topology.statsd.port)
    cluster, session = connect(topology, dc.name, consistency_level=consistency)
    group_id = group or f"{get_settings().topic_prefix}-{region}"
    consumer = Consumer(
        {
            "bootstrap.servers": topology.bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            # A crashed member's partitions move to the others after 10 s, not the default 45.
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 2000,
            # The broker answers a fetch at once when there is data, and waits at most 20 ms
            # when there is none (the default 500 ms would be the pipeline's latency floor).
            "fetch.wait.max.ms": 20,
            # Bounds what librdkafka prefetches: the consumer's memory stays small under a backlog.
            "queued.max.messages.kbytes": 16384,
            "logger": logging.getLogger("streaming.kafka"),
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": topology.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "logger": logging.getLogger("streaming.kafka"),
        }
    )
    sink = CassandraSink(
        session, metrics, local_dc=dc.name, concurrency=in_flight, batch_rows=batch_rows
    )
    cfg = ConsumerConfig(
        region=region,
        batch_size=batch_size,
        catch_all=region == topology.datacenters[0].name,
        latency_log=latency_log,
    )
    worker = RegionalConsumer(
        cfg, consumer, producer, sink, metrics, topics, {d.name for d in topology.datacenters}
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: draining and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "consumer %s for region %s: DC %s at %s, Kafka %s",
        group_id,
        region,
        dc.name,
        consistency,
        topology.bootstrap_servers,
    )
    try:
        drained = worker.run(stop)
    finally:
        cluster.shutdown()
    raise typer.Exit(0 if drained else 1)


def run() -> None:
    try:
        app()
    except RetailError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
