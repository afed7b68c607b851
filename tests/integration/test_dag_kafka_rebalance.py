"""The kafka_rebalance DAG on a real three-broker Kafka: topics placed unevenly on purpose (every
replica on brokers 1 and 2, every leader on 1) end with their replicas and leaders even over the
three brokers, while a producer keeps sending; every store's events are all there, once each and
in order. A dry run changes nothing.

The session's stack has one broker, so this module brings up a stack of its own (three brokers,
one Cassandra node per DC) and afterwards the session's again if it was running: it stops the
shared stack, so it runs last (``stops_stack``).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from retail.credentials import KAFKA_ADMIN
from retail.kafka import (
    PartitionGrowthRefused,
    Topics,
    add_partitions,
    client_config,
    ensure_topics,
)
from retail.ops.kafka_rebalance import is_even, leader_counts, replica_counts
from retail.topology import Topology, profile_topology
from stack.local import LocalStack
from tests.integration import prom
from tests.integration.airflow import prepare_airflow, run_dag, task_states, xcom
from tests.integration.conftest import _check_server_logs, _server_logs

pytestmark = pytest.mark.stops_stack

BROKERS = [1, 2, 3]
STORES = [f"store-{i:04d}" for i in range(24)]
PADDING = "x" * 1024  # a kilobyte per event: the moves copy something the throttle can slow


@pytest.fixture(scope="module")
def three_brokers() -> Iterator[Topology]:
    """A stack of this module's own with three brokers; the session's stack (one broker) back
    afterwards if it was up before."""
    stack = LocalStack()
    normal = profile_topology("test")
    restore = stack.saved_topology() == normal and bool(stack.running(normal))
    wanted = profile_topology("test", brokers=3)
    stack.down(purge=True)
    try:
        stack.up(wanted, timeout=600)
        prepare_airflow(wanted)  # its connections carry this stack's new logins
        yield wanted
        _check_server_logs(dict.fromkeys(_server_logs(stack, wanted), 0))
    finally:
        stack.down(purge=True)
        if restore:
            stack.up(normal, timeout=600)
            prepare_airflow(normal)


def admin_config(topology: Topology) -> dict[str, Any]:
    return client_config(topology, KAFKA_ADMIN)


def describe(topology: Topology, topics: list[str]) -> dict[str, dict[int, tuple[list[int], int]]]:
    """topic -> partition -> (replicas, current leader), from the cluster's metadata."""
    meta = AdminClient(admin_config(topology)).list_topics(timeout=10)
    return {
        t: {p: (list(pm.replicas), pm.leader) for p, pm in meta.topics[t].partitions.items()}
        for t in topics
    }


@pytest.fixture(scope="module")
def uneven(three_brokers: Topology) -> tuple[Topics, list[str]]:
    """Two topics of a fresh prefix placed unevenly on purpose, as the admin: orders with six
    partitions on brokers [1, 2] (replication factor 2, broker 3 holds nothing), inventory with
    three on [1, 2, 3] (every leader on broker 1)."""
    topics = Topics.named(f"rb{uuid.uuid4().hex[:8]}", partitions=6)
    orders, inventory = topics.orders("eu-west"), topics.inventory("eu-west")
    admin = AdminClient(admin_config(three_brokers))
    futures = admin.create_topics(
        [
            # confluent-kafka 2.16 wants the count too (its -1 default reads as a count).
            NewTopic(orders, num_partitions=6, replica_assignment=[[1, 2]] * 6),
            NewTopic(inventory, num_partitions=3, replica_assignment=[[1, 2, 3]] * 3),
        ],
        request_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=30)
    return topics, [orders, inventory]


class KeyedProducer:
    """Sends ``{"store", "seq"}`` events keyed by store, a sequence number per store, as the
    platform's producers do (idempotent, acks=all: a retry never duplicates or reorders)."""

    def __init__(self, topology: Topology, topics: list[str]) -> None:
        self.producer = Producer(
            {**admin_config(topology), "enable.idempotence": True, "acks": "all", "linger.ms": 5}
        )
        self.topics = topics
        self.seq: Counter[tuple[str, str]] = Counter()
        self.errors: list[str] = []

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def send_round(self) -> None:
        """One event per store on every topic."""
        for topic in self.topics:
            for store in STORES:
                self.seq[(topic, store)] += 1
                value = {"store": store, "seq": self.seq[(topic, store)], "pad": PADDING}
                self.producer.produce(
                    topic, json.dumps(value).encode(), store.encode(), on_delivery=self._delivered
                )
            self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(60) == 0, "events still undelivered after 60 s"
        assert not self.errors, self.errors[:5]


