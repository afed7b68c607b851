"""The regional consumer's routing and commit order, without servers: Kafka's client, the
producer of dead letters and the Cassandra sink are stand-ins that record what happened and in
which order.

What must hold: a region's group reads its region's topics (and the catch-all also the unrouted
one); a message whose region header or topic disagrees with its body goes to the dead-letter
topic with the reason and its origin; offsets are committed only after the batch is written and
every dead letter of it is acknowledged by Kafka, and a failure of either commits nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from retail import kafka
from retail.aggregates import Applied, Outcome, Resolved
from retail.events import InventoryMovement, LineItem, Order, encode
from retail.kafka import Topics
from retail.metrics import MemoryMetrics
from retail.rows import Position
from streaming.consumer import Batch, ConsumerConfig, RegionalConsumer
from streaming.sink import SinkBackpressureError

TOPICS = Topics.named("retail")
T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ORDER = Order(
    event_id="e-1",
    order_id="store-0001-00000001",
    store_id="store-0001",
    region="eu-west",
    customer_id="cust-000001",
    currency="EUR",
    lines=(LineItem("SKU-000001", 2, 100),),
    total_cents=200,
    event_time=T,
)
MOVE = InventoryMovement(
    event_id="e-2",
    store_id="store-0001",
    region="eu-west",
    sku="SKU-000001",
    kind="delta",
    quantity=-2,
    reason="sale",
    event_time=T,
)


def message(
    topic: str, offset: int, value: bytes, region: str | None = "eu-west", partition: int = 0
) -> Message:
    headers = [(kafka.REGION_HEADER, region.encode())] if region is not None else None
    return Message(
        topic=topic, partition=partition, offset=offset, value=value, key=b"store-0001",
        headers=headers,
    )  # fmt: skip


# --- stand-ins -----------------------------------------------------------------------------------


class Log(list[str]):
    """What happened, in order, across the poll thread and the writer thread."""

    def add(self, what: str) -> None:
        self.append(what)


class FakeKafkaConsumer:
    def __init__(self, log: Log, messages: list[Message]) -> None:
        self.log = log
        self.queue = list(messages)
        self.subscribed: list[str] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.paused = False
        self.group_offsets: dict[tuple[str, int], int] = {}  # what the group committed before
        self.assigned: list[tuple[str, int, int]] = []
        self.unreadable: set[tuple[str, int]] = set()

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.subscribed = list(topics)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        taken, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return [] if self.paused else taken

    def poll(self, timeout: float = -1) -> Message | None:
        got = self.consume(1)
        return got[0] if got else None

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})
        self.log.add("commit")

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("retail.eu-west.orders", 0)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused = True
        self.log.add("paused")

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused = False
        self.log.add("resumed")

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return []

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list:
        out = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            offset = self.group_offsets.get(key, -1001)
            # A per-partition failure as librdkafka reports it (its TopicPartition's error is
            # read-only: a stand-in with the same fields).
            error = (
                KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
                if key in self.unreadable
                else None
            )
            out.append(
                SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, error=error)
            )
        return out

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned += [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def close(self) -> None:
        pass


class FakeProducer:
    """Dead letters: the delivery reports of the first ``failures`` flushes are errors."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.pending: list[tuple[Callable[..., None], Message]] = []
        self.sent: list[dict[str, Any]] = []
        self.failures = 0

    def produce(
        self, topic: str, *, value: bytes, key: bytes | None, headers: Any, **kw: Any
    ) -> None:
        msg = Message(topic=topic, value=value, key=key, headers=headers)
        self.sent.append({"topic": topic, "headers": headers, "value": value})
        self.pending.append((kw["on_delivery"], msg))

    def flush(self, timeout: float = -1) -> int:
        failing = self.failures > 0
        self.failures -= 1
        for report, msg in self.pending:
            error = KafkaError(KafkaError._MSG_TIMED_OUT) if failing else None
            self.log.add("dead letter failed" if failing else "dead letter acknowledged")
            report(error, msg)
        self.pending = []
        return 0

    def poll(self, timeout: float = 0) -> int:
        return 0


