"""Pipeline benchmark: the same events on the same local stack, side by side, in one run.

1. ceiling   the raw cassandra-driver writing the same base rows in the consumer's
             single-partition batches, one writer process per region into its own DC (as the
             consumers are deployed): the cluster's limit for those mutations
2. naive     a consumer that polls one message, inserts synchronously, commits per message
3. consumer  the project's consumers (one per region) draining a backlog
4. growth    the same consumers draining a long backlog whose orders all fall in the same
             hours: the drain rate of its last tenth over its first tenth (1.0 = the cost per
             event does not grow with what the buckets already hold)
5. latency   end-to-end latency (event time to base rows written) at half the consumer's rate,
             and the consumers' peak resident memory

    python bench/pipeline.py                 # a table for people
    python bench/pipeline.py --json          # one JSON object
    python bench/pipeline.py --growth-events 200000

It starts the local test stack if none is running and applies the migrations. Each phase gets
fresh topics and empty tables.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from retail import migrations
from retail.cassandra import StatementsFailed, connect, run_all
from retail.credentials import CASSANDRA_CONSUMER, CASSANDRA_OPS, KAFKA_ADMIN
from retail.events import Event, decode
from retail.generator import StreamGenerator
from retail.kafka import Topics, client_config, ensure_topics, region_lag
from retail.producer import EventProducer, records_from_events
from retail.rows import INSERTS, TABLES, rows_for
from retail.settings import get_settings
from retail.topology import Topology, profile_topology
from stack.local import LocalStack
from stack.process import ManagedProcess
from stack.services import consumer_process
from streaming.sink import partition_batches

TARGETS = {
    "consumer_vs_ceiling": 0.85,
    "growth_ratio": 0.9,
    "e2e_p99_ms": 50.0,
    "consumer_rss_mb": 150.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ready_stack() -> tuple[Topology, object, object]:
    """The running local stack (the test profile started if none runs), migrated: its
    topology, and a cluster and session on its first DC."""
    stack = LocalStack()
    topology = stack.saved_topology()
    if topology is None or not stack.running(topology):
        log("starting the local test stack")
        topology = stack.up(profile_topology("test"))
    cluster, session = connect(topology, topology.datacenters[0].name, role=CASSANDRA_OPS)
    migrations.migrate(cluster, session, topology)
    return topology, cluster, session


def truncate(session) -> None:
    for table in TABLES:
        session.execute(f"TRUNCATE retail.{table}", timeout=120)


def fresh_topics(topology: Topology) -> Topics:
    topics = Topics.named(f"bench{uuid.uuid4().hex[:6]}", partitions=12)
    ensure_topics(topology, topics)
    return topics


# -- 1. the ceiling ------------------------------------------------------------------------------


def _write_region(args: tuple[str, list[bytes], int, int]) -> float:
    """One writer process: its region's base rows into its DC, in partition batches; returns
    the seconds it took (after preparing)."""
    dc, encoded, concurrency, batch_rows = args
    topology = LocalStack().topology()
    cluster, session = connect(topology, dc, role=CASSANDRA_CONSUMER)
    try:
        prepared = {t: session.prepare(cql) for t, cql in INSERTS.items()}
        events = [decode(e) for e in encoded]
        rows = [
            (prepared[t], values)
            for i, e in enumerate(events)
            for t, values in rows_for(e, f"bench[0]@{i}")
        ]
        statements = [(b, ()) for b in partition_batches(rows, batch_rows)]
        started = time.perf_counter()
        # A write that times out (a cold JVM, a compaction) is sent again, as the consumer
        # would: the time it costs counts.
        for _ in range(5):
            try:
                run_all(session, statements, concurrency, stop_on_first_error=False)
                return time.perf_counter() - started
            except StatementsFailed as failed:
                statements = [statements[i] for i in sorted(failed.failures)]
        raise RuntimeError(f"ceiling: {len(statements)} writes still failing after 5 rounds")
    finally:
        cluster.shutdown()


def ceiling(topology: Topology, events: list[Event], concurrency: int, batch_rows: int) -> float:
    """Events per second when the driver writes the base rows directly, one process per region
    (started together, timed from the first start to the last finish of their writes)."""
    by_region = {
        dc.name: [msgspec.json.encode(e) for e in events if e.region == dc.name]
        for dc in topology.datacenters
    }
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(by_region)) as pool:
        seconds = pool.map(
            _write_region,
            [(dc, encoded, concurrency, batch_rows) for dc, encoded in by_region.items()],
        )
    return len(events) / max(seconds)


# -- 2. the naive consumer -----------------------------------------------------------------------


def naive(topology: Topology, session, topics: Topics, budget_s: float) -> float:
    """One message per poll, synchronous inserts, a commit per message, for ``budget_s``."""
    from confluent_kafka import Consumer

    prepared = {name: session.prepare(cql) for name, cql in INSERTS.items()}
    # A baseline of the bench's own, in a group no platform login has: the admin runs it.
    consumer = Consumer(
        {
            **client_config(topology, KAFKA_ADMIN),
            "group.id": f"{topics.prefix}-naive",
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
            source = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            for name, values in rows_for(decode(msg.value()), source):
                session.execute(prepared[name], values)
            consumer.commit(msg, asynchronous=False)
            done += 1
    finally:
        consumer.close()
    return done / (time.perf_counter() - started)


# -- 3, 4, 5. the project's consumers ------------------------------------------------------------


def run_consumers(
    topology: Topology, topics: Topics, home: Path, latency_log: bool = False
) -> list[ManagedProcess]:
    env = {"RETAIL_TOPIC_PREFIX": topics.prefix, "RETAIL_TOPIC_PARTITIONS": str(topics.partitions)}
    procs = []
    for dc in topology.datacenters:
        args = ["--latency-log", str(home / f"latency-{dc.name}.txt")] if latency_log else []
        p = consumer_process(dc.name, home, *args, env=env)
        p.start()
        procs.append(p)
    return procs


def total_lag(topology: Topology, topics: Topics) -> int:
    return sum(region_lag(topology, topics, dc.name) for dc in topology.datacenters)


def drain(
    topology: Topology, topics: Topics, procs: list[ManagedProcess], total: int, timeout: float
) -> list[tuple[float, int]]:
    """Wait until the consumers have committed everything; returns (seconds, events committed)
    samples from the first commit on."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while True:
        done = total - total_lag(topology, topics)
        now = time.monotonic()
        if done > 0:
            samples.append((now, done))
        if done >= total:
            return samples
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} died:\n{p.tail(40)}")
        if now > deadline:
            raise RuntimeError(f"consumers did not drain in time ({total - done} left)")
        time.sleep(0.25)


