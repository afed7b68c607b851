"""The pipeline's edges on the real stack: rebalances while backing off, a consumer frozen past
its session, resends, messages whose header lies, dead letters Kafka refuses, a consumer started
before its DC. Each one loses nothing, counts nothing twice, and stalls nothing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, timedelta

import msgspec
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from retail.credentials import KAFKA_ADMIN, KAFKA_OPS, kafka_consumer
from retail.events import encode
from retail.kafka import (
    AUDIT_GROUP,
    DLQ_PAYLOAD_OMITTED,
    DLQ_PAYLOAD_OMITTED_TEXT,
    DLQ_PAYLOAD_SIZE,
    DLQ_REASON,
    client_config,
    dead_letter_origin,
    header,
)
from retail.ops.balance import check_kafka, recommendations
from retail.producer import Record
from retail.topology import Topology
from stack.local import LocalStack
from stack.process import ManagedProcess
from tests.integration.pipeline import PipelineRun, stream


def of(region: str, events: list) -> list:
    return [e for e in events if e.region == region]


def wait_for_log(proc: ManagedProcess, text: str, timeout: float = 60, after: int = 0) -> None:
    """Wait until ``text`` appears in the process's log (after its first ``after`` bytes)."""
    deadline = time.monotonic() + timeout
    while True:
        data = proc.main_log.read_bytes()[after:].decode(errors="replace")
        if text in data:
            return
        assert proc.alive(), proc.tail(60)
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{proc.tail(60)}"
        time.sleep(0.3)


def log_size(proc: ManagedProcess) -> int:
    return proc.main_log.stat().st_size if proc.main_log.exists() else 0