def read_all(topology: Topology, topic: str) -> dict[str, list[int]]:
    """Every event of ``topic`` from the beginning, partition by partition: store -> its
    sequence numbers in the order the topic holds them."""
    consumer = Consumer({**admin_config(topology), "group.id": f"rb-check-{uuid.uuid4().hex[:6]}"})
    seen: dict[str, list[int]] = defaultdict(list)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            offset = low
            while offset < high:
                for msg in consumer.consume(500, 10):
                    assert msg.error() is None, msg.error()
                    event = json.loads(msg.value())
                    assert msg.key().decode() == event["store"]
                    seen[event["store"]].append(event["seq"])
                    partitions_of[event["store"]].add(p)
                    offset = msg.offset() + 1
            consumer.unassign()
    finally:
        consumer.close()
    assert all(len(ps) == 1 for ps in partitions_of.values()), dict(partitions_of)
    return seen


def assert_even(placement: dict[str, dict[int, tuple[list[int], int]]], rf: dict[str, int]) -> None:
    for topic, parts in placement.items():
        replicas = {p: r for p, (r, _) in parts.items()}
        leaders = Counter(leader for _, leader in parts.values())
        assert {len(r) for r in replicas.values()} == {rf[topic]}, (topic, replicas)
        assert is_even(replica_counts(replicas, BROKERS)), (topic, replicas)
        assert is_even(leader_counts(replicas, BROKERS)), (topic, replicas)
        assert is_even({b: leaders.get(b, 0) for b in BROKERS}), (topic, dict(leaders))


def test_a_dry_run_shows_the_moves_and_changes_nothing(
    three_brokers: Topology, uneven: tuple[Topics, list[str]]
) -> None:
    topics, names = uneven
    before = describe(three_brokers, names)
    run = run_dag("kafka_rebalance", {"topic_prefix": topics.prefix})  # dry_run by default
    assert str(run.state) == "success", task_states(run)
    result = xcom(run, "rebalance")
    assert result["dry_run"] is True
    # orders: 12 replicas on brokers 1 and 2 -> 4 each; 2 leave each of them for broker 3.
    orders = [m for m in result["moves"] if m["topic"] == names[0]]
    assert len(orders) == 4 and {m["to"] for m in orders} == {3}
    assert not [m for m in result["moves"] if m["topic"] == names[1]]  # RF 3 on 3: leaders only
    # ...and two of its three partitions get another first replica (preferred leader).
    changed = [p for p in result["reassignment"]["partitions"] if p["topic"] == names[1]]
    assert sorted(p["replicas"][0] for p in changed) == [2, 3]
    assert describe(three_brokers, names) == before


def test_uneven_partitions_end_even_with_no_event_lost_or_reordered(
    three_brokers: Topology, uneven: tuple[Topics, list[str]]
) -> None:
    topics, names = uneven
    producer = KeyedProducer(three_brokers, names)
    for _ in range(20):
        producer.send_round()
    producer.flush()

    # The producers go on while the replicas move and the leaders change: about 100 KB/s,
    # well under the throttle (a moving replica that must copy faster than the throttle lets
    # it never catches up, and the reassignment never ends).
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.is_set():
            producer.send_round()
            stop.wait(0.5)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        run = run_dag(
            "kafka_rebalance",
            {
                "topic_prefix": topics.prefix,
                "dry_run": False,
                "throttle_bytes_per_second": 1024 * 1024,
            },
        )
    finally:
        stop.set()
        sender.join(30)
    producer.flush()
    assert str(run.state) == "success", task_states(run)
    result = xcom(run, "rebalance")
    assert result["applied"]["partitions"] == len(result["reassignment"]["partitions"]) > 0
    assert result["applied"]["election_failures"] == []

    assert_even(describe(three_brokers, names), {names[0]: 2, names[1]: 3})

    for topic in names:
        seen = read_all(three_brokers, topic)
        for store in STORES:
            sent = producer.seq[(topic, store)]
            assert seen[store] == list(range(1, sent + 1)), (topic, store, seen[store][:20])

    # A second run finds nothing to do.
    again = run_dag("kafka_rebalance", {"topic_prefix": topics.prefix})
    assert xcom(again, "rebalance")["reassignment"]["partitions"] == []

    # The gauges reach Prometheus: nothing in progress, nothing left to move.
    done = prom.wait_for(
        three_brokers,
        "retail_kafka_reassignments_in_progress == 0 and retail_kafka_rebalance_bytes_to_move == 0",
    )
    assert done


def test_growing_a_keyed_topic_is_refused_without_a_plan(
    three_brokers: Topology, uneven: tuple[Topics, list[str]]
) -> None:
    _, names = uneven
    with pytest.raises(PartitionGrowthRefused, match="key-to-partition mapping"):
        add_partitions(three_brokers, names[0], 12)
    assert len(describe(three_brokers, [names[0]])[names[0]]) == 6
    with pytest.raises(PartitionGrowthRefused, match="key-to-partition mapping"):
        ensure_topics(three_brokers, Topics.named(names[0].split(".")[0], partitions=12))