def rate_between(samples: list[tuple[float, int]], total: int, lo: float, hi: float) -> float:
    """Events per second between the moments ``lo`` and ``hi`` of ``total`` were committed."""

    def when(fraction: float) -> float:
        return next(t for t, done in samples if done >= fraction * total)

    t0 = samples[0][0] if lo == 0 else when(lo)
    return (hi - lo) * total / max(when(hi) - t0, 1e-3)


def peak_rss_mb(procs: list[ManagedProcess]) -> float:
    return max(mb for p in procs if (mb := p.rss_mb(peak=True)) is not None)


def consumer_drain(
    topology: Topology, session, events: list[Event], home: Path
) -> tuple[float, list[tuple[float, int]], float]:
    """Let the project's consumers drain a backlog of ``events``: (events/s from their first
    commit to the last, the progress samples, their peak RSS)."""
    truncate(session)
    topics = fresh_topics(topology)
    EventProducer(topology).send(records_from_events(events, topics))
    procs = run_consumers(topology, topics, home)
    try:
        samples = drain(topology, topics, procs, len(events), timeout=1800)
        rss = peak_rss_mb(procs)
    finally:
        for p in procs:
            p.stop(timeout=60)
    # From the first commit: what the consumers sustain, not how long they take to join.
    eps = rate_between(samples, len(events), 0.0, 1.0)
    return eps, samples, rss


