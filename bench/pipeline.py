"""Pipeline benchmark: the same events on the same local stack, four ways, in one run.

1. ceiling   the raw cassandra-driver: the same base rows, concurrent prepared inserts, no Kafka
             (and, for reference, the same rows in the consumer's single-partition batches)
2. naive     a consumer that polls one message, inserts synchronously, commits per message
3. consumer  the project's consumers (one per region, as deployed) draining a backlog
4. latency   end-to-end latency (event time to row written) at half the consumer's rate,
             and the consumers' peak resident memory

    python bench/pipeline.py            # a table for people
    python bench/pipeline.py --json     # one JSON object

It starts the local test stack if none is running and applies the migrations. Each phase gets
fresh topics and empty tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from cassandra.concurrent import execute_concurrent

from retail import migrations
from retail.cassandra import connect
from retail.events import Event, decode
from retail.generator import StreamGenerator
from retail.kafka import Topics, ensure_topics, group_lag
from retail.producer import EventProducer, records_from_events
from retail.rows import INSERTS, TABLES, rows_for
from retail.settings import get_settings
from retail.topology import Topology, profile_topology
from stack.local import LocalStack
from streaming.processes import consumer_process
from streaming.sink import partition_batches

TARGETS = {
    "consumer_vs_ceiling": 0.85,
    "consumer_vs_naive": 10.0,
    "e2e_p99_ms": 50.0,
    "consumer_rss_mb": 150.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def truncate(session) -> None:
    for table in TABLES:
        session.execute(f"TRUNCATE retail.{table}", timeout=120)


def fresh_topics(topology: Topology) -> Topics:
    topics = Topics.named(f"bench{uuid.uuid4().hex[:6]}", partitions=12)
    ensure_topics(topology, topics)
    return topics


def ceiling(session, events: list[Event], concurrency: int, batch_rows: int = 0) -> float:
    """Events per second when the driver writes the base rows directly: one prepared insert
    per row, or (``batch_rows`` > 0) the consumer's single-partition batches."""
    prepared = {name: session.prepare(cql) for name, cql in INSERTS.items()}
    statements = [(prepared[name], values) for e in events for name, values in rows_for(e)]
    if batch_rows:
        statements = [(b, ()) for b in partition_batches(statements, batch_rows)]
    started = time.perf_counter()
    for ok, result in execute_concurrent(
        session, statements, concurrency=concurrency, raise_on_first_error=False
    ):
        if not ok:
            raise RuntimeError(f"ceiling write failed: {result}")
    return len(events) / (time.perf_counter() - started)


