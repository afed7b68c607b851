"""The real-time pipeline on the real stack: produced events end up exactly once in Cassandra,
bad events in the dead-letter topic, and nothing is lost when a consumer or a DC goes away."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from cassandra.query import BatchStatement

from retail.events import encode
from retail.generator import StreamGenerator
from retail.kafka import DLQ_REASON, dead_letter_origin, header
from retail.producer import records_from_jsonl
from retail.rows import INSERTS, rows_for
from retail.topology import Topology
from stack.local import LocalStack
from streaming.sink import partition_batches
from tests.integration import prom
from tests.integration.pipeline import PipelineRun, stream

N = 10_000


def test_n_events_become_exactly_n_rows_in_every_dc_with_exact_rollups(run: PipelineRun) -> None:
    events, orders, moves = stream(N, seed=11)
    assert run.produce(events) == N
    run.start_all()
    run.wait_consumed()
    codes = run.stop_consumers()
    assert codes == dict.fromkeys(run.regions, 0)  # SIGTERM: drained, committed, exit 0
    run.assert_exact(orders, moves)
    assert_metrics_labelled(run.topology, run.regions)

    # A replay from offset 0 (the groups rewound by the admin, same topics) changes no table.
    before = run.snapshot()
    for region in run.regions:
        run.rewind(region)
        assert run.lag(region) > 0
        run.start_consumer(region)
    for region in run.regions:
        while run.lag(region) > 0:
            assert run.consumers[region].alive(), run.consumers[region].tail(40)
            time.sleep(0.5)
    run.stop_consumers()
    assert run.snapshot() == before


def assert_metrics_labelled(topology: Topology, regions: list[str]) -> None:
    """The consumers' StatsD counters arrive in Prometheus with region/topic/outcome labels."""
    promql = 'sum by (region) (retail_consumer_events_total{outcome="written", topic="orders"})'

    def written_in_every_region(result: prom.Series) -> bool:
        written = {r["metric"]["region"]: float(r["value"][1]) for r in result}
        return set(written) == set(regions) and all(v > 0 for v in written.values())

    prom.wait_for(topology, promql, written_in_every_region, timeout=30)


def test_invalid_events_reach_the_dead_letter_topic_and_valid_ones_all_land(
    run: PipelineRun, tmp_path: Path
) -> None:
    events, orders, moves = stream(600, seed=12)
    good = json.loads(encode(orders[0]))
    bad_lines = [
        b'{"type": "order", "event_id": "x", "store_id": "store-0001"',  # malformed JSON
        json.dumps({**good, "total_cents": "12.50"}).encode(),  # wrong type
        json.dumps({k: v for k, v in good.items() if k != "customer_id"}).encode(),  # missing
        json.dumps({**good, "type": "refund"}).encode(),  # unknown type
        json.dumps({**good, "lines": [{**good["lines"][0], "quantity": -3}]}).encode(),  # absurd
        json.dumps({**good, "event_time": "2999-01-01T00:00:00Z"}).encode(),  # absurd time
        b"\xff\xfe not even text",
    ]
    path = tmp_path / "mixed.jsonl"
    with path.open("wb") as f:
        for i, e in enumerate(events):
            f.write(encode(e) + b"\n")
            if i % 80 == 0 and bad_lines:
                f.write(bad_lines.pop(0) + b"\n")
    assert not bad_lines
    run.produce_records(records_from_jsonl(path, run.topics))
    run.start_all()
    run.wait_consumed()
    dead = run.dead_letters(expected=7)
    assert len(dead) == 7  # each once, from one region's group only
    reasons = [header(m.headers(), DLQ_REASON) or "" for m in dead]
    assert all(reasons), reasons
    assert any("not valid JSON" in r for r in reasons)
    assert any("refund" in r for r in reasons)
    for m in dead:
        origin = dead_letter_origin(m.headers())
        assert origin is not None and origin[0] in run.topics.events
    run.stop_consumers()
    run.assert_exact(orders, moves)