def latency(
    topology: Topology, session, events: list[Event], rate: float, home: Path
) -> tuple[float, float, float]:
    """p50 and p99 of event time -> written, streaming at ``rate`` events/s; and peak RSS."""
    truncate(session)
    topics = fresh_topics(topology)
    procs = run_consumers(topology, topics, home / "latency", latency_log=True)
    deadline = time.monotonic() + 60
    while not all("partitions assigned" in p.tail(400) for p in procs):
        if time.monotonic() > deadline:
            raise RuntimeError("consumers did not join their groups within 60s")
        time.sleep(0.5)

    def stamped() -> Iterator[Event]:
        # The event time is when the event is sent: the latency a store would see.
        for e in events:
            yield msgspec.structs.replace(e, event_time=datetime.now(UTC))

    producer = EventProducer(topology, **{"linger.ms": 1})
    try:
        producer.send(records_from_events(stamped(), topics), rate=rate)
        drain(topology, topics, procs, len(events), timeout=600)
        rss = peak_rss_mb(procs)
    finally:
        for p in procs:
            p.stop(timeout=60)
    samples = []
    for f in (home / "latency").glob("latency-*.txt"):
        for line in f.read_text().splitlines():
            samples += [float(x) for x in line.split()]
    q = statistics.quantiles(sorted(samples), n=100)
    return q[49], q[98], rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--growth-events", type=int, default=200_000)
    parser.add_argument("--latency-events", type=int, default=10_000)
    parser.add_argument("--naive-seconds", type=float, default=15.0)
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="events/s of the latency phase (default: half the consumers' drain rate); a fixed "
        "rate compares two builds at the same load",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="ceiling and consumer drain measured this many times each, alternating; the "
        "best of each counts (this 2-core machine runs everything: one round is noisy)",
    )
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--batch-rows", type=int, default=32, help="rows per partition batch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    topology, cluster, session = ready_stack()
    home = get_settings().state_dir / "bench" / time.strftime("%Y%m%d-%H%M%S")
    home.mkdir(parents=True)
    gen = StreamGenerator(seed=2026, start=datetime.now(UTC) - timedelta(hours=1))
    events = list(gen.events(args.events))
    rows = sum(len(rows_for(e)) for e in events)
    log(f"{len(events)} events ({rows} base rows), {len(topology.nodes)} Cassandra nodes")

    log("warming up Cassandra (JIT, caches) with a quarter of the events, untimed")
    ceiling(topology, events[: len(events) // 4], args.concurrency, args.batch_rows)
    truncate(session)
    ceilings, drains, rss_drain = [], [], 0.0
    for n in range(args.rounds):
        log(f"1/5 ceiling: raw driver, consumer's partition batches, writer per region ({n + 1})")
        truncate(session)
        ceilings.append(ceiling(topology, events, args.concurrency, args.batch_rows))
        log(f"3/5 the project's consumers draining the backlog ({n + 1})")
        eps, _, rss = consumer_drain(topology, session, events, home / f"drain-{n}")
        drains.append(eps)
        rss_drain = max(rss_drain, rss)
    log(f"    ceilings {[round(c) for c in ceilings]}, consumers {[round(d) for d in drains]}")
    ceiling_eps, consumer_eps = max(ceilings), max(drains)
    log("2/5 naive consumer")
    truncate(session)
    topics = fresh_topics(topology)
    EventProducer(topology).send(records_from_events(events, topics))
    naive_eps = naive(topology, session, topics, args.naive_seconds)

    log(f"4/5 growth: {args.growth_events} events whose orders fall in the same hours")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    # 200 events/s of event time: 200,000 events span 17 minutes of one hour.
    long = list(
        StreamGenerator(seed=7, start=hour, events_per_second=200).events(args.growth_events)
    )
    _, samples, rss_growth = consumer_drain(topology, session, long, home / "growth")
    first = rate_between(samples, len(long), 0.0, 0.1)
    last = rate_between(samples, len(long), 0.9, 1.0)
    growth_ratio = last / first

    rate = args.latency_rate or consumer_eps / 2
    log(f"5/5 end-to-end latency at {rate:.0f} events/s")
    p50, p99, rss_stream = latency(topology, session, events[: args.latency_events], rate, home)
    cluster.shutdown()

    result = {
        "ceiling_eps": round(ceiling_eps, 1),
        "naive_eps": round(naive_eps, 1),
        "consumer_eps": round(consumer_eps, 1),
        "consumer_vs_ceiling": round(consumer_eps / ceiling_eps, 3),
        "consumer_vs_naive": round(consumer_eps / naive_eps, 2),
        "growth_ratio": round(growth_ratio, 3),
        "growth_first_tenth_eps": round(first, 1),
        "growth_last_tenth_eps": round(last, 1),
        "growth_events": len(long),
        "e2e_rate_eps": round(rate, 1),
        "e2e_p50_ms": round(p50, 2),
        "e2e_p99_ms": round(p99, 2),
        "consumer_rss_mb": round(max(rss_drain, rss_growth, rss_stream), 1),
        "rounds": {
            "ceiling_eps": [round(c, 1) for c in ceilings],
            "consumer_eps": [round(d, 1) for d in drains],
        },
    }
    if args.json:
        print(json.dumps(result))
        return 0
    checks = [
        ("consumer / ceiling", result["consumer_vs_ceiling"], "consumer_vs_ceiling", ">="),
        ("growth (last / first tenth)", result["growth_ratio"], "growth_ratio", ">="),
        ("e2e p99 (ms)", p99, "e2e_p99_ms", "<="),
        ("consumer peak RSS (MiB)", result["consumer_rss_mb"], "consumer_rss_mb", "<="),
    ]
    print(
        f"\n{len(events):,} events, {rows:,} base rows, {len(topology.nodes)} nodes "
        f"({', '.join(dc.name for dc in topology.datacenters)})\n"
    )
    print(f"{'':36}{'events/s':>12}")
    print(f"{'ceiling (raw driver, same batches)':36}{ceiling_eps:>12,.0f}")
    print(f"{'naive consumer':36}{naive_eps:>12,.0f}")
    vs_naive = consumer_eps / naive_eps
    print(f"{'project consumers (3)':36}{consumer_eps:>12,.0f}   {vs_naive:.1f}x naive")
    print(f"{'growth: first / last tenth':36}{first:>12,.0f} / {last:,.0f} of {len(long):,} events")
    print(f"\nend-to-end latency at {rate:,.0f} events/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms\n")
    print(f"{'target':36}{'measured':>12}  {'wanted':>10}  met")
    for name, value, key, op in checks:
        ok = value >= TARGETS[key] if op == ">=" else value <= TARGETS[key]
        print(f"{name:36}{value:>12.2f}  {op} {TARGETS[key]:>7}  {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