def naive(topology: Topology, session, topics: Topics, budget_s: float) -> float:
    """One message per poll, synchronous inserts, a commit per message, for ``budget_s``."""
    from confluent_kafka import Consumer

    prepared = {name: session.prepare(cql) for name, cql in INSERTS.items()}
    consumer = Consumer(
        {
            "bootstrap.servers": topology.bootstrap_servers,
            "group.id": f"{topics.orders}-naive",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe(topics.events)
    done = 0
    started = None
    try:
        while started is None or time.perf_counter() - started < budget_s:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            started = started or time.perf_counter()
            for name, values in rows_for(decode(msg.value())):
                session.execute(prepared[name], values)
            consumer.commit(msg, asynchronous=False)
            done += 1
    finally:
        consumer.close()
    return done / (time.perf_counter() - started)


def run_consumers(
    topology: Topology, topics: Topics, home: Path, latency_log: bool = False
) -> list:
    env = {
        "RETAIL_TOPIC_PREFIX": topics.orders.rsplit(".", 1)[0],
        "RETAIL_TOPIC_PARTITIONS": str(topics.partitions),
    }
    procs = []
    for dc in topology.datacenters:
        args = ["--latency-log", str(home / f"latency-{dc.name}.txt")] if latency_log else []
        p = consumer_process(dc.name, home, *args, env=env)
        p.start()
        procs.append(p)
    return procs


def wait_drained(topology: Topology, topics: Topics, procs: list, timeout: float) -> None:
    prefix = topics.orders.rsplit(".", 1)[0]
    deadline = time.monotonic() + timeout
    while (
        sum(group_lag(topology, topics, f"{prefix}-{dc.name}") for dc in topology.datacenters) > 0
    ):
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} died:\n{p.tail(40)}")
        if time.monotonic() > deadline:
            raise RuntimeError("consumers did not drain in time")
        time.sleep(0.2)


def peak_rss_mb(procs: list) -> float:
    return max(mb for p in procs if (mb := p.rss_mb(peak=True)) is not None)


def consumer_drain(
    topology: Topology, session, events: list[Event], home: Path
) -> tuple[float, float]:
    """Events per second for the project's consumers to drain a backlog of ``events``."""
    truncate(session)
    topics = fresh_topics(topology)
    EventProducer(topology).send(records_from_events(events, topics))
    procs = run_consumers(topology, topics, home / "drain")
    started = time.perf_counter()
    try:
        wait_drained(topology, topics, procs, timeout=900)
        eps = len(events) / (time.perf_counter() - started)
        rss = peak_rss_mb(procs)
    finally:
        for p in procs:
            p.stop(timeout=60)
    return eps, rss


def latency(
    topology: Topology, session, events: list[Event], rate: float, home: Path
) -> tuple[float, float, float]:
    """p50 and p99 of event time -> written, streaming at ``rate`` events/s; and peak RSS."""
    truncate(session)
    topics = fresh_topics(topology)
    procs = run_consumers(topology, topics, home / "latency", latency_log=True)
    time.sleep(8)  # let the consumers join their groups before the clock starts

    def stamped() -> object:
        # The event time is when the event is sent: the latency a store would see.
        for e in events:
            yield msgspec.structs.replace(e, event_time=datetime.now(UTC))

    producer = EventProducer(topology, **{"linger.ms": 1})
    try:
        producer.send(records_from_events(stamped(), topics), rate=rate)
        wait_drained(topology, topics, procs, timeout=600)
        rss = peak_rss_mb(procs)
    finally:
        for p in procs:
            p.stop(timeout=60)
    samples = []
    for f in (home / "latency").glob("latency-*.txt"):
        for line in f.read_text().splitlines():
            samples += [float(x) for x in line.split()]
    samples.sort()
    q = statistics.quantiles(samples, n=100)
    return q[49], q[98], rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--latency-events", type=int, default=10_000)
    parser.add_argument("--naive-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument(
        "--batch-rows", type=int, default=32, help="rows per batch in the batched reference"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    stack = LocalStack()
    topology = stack.saved_topology()
    if topology is None or not stack.running(topology):
        log("starting the local test stack")
        topology = stack.up(profile_topology("test"))
    cluster, session = connect(topology, topology.datacenters[0].name)
    migrations.migrate(cluster, session, topology)
    home = get_settings().state_dir / "bench" / time.strftime("%Y%m%d-%H%M%S")
    home.mkdir(parents=True)
    gen = StreamGenerator(seed=2026, start=datetime.now(UTC) - timedelta(hours=1))
    events = list(gen.events(args.events))
    rows = sum(len(rows_for(e)) for e in events)
    log(f"{len(events)} events ({rows} base rows), {len(topology.nodes)} Cassandra nodes")

    log("warming up Cassandra (JIT, caches) with a quarter of the events, untimed")
    ceiling(session, events[: len(events) // 4], args.concurrency)
    truncate(session)
    log("1/4 ceiling: raw driver, concurrent prepared inserts")
    ceiling_eps = ceiling(session, events, args.concurrency)
    truncate(session)
    log("    for reference: the same rows in the consumer's single-partition batches")
    batched_eps = ceiling(session, events, args.concurrency, batch_rows=args.batch_rows)
    log("2/4 naive consumer")
    truncate(session)
    topics = fresh_topics(topology)
    EventProducer(topology).send(records_from_events(events, topics))
    naive_eps = naive(topology, session, topics, args.naive_seconds)
    log("3/4 the project's consumers draining the backlog")
    consumer_eps, rss_drain = consumer_drain(topology, session, events, home)
    log(f"4/4 end-to-end latency at {consumer_eps / 2:.0f} events/s")
    p50, p99, rss_stream = latency(
        topology, session, events[: args.latency_events], consumer_eps / 2, home
    )
    cluster.shutdown()

    result = {
        "ceiling_eps": round(ceiling_eps, 1),
        "naive_eps": round(naive_eps, 1),
        "consumer_eps": round(consumer_eps, 1),
        "e2e_p50_ms": round(p50, 2),
        "e2e_p99_ms": round(p99, 2),
        "consumer_rss_mb": round(max(rss_drain, rss_stream), 1),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    checks = [
        (
            "consumer / ceiling",
            consumer_eps / ceiling_eps,
            f">= {TARGETS['consumer_vs_ceiling']}",
            consumer_eps / ceiling_eps >= TARGETS["consumer_vs_ceiling"],
        ),
        (
            "consumer / naive",
            consumer_eps / naive_eps,
            f">= {TARGETS['consumer_vs_naive']}",
            consumer_eps / naive_eps >= TARGETS["consumer_vs_naive"],
        ),
        ("e2e p99 (ms)", p99, f"<= {TARGETS['e2e_p99_ms']}", p99 <= TARGETS["e2e_p99_ms"]),
        (
            "consumer peak RSS (MiB)",
            result["consumer_rss_mb"],
            f"<= {TARGETS['consumer_rss_mb']}",
            result["consumer_rss_mb"] <= TARGETS["consumer_rss_mb"],
        ),
    ]
    print(
        f"\n{len(events):,} events, {rows:,} base rows, {len(topology.nodes)} nodes "
        f"({', '.join(dc.name for dc in topology.datacenters)})\n"
    )
    print(f"{'':28}{'events/s':>12}")
    print(f"{'ceiling (raw driver)':28}{ceiling_eps:>12,.0f}")
    print(f"{'  same, partition batches':28}{batched_eps:>12,.0f}")
    print(f"{'naive consumer':28}{naive_eps:>12,.0f}")
    print(f"{'project consumers (3)':28}{consumer_eps:>12,.0f}")
    print(
        f"\nend-to-end latency at {consumer_eps / 2:,.0f} events/s: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms\n"
    )
    print(f"{'target':28}{'measured':>12}  {'wanted':>10}  met")
    for name, value, wanted, ok in checks:
        print(f"{name:28}{value:>12.2f}  {wanted:>10}  {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