class FakeSink:
    """Writes when ``gate`` is open; ``fail`` makes the next write raise it."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.batches: list[list[tuple[Position, Any]]] = []

    def write(self, batch: list[tuple[Position, Any]]) -> Applied:
        assert self.gate.wait(5), "the test never opened the gate"
        self.batches.append(list(batch))
        if self.fail is not None:
            error, self.fail = self.fail, None
            self.log.add("write failed")
            raise error
        self.log.add("written")
        return Applied([Resolved(p, e, Outcome.NEW) for p, e in batch])


def regional(messages: list[Message], region: str = "eu-west") -> tuple[RegionalConsumer, Log]:
    log = Log()
    cfg = ConsumerConfig(
        region=region, poll_timeout=0.0, backoff_initial=0.0, backoff_max=0.0, commit_interval=0.0
    )
    worker = RegionalConsumer(
        cfg, FakeKafkaConsumer(log, messages), FakeProducer(log), FakeSink(log),  # type: ignore[arg-type]
        MemoryMetrics(), TOPICS,
    )  # fmt: skip
    return worker, log


def steps_until(worker: RegionalConsumer, done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the loop did not get there"
        worker._step()


def committed(worker: RegionalConsumer) -> list[dict[tuple[str, int], int]]:
    return worker.consumer.commits  # type: ignore[attr-defined,no-any-return]


# --- which topics a region's group reads ---------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "topics"),
    [
        ("eu-west", ["retail.eu-west.orders", "retail.eu-west.inventory", "retail.unrouted"]),
        ("us-east", ["retail.us-east.orders", "retail.us-east.inventory"]),
    ],
)
def test_a_group_subscribes_to_its_regions_topics_and_the_catch_all_to_unrouted(
    region: str, topics: list[str]
) -> None:
    worker, _ = regional([], region)
    assert worker.run(threading.Event(), until=lambda: True)  # subscribe, drain nothing, stop
    assert worker.consumer.subscribed == topics  # type: ignore[attr-defined]


# --- routing -------------------------------------------------------------------------------------


def test_an_event_of_the_region_on_its_topic_is_written() -> None:
    worker, _ = regional([])
    batch = Batch()
    worker.route(message("retail.eu-west.orders", 7, encode(ORDER)), batch)
    worker.route(message("retail.eu-west.inventory", 3, encode(MOVE), region=None), batch)
    assert [(p.topic, p.offset, e) for p, e in batch.events] == [
        ("retail.eu-west.orders", 7, ORDER),
        ("retail.eu-west.inventory", 3, MOVE),
    ]
    assert batch.dead == []
    assert batch.next_offsets == {
        ("retail.eu-west.orders", 0): 8,
        ("retail.eu-west.inventory", 0): 4,
    }


@pytest.mark.parametrize(
    ("topic", "header", "value", "reason"),
    [
        (
            "retail.eu-west.orders",
            "us-east",
            encode(ORDER),
            "region header says 'us-east' but the event's region is 'eu-west'",
        ),
        (
            "retail.eu-west.inventory",
            "eu-west",
            encode(ORDER),
            "an event of region eu-west on retail.eu-west.inventory; "
            "producers send it to retail.eu-west.orders",
        ),
        (
            "retail.unrouted",
            None,
            encode(ORDER),
            "an event of region eu-west on retail.unrouted; producers send it to "
            "retail.eu-west.orders",
        ),
        ("retail.eu-west.orders", "eu-west", b"{", "not valid JSON"),
    ],
)
def test_a_message_whose_header_topic_or_body_disagree_is_dead_lettered(
    topic: str, header: str | None, value: bytes, reason: str
) -> None:
    worker, _ = regional([])
    batch = Batch()
    msg = message(topic, 5, value, region=header)
    worker.route(msg, batch)
    assert batch.events == []
    ((dead, why),) = batch.dead
    assert dead is msg and why.startswith(reason)
    assert batch.next_offsets == {(topic, 0): 6}  # committed past once it is dead-lettered


# --- commit order --------------------------------------------------------------------------------


def test_offsets_are_committed_only_after_the_batch_is_written_and_its_dead_letters_acked() -> None:
    lie = message("retail.eu-west.orders", 1, encode(ORDER), region="us-east")
    worker, log = regional([message("retail.eu-west.orders", 0, encode(ORDER)), lie])
    sink: FakeSink = worker.sink  # type: ignore[assignment]
    sink.gate.clear()  # the write is in flight until the gate opens
    steps_until(worker, lambda: worker.inflight is not None)
    for _ in range(20):
        worker._step()
    assert committed(worker) == [] and log == []  # nothing is committed while it is written
    sink.gate.set()
    steps_until(worker, lambda: bool(committed(worker)))
    assert log == ["written", "dead letter acknowledged", "commit"]
    assert committed(worker) == [{("retail.eu-west.orders", 0): 2}]
    (sent,) = worker.producer.sent  # type: ignore[attr-defined]
    assert sent["topic"] == "retail.deadletter"
    assert kafka.dead_letter_origin(sent["headers"]) == ("retail.eu-west.orders", 0, 1)
    assert kafka.header(sent["headers"], kafka.DLQ_REASON) == (
        "region header says 'us-east' but the event's region is 'eu-west'"
    )
    assert kafka.header(sent["headers"], kafka.DLQ_CONSUMER_REGION) == "eu-west"


def test_a_dead_letter_kafka_does_not_acknowledge_commits_nothing_until_it_does() -> None:
    worker, log = regional([message("retail.unrouted", 0, b"not json", region=None)])
    producer: FakeProducer = worker.producer  # type: ignore[assignment]
    producer.failures = 2
    steps_until(worker, lambda: bool(committed(worker)))
    assert log == [
        "written",
        "dead letter failed",
        "paused",  # nothing more is fetched while the batch waits for its retry
        "written",  # the retry writes the batch again: idempotent
        "dead letter failed",
        "paused",
        "written",
        "dead letter acknowledged",
        "resumed",
        "commit",
    ]
    assert committed(worker) == [{("retail.unrouted", 0): 1}]
    assert len(producer.sent) == 3  # sent again on each try, committed past once


def test_a_failed_write_commits_nothing_and_the_batch_is_written_again() -> None:
    worker, log = regional([message("retail.eu-west.orders", 0, encode(ORDER))])
    sink: FakeSink = worker.sink  # type: ignore[assignment]
    sink.fail = SinkBackpressureError(1.0, TimeoutError("write timeout"))
    steps_until(worker, lambda: bool(committed(worker)))
    assert log == ["write failed", "paused", "written", "resumed", "commit"]
    assert [[p.offset for p, _ in b] for b in sink.batches] == [[0], [0]]
    assert committed(worker) == [{("retail.eu-west.orders", 0): 1}]


# --- where partitions start, and a committed offset the log no longer holds ---------------------


def test_a_partition_starts_at_the_groups_commit_or_at_the_beginning_if_it_never_committed() -> (
    None
):
    worker, _ = regional([])
    fake: FakeKafkaConsumer = worker.consumer  # type: ignore[assignment]
    fake.group_offsets = {("retail.eu-west.orders", 0): 42}
    worker.on_assign(
        worker.consumer,
        [TopicPartition("retail.eu-west.orders", 0), TopicPartition("retail.eu-west.orders", 1)],
    )
    assert fake.assigned == [
        ("retail.eu-west.orders", 0, 42),
        ("retail.eu-west.orders", 1, OFFSET_BEGINNING),
    ]


def test_a_partition_whose_commit_cannot_be_read_is_not_started_over() -> None:
    worker, _ = regional([])
    fake: FakeKafkaConsumer = worker.consumer  # type: ignore[assignment]
    fake.unreadable = {("retail.eu-west.orders", 1)}
    with pytest.raises(KafkaException):
        worker.on_assign(
            worker.consumer,
            [
                TopicPartition("retail.eu-west.orders", 0),
                TopicPartition("retail.eu-west.orders", 1),
            ],
        )
    assert fake.assigned == []


def test_a_committed_offset_below_the_log_start_is_reported_and_not_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gone = Message(
        topic="retail.eu-west.orders",
        partition=3,
        error=KafkaError(
            KafkaError._AUTO_OFFSET_RESET, "fetch failed: Broker: Offset out of range"
        ),
    )
    worker, _ = regional([gone, message("retail.eu-west.orders", 7, encode(ORDER))])
    steps_until(worker, lambda: bool(committed(worker)))
    metrics: MemoryMetrics = worker.metrics  # type: ignore[assignment]
    assert metrics.counters["consumer.eu-west.orders.offset_out_of_range"] == 1
    assert "retail.eu-west.orders[3]" in caplog.text and "Not skipping" in caplog.text
    # The other partition goes on; partition 3 gets no commit (no seek, no skip).
    assert committed(worker) == [{("retail.eu-west.orders", 0): 8}]


def test_a_commit_a_rebalance_failed_is_made_again_for_partitions_still_held() -> None:
    # Under cooperative assignment a rebalance can fail a commit (ILLEGAL_GENERATION) and leave
    # the partitions with this member: nobody else will commit them.
    worker, _ = regional([message("retail.eu-west.orders", 0, encode(ORDER))])
    steps_until(worker, lambda: bool(committed(worker)))
    assert committed(worker) == [{("retail.eu-west.orders", 0): 1}]
    held = TopicPartition("retail.eu-west.orders", 0, 1)
    moved = TopicPartition("retail.eu-west.orders", 3, 7)  # another member's now
    worker.on_commit(KafkaError(KafkaError.ILLEGAL_GENERATION), [held, moved])
    steps_until(worker, lambda: len(committed(worker)) == 2)
    assert committed(worker)[1] == {("retail.eu-west.orders", 0): 1}