def test_a_rebalance_while_backing_off_loses_and_stalls_nothing(
    run: PipelineRun, healthy: LocalStack, topology: Topology
) -> None:
    region = topology.datacenters[0].name
    events, orders, moves = stream(2_500, seed=21)
    a = run.start_consumer(region, name="a")
    run.wait_assigned(a)
    nodes = topology.datacenter(region).nodes
    for node in nodes:
        healthy.kill(node.name)
    try:
        run.produce(of(region, events))
        wait_for_log(a, "nothing committed")  # A backs off with its partitions paused
        # B joins the group (it takes some of A's partitions and reads them, committing
        # nothing) and leaves: its partitions come back to A in the middle of A's backoff.
        mark = log_size(a)
        b = Consumer(
            {
                **client_config(topology, kafka_consumer(region)),
                "group.id": run.group(region),
                "partition.assignment.strategy": "cooperative-sticky",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        b.subscribe(run.topics.read_by(region))
        read = 0
        deadline = time.monotonic() + 60
        while not read and time.monotonic() < deadline:
            read += sum(1 for m in b.consume(100, 1.0) if m.error() is None)
        assert read, "the second member never got a partition"
        wait_for_log(a, "partitions revoked", after=mark)
        mark = log_size(a)
        b.close()
        wait_for_log(a, "partitions assigned", after=mark)
        assert run.lag(region) > 0  # nothing written while the DC is down
    finally:
        for node in nodes:
            healthy.start(node.name)
    # No restart: A writes everything, including the partitions that came back.
    run.wait_consumed([region], timeout=180)
    assert a.alive()
    run.stop_consumers()
    run.assert_exact(of(region, orders), of(region, moves))


def test_a_consumer_frozen_past_its_session_leaves_every_rollup_exact(
    run: PipelineRun, topology: Topology
) -> None:
    region = topology.datacenters[0].name
    events, orders, moves = stream(24_000, seed=22)
    mine = of(region, events)
    # A backlog, then a steady stream: A's writer is busy all the time, so the freeze lands
    # in the middle of a flush.
    run.produce(mine[: len(mine) // 2])
    a = run.start_consumer(region, "--batch-size", "200", name="a")
    run.wait_assigned(a)
    producer = threading.Thread(
        target=run.produce, args=(mine[len(mine) // 2 :],), kwargs={"rate": 300}
    )
    producer.start()
    time.sleep(1)
    pid = a.pid()
    assert pid is not None
    os.killpg(pid, signal.SIGSTOP)
    try:
        b = run.start_consumer(region, name="b")
        # B gets every partition once A's session (10 s) has expired, and goes on writing
        # into the buckets A had read.
        wait_for_log(b, "partitions assigned", timeout=60)
        time.sleep(8)
    finally:
        os.killpg(pid, signal.SIGCONT)  # A wakes up and finishes its flush with an old state
    producer.join()
    run.wait_consumed([region], timeout=180)
    assert a.alive() and b.alive()
    run.stop_consumers()
    run.assert_exact(of(region, orders), of(region, moves))


def test_an_order_resent_with_a_later_time_is_one_row_everywhere_and_counted_once(
    run: PipelineRun, topology: Topology
) -> None:
    events, orders, moves = stream(600, seed=23)
    first = orders[0]
    later = msgspec.structs.replace(first, event_time=first.event_time + timedelta(hours=2))
    earlier = msgspec.structs.replace(first, event_time=first.event_time - timedelta(hours=1))
    # The resend comes later in the stream, then a stale copy and a duplicate of it.
    run.produce([*events, later, earlier, first])
    run.start_all()
    run.wait_consumed()
    run.stop_consumers()
    winners = [later if o.order_id == first.order_id else o for o in orders]
    run.assert_exact(winners, moves)
    rows = run.session.execute(
        "SELECT event_time FROM retail.orders_by_store_day WHERE store_id = %s AND day = %s",
        (first.store_id, later.event_time.date()),
    )
    assert [r.event_time.replace(tzinfo=UTC) for r in rows].count(
        later.event_time.replace(microsecond=later.event_time.microsecond // 1000 * 1000)
    ) == 1
    hour = run.rollups()["sales_by_store_hour"]
    old_hour = (first.store_id, first.event_time.date(), first.event_time.hour)
    new_hour = (later.store_id, later.event_time.date(), later.event_time.hour)
    in_old = sum(
        1 for o in winners if (o.store_id, o.event_time.date(), o.event_time.hour) == old_hour
    )
    assert hour.get(old_hour, (0, 0))[0] == in_old  # taken out of its first hour ...
    assert hour[new_hour][0] >= 1  # ... and counted in its new one


def test_a_message_whose_header_lies_is_dead_lettered(run: PipelineRun) -> None:
    events, orders, moves = stream(400, seed=24)
    victim = orders[0]
    liar = next(r for r in run.regions if r != victim.region)
    lie = Record(run.topics.orders(victim.region), victim.store_id.encode(), encode(victim), liar)
    run.produce(events[1:] if events[0] is victim else [e for e in events if e is not victim])
    run.produce_records([lie])
    run.start_all()
    run.wait_consumed()
    dead = run.dead_letters(expected=1)
    assert len(dead) == 1
    assert header(dead[0].headers(), DLQ_REASON) == (
        f"region header says {liar!r} but the event's region is {victim.region!r}"
    )
    run.stop_consumers()
    run.assert_exact([o for o in orders if o is not victim], moves)


def _set_dead_letter_limit(run: PipelineRun, max_bytes: int) -> None:
    """The largest message the dead-letter topic takes (the broker refuses bigger ones)."""
    admin = AdminClient(client_config(run.topology, KAFKA_ADMIN))
    entry = ConfigEntry(
        "max.message.bytes", str(max_bytes), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource("topic", run.topics.deadletter, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_a_dead_letter_kafka_refuses_commits_nothing_and_a_huge_one_goes_by_reference(
    run: PipelineRun, topology: Topology
) -> None:
    region = topology.datacenters[0].name
    events, orders, moves = stream(300, seed=25)
    huge = json.dumps({"type": "order", "region": region, "padding": "x" * 20_000}).encode()
    bad = [
        Record(run.topics.orders(region), b"store-0001", b'{"type": "order"}', region),
        Record(run.topics.orders(region), b"store-0001", huge, region),
    ]
    _set_dead_letter_limit(run, 64)  # nothing fits, not even a dead letter by reference
    proc = run.start_consumer(region)
    run.wait_assigned(proc)
    run.produce_records(bad)
    wait_for_log(proc, "dead letters not acknowledged")
    time.sleep(2)
    assert run.lag(region) == 2  # the batch is not committed while its dead letters fail
    _set_dead_letter_limit(run, 4096)  # the small one fits; the huge one only by reference
    run.produce(of(region, events))
    run.wait_consumed([region], timeout=120)
    dead = run.dead_letters(expected=2)
    assert len(dead) == 2  # each once
    by_offset = {origin[2]: m for m in dead if (origin := dead_letter_origin(m.headers()))}
    reference = max(by_offset.items())[1]
    assert header(reference.headers(), DLQ_PAYLOAD_OMITTED) == DLQ_PAYLOAD_OMITTED_TEXT
    assert header(reference.headers(), DLQ_PAYLOAD_SIZE) == str(len(huge))
    assert json.loads(reference.value())["size"] == len(huge)
    run.stop_consumers()
    run.assert_exact(of(region, orders), of(region, moves))


def test_a_consumer_started_before_its_dc_waits_then_works(
    run: PipelineRun, healthy: LocalStack, topology: Topology
) -> None:
    region = topology.datacenters[0].name
    events, orders, moves = stream(500, seed=26)
    nodes = topology.datacenter(region).nodes
    for node in nodes:
        healthy.kill(node.name)
    try:
        proc = run.start_consumer(region)
        wait_for_log(proc, f"waiting for Cassandra DC {region}")
        time.sleep(3)
        assert proc.alive()
    finally:
        for node in nodes:
            healthy.start(node.name)
    run.wait_assigned(proc, timeout=120)
    run.produce(of(region, events))
    run.wait_consumed([region], timeout=120)
    run.stop_consumers()
    run.assert_exact(of(region, orders), of(region, moves))


def test_a_group_whose_unread_messages_were_deleted_stalls_there_and_the_balance_check_says_so(
    run: PipelineRun,
) -> None:
    """Retention (here: DeleteRecords, as the admin) removes messages a stopped group never read.
    The group's consumer must not jump to the new log start and commit past the gap: it stalls on
    those partitions, says so, and the balance check counts what was deleted unread."""
    region = "eu-west"
    events = of(region, stream(900, seed=31)[0])
    first, unread, later = events[:100], events[100:200], events[200:300]
    topics = run.topics.read_by(region)
    group = run.group(region)
    run.produce(first)
    run.start_consumer(region)
    run.wait_consumed([region])
    run.stop_consumers()
    committed = _committed(run, group, topics)
    run.produce(unread)
    highs = _highs(run, topics)
    # Partitions the group committed on (one it never did starts at whatever the log holds).
    gaps = {tp: high for tp, high in highs.items() if 0 <= committed[tp] < high}
    assert gaps
    admin = AdminClient(client_config(run.topology, KAFKA_ADMIN))
    for future in admin.delete_records(
        [TopicPartition(t, p, high) for (t, p), high in gaps.items()]
    ).values():
        future.result(timeout=30)
    run.produce(later)  # behind the gap: reading these would skip the deleted ones

    proc = run.start_consumer(region)
    wait_for_log(proc, "is no longer in the log")
    run.wait_assigned(proc)
    time.sleep(5)
    assert proc.alive()
    after = _committed(run, group, topics)
    assert {tp: after[tp] for tp in gaps} == {tp: committed[tp] for tp in gaps}
    balance = check_kafka(client_config(run.topology, KAFKA_OPS), topics, [group])
    deleted = {
        (t, p): n
        for t, parts in balance.deleted_unread.get(group, {}).items()
        for p, n in parts.items()
    }
    assert deleted == {tp: high - committed[tp] for tp, high in gaps.items()}
    assert any("below the log start" in r for r in recommendations(balance, None))


def _committed(run: PipelineRun, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer({**client_config(run.topology, KAFKA_OPS), "group.id": group})
    try:
        wanted = [TopicPartition(t, p) for t in topics for p in range(run.topics.partitions)]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(wanted, timeout=30)}
    finally:
        c.close()


def _highs(run: PipelineRun, topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer({**client_config(run.topology, KAFKA_OPS), "group.id": AUDIT_GROUP})
    try:
        return {
            (t, p): c.get_watermark_offsets(TopicPartition(t, p), timeout=30)[1]
            for t in topics
            for p in range(run.topics.partitions)
        }
    finally:
        c.close()