def test_a_consumer_killed_mid_stream_loses_and_duplicates_nothing(run: PipelineRun) -> None:
    events, orders, moves = stream(6_000, seed=13)
    run.start_all()
    producer = threading.Thread(target=run.produce, args=(events,), kwargs={"rate": 1500})
    producer.start()
    time.sleep(2.0)
    victim = run.consumers["eu-west"]
    assert victim.kill()  # SIGKILL: no drain, no commit of the batch in flight
    time.sleep(1.0)
    run.start_consumer("eu-west")
    producer.join()
    run.wait_consumed()
    run.stop_consumers()
    run.assert_exact(orders, moves)


def test_local_dc_down_pauses_without_commit_and_every_event_lands_after(
    run: PipelineRun, healthy: LocalStack, topology: Topology
) -> None:
    events, orders, moves = stream(2_000, seed=14)
    region = topology.datacenters[0].name
    eu_orders = [o for o in orders if o.region == region]
    eu_moves = [m for m in moves if m.region == region]
    proc = run.start_consumer(region)
    run.wait_assigned(proc)
    for node in topology.datacenter(region).nodes:
        healthy.kill(node.name)
    try:
        run.produce(events)
        time.sleep(8)
        assert proc.alive()
        lag_while_down = run.lag(region)
        assert lag_while_down > 0  # nothing of this DC's events was committed ...
        time.sleep(4)
        assert run.lag(region) == lag_while_down  # ... and nothing is, while down
        assert "nothing committed" in proc.tail(200)
    finally:
        for node in topology.datacenter(region).nodes:
            healthy.start(node.name)
    run.wait_consumed([region])
    assert run.stop_consumers() == {region: 0}
    got = sorted(run.order_ids_in(region))
    assert got == sorted(o.order_id for o in eu_orders)
    run.wait_session_up()
    inv = run.session.execute("SELECT count(*) FROM retail.inventory_by_store_day").one().count
    assert inv == len(eu_moves)
    # It read only its own region's topics: the other regions' events are still waiting.
    assert all(run.lag(r) > 0 for r in run.regions if r != region)


def test_partition_batches_hold_one_partition_each_and_every_row_once(schema: object) -> None:
    session = schema
    prepared = {n: session.prepare(cql) for n, cql in INSERTS.items()}  # type: ignore[attr-defined]
    by_id = {stmt.query_id: stmt for stmt in prepared.values()}
    gen = StreamGenerator(seed=11, stores_per_region=2, start=datetime.now(UTC))
    rows = [(prepared[name], values) for e in gen.events(600) for name, values in rows_for(e)]
    batches = partition_batches(rows, batch_rows=8)

    seen = []
    for b in batches:
        if not isinstance(b, BatchStatement):
            seen.append((b.prepared_statement.query_id, tuple(b.values)))
            continue
        # (is_prepared, query id, serialized values) per statement of the batch
        members = [(qid, tuple(values)) for _, qid, values in b._statements_and_parameters]
        assert 2 <= len(members) <= 8
        partitions = {
            (qid, tuple(values[i] for i in by_id[qid].routing_key_indexes))
            for qid, values in members
        }
        assert len(partitions) == 1, "a batch spans partitions"
        assert b.routing_key is not None  # token-aware routing still applies
        seen += members
    bound = [(stmt.query_id, tuple(stmt.bind(values).values)) for stmt, values in rows]
    assert sorted(seen, key=repr) == sorted(bound, key=repr)
    # A store's day shares its partition: its rows travel in few batches (ids have one each).
    by_day = {prepared[t].query_id for t in ("orders_by_store_day", "inventory_by_store_day")}
    day_rows = sum(1 for stmt, _ in rows if stmt.query_id in by_day)
    day_batches = sum(
        1
        for b in batches
        if (
            b.prepared_statement.query_id
            if not isinstance(b, BatchStatement)
            else b._statements_and_parameters[0][1]
        )
        in by_day
    )
    assert day_batches < day_rows / 4
