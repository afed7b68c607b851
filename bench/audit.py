"""Audit benchmark: what the pipeline audit costs per event, for a small and a large window.

Two windows of the same topics on the same stack: ``--small`` events produced, then (a moment
later) ``--large`` events; the project's consumers drain both; then the audit
(:func:`retail.ops.audit.audit`, what the ``pipeline_audit`` DAG runs) reconciles each window
with Cassandra, alternating, ``--rounds`` times each. The best time of each window counts.
The audit's cost must follow the window, not the tables: the per-event cost of the large window
is at most 1.2 times the small one's (``--json`` prints one object).

    python bench/audit.py
    python bench/audit.py --json
    python bench/audit.py --small 10000 --large 100000

It starts the local test stack if none is running and applies the migrations; the tables are
emptied first and the topics are new.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta

from pipeline import drain, fresh_topics, log, ready_stack, run_consumers, truncate

from retail.cassandra import connect
from retail.credentials import CASSANDRA_OPS, KAFKA_OPS
from retail.generator import StreamGenerator
from retail.kafka import client_config
from retail.ops import audit
from retail.producer import EventProducer, records_from_events
from retail.settings import get_settings
from retail.topology import Topology

TARGET_RATIO = 1.2  # per-event cost of the large window over the small one


def produce_window(topology: Topology, topics, events: list) -> tuple[int, int]:
    """Produce ``events`` and return the window their Kafka timestamps fall in, in ms."""
    start_ms = int(time.time() * 1000)
    EventProducer(topology).send(records_from_events(events, topics))
    end_ms = int(time.time() * 1000) + 1
    time.sleep(0.05)  # the next window's first timestamp comes strictly after this one's end
    return start_ms, end_ms


def audit_once(topology: Topology, topics, sessions, window: tuple[int, int]) -> dict:
    audited = [topics.topic(r, k) for r in topics.regions for k in ("orders", "inventory")]
    started = time.perf_counter()
    report = audit.audit(
        client=client_config(topology, KAFKA_OPS),
        topics=topics,
        audited=[*audited, topics.unrouted],
        sessions=sessions,
        start_ms=window[0],
        end_ms=window[1],
        progress=lambda _: None,
    )
    seconds = time.perf_counter() - started
    messages = sum(t.messages for t in report.topics.values())
    if report.missing or any(t.pending for t in report.topics.values()):
        raise RuntimeError(f"the audit did not come out clean: {report.summary()}")
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "us_per_event": round(seconds / messages * 1e6, 1),
        "partitions_read": report.partitions_read,
        "rows_read": report.rows_read,
        "point_reads": report.point_reads,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000, help="events in the small window")
    parser.add_argument("--large", type=int, default=100_000, help="events in the large window")
    parser.add_argument("--rounds", type=int, default=2, help="audits of each window")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    topology, cluster, session = ready_stack()
    truncate(session)
    home = get_settings().state_dir / "bench" / time.strftime("audit-%Y%m%d-%H%M%S")
    home.mkdir(parents=True)
    topics = fresh_topics(topology)
    gen = StreamGenerator(seed=11, start=datetime.now(UTC) - timedelta(hours=2))
    stream = gen.events(args.small + args.large)
    small = [next(stream) for _ in range(args.small)]
    large = [next(stream) for _ in range(args.large)]
    log(f"producing {len(small)} then {len(large)} events into {topics.prefix}.*")
    windows = {
        "small": produce_window(topology, topics, small),
        "large": produce_window(topology, topics, large),
    }
    log("the project's consumers drain both windows")
    procs = run_consumers(topology, topics, home)
    try:
        drain(topology, topics, procs, len(small) + len(large), timeout=1800)
    finally:
        for p in procs:
            p.stop(timeout=60)

    results: dict[str, list[dict]] = {"small": [], "large": []}
    opened: dict[str, tuple] = {}

    def sessions(region: str):
        # The region's own DC at LOCAL_QUORUM, as the DAG's audit reads.
        if region not in opened:
            opened[region] = connect(
                topology, region, consistency_level="LOCAL_QUORUM", role=CASSANDRA_OPS
            )
        return opened[region][1]

    try:
        for n in range(args.rounds):
            for name in ("small", "large"):
                got = audit_once(topology, topics, sessions, windows[name])
                log(f"audit of the {name} window ({n + 1}): {got}")
                results[name].append(got)
    finally:
        for c, _ in [*opened.values(), (cluster, session)]:
            c.shutdown()

    best = {name: min(runs, key=lambda r: r["seconds"]) for name, runs in results.items()}
    ratio = best["large"]["us_per_event"] / best["small"]["us_per_event"]
    out = {
        "small": best["small"],
        "large": best["large"],
        "cost_ratio": round(ratio, 3),
        "target_cost_ratio": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{'window':<8}{'messages':>10}{'seconds':>10}{'us/event':>10}"
            f"{'partitions':>12}{'rows read':>11}{'point reads':>13}"
        )
        for name in ("small", "large"):
            r = best[name]
            print(
                f"{name:<8}{r['messages']:>10}{r['seconds']:>10}{r['us_per_event']:>10}"
                f"{r['partitions_read']:>12}{r['rows_read']:>11}{r['point_reads']:>13}"
            )
        verdict = "met" if out["met"] else "MISSED"
        print(f"cost per event, large / small: {ratio:.2f} (target <= {TARGET_RATIO}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
