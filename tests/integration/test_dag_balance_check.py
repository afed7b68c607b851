"""The balance_check DAG against the live stack: a hot key injected into the stream shows up as
skew in the balance gauges in Prometheus, the summary names the partition and the key, and the
KafkaPartitionSkew alert fires from those gauges."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from retail.credentials import KAFKA_OPS
from retail.events import Order
from retail.generator import StreamGenerator
from retail.kafka import BALANCE_GROUP, Topics, client_config, ensure_topics
from retail.producer import EventProducer, records_from_events
from retail.topology import Topology
from tests.integration import prom
from tests.integration.airflow import run_dag, task_states, xcom

# The KafkaPartitionSkew alert's threshold and the DAG's default: on a region's topic the
# stream's few popular stores alone give 4 to 7 over 12 partitions, a store taking 60% of all
# orders (most of its region's) about 10.
THRESHOLD = 8.0
PARTITIONS = 12


@pytest.fixture(scope="module")
def hot_stream(topology: Topology) -> tuple[Topics, str, str, int]:
    """Fresh topics with a stream whose last part sends 60% of the orders to one store: its
    region's orders topic, the store, and how many orders that topic got."""
    topics = Topics.named(f"bal{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    ensure_topics(topology, topics)
    gen = StreamGenerator(seed=5, stores_per_region=10)
    events = list(gen.events(200))
    hot = gen.inject_hot_key(share=0.6)
    events += list(gen.events(2000))
    EventProducer(topology).send(records_from_events(events, topics))
    region = gen.store_region(hot)
    n_orders = sum(isinstance(e, Order) and e.region == region for e in events)
    return topics, topics.orders(region), hot, n_orders


def partition_of(topology: Topology, topic: str, key: str, partitions: int) -> int:
    """Where Kafka put ``key``'s messages, read back from the topic itself."""
    # As the balance check reads: the ops login, in its group (assign() only, never joined).
    c = Consumer({**client_config(topology, KAFKA_OPS), "group.id": BALANCE_GROUP})
    try:
        for p in range(partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high == low:
                continue
            c.assign([TopicPartition(topic, p, max(low, high - 50))])
            msgs = c.consume(50, 10)
            if any(m.error() is None and m.key() == key.encode() for m in msgs):
                return p
        raise AssertionError(f"no message with key {key} in {topic}")
    finally:
        c.close()


def prometheus_value(topology: Topology, query: str, timeout: float = 45) -> float:
    """The value of an instant query once it returns a series (Prometheus scrapes every 5 s)."""
    result = prom.wait_for(topology, query, timeout=timeout)
    return float(result[0]["value"][1])


def test_a_hot_key_shows_up_as_skew_in_the_summary_and_in_prometheus(
    airflow: None, topology: Topology, hot_stream: tuple[Topics, str, str, int]
) -> None:
    topics, hot_topic, hot, n_orders = hot_stream
    prefix = topics.prefix
    run = run_dag(
        "balance_check",
        {"topic_prefix": prefix, "window_seconds": 300, "skew_threshold": THRESHOLD},
    )
    assert str(run.state) == "success", task_states(run)
    result = xcom(run, "check_balance")

    orders = next(t for t in result["kafka"]["topics"] if t["topic"] == hot_topic)
    hot_partition = partition_of(topology, hot_topic, hot, PARTITIONS)
    assert orders["hot_partition"] == hot_partition
    assert orders["hot_keys"][0][0] == hot
    assert orders["skew"] > THRESHOLD
    assert orders["window_messages"] == n_orders
    assert sum(p["messages"] for p in orders["partitions"]) == n_orders
    advice = "\n".join(result["recommendations"])
    assert f"partition {hot_partition} of {hot_topic} carries" in advice
    assert f"hot key {hot}" in advice
    # The ring of the test stack: one node per DC, each owning all of its DC.
    owners = {n["node"]: n["ownership"] for n in result["cassandra"]["nodes"]}
    assert owners == {n.name: pytest.approx(1.0) for n in topology.nodes}

    label = f"{prefix}_{topics.metric_name(hot_topic)}"
    skew = prometheus_value(topology, f'retail_balance_kafka_skew_ratio{{topic="{label}"}}')
    assert skew > THRESHOLD
    assert skew == pytest.approx(orders["skew"], rel=1e-3)
    rate = prometheus_value(
        topology,
        f'retail_balance_kafka_partition_rate{{topic="{label}",partition="{hot_partition}"}}',
    )
    assert rate > 0

    # ...and the skew alert fires from those gauges (it holds for 1m before firing).
    alert = prom.wait_for(
        topology,
        f'ALERTS{{alertname="KafkaPartitionSkew", topic="{label}", alertstate="firing"}}',
        timeout=150,
    )
    assert alert[0]["metric"]["severity"] == "warning"
