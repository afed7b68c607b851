"""Kafka (KRaft) takes keyed messages into several partitions, one partition per key."""

from __future__ import annotations

import uuid
from collections import defaultdict

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from retail.credentials import KAFKA_ADMIN
from retail.kafka import client_config
from retail.topology import Topology

PARTITIONS = 6


def test_keyed_messages_round_trip_and_a_key_always_lands_in_one_partition(
    topology: Topology,
) -> None:
    topic = f"it-keys-{uuid.uuid4().hex[:8]}"
    # A topic of its own, outside the platform's ACLs: the admin creates, writes and reads it.
    client = client_config(topology, KAFKA_ADMIN)
    admin = AdminClient(client)
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
        topic
    ].result(timeout=30)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == PARTITIONS

    keys = [f"store-{i:04d}" for i in range(40)]
    sent = {(k, f"{k}:{n}") for k in keys for n in range(25)}
    delivered: dict[str, set[int]] = defaultdict(set)

    def on_delivery(err, msg) -> None:
        assert err is None, err
        delivered[msg.key().decode()].add(msg.partition())

    producer = Producer({**client, "acks": "all", "enable.idempotence": True})
    for key, value in sorted(sent, key=lambda kv: int(kv[1].split(":")[1])):
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            **client,
            "group.id": f"it-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: set[tuple[str, str]] = set()
    seen: dict[str, set[int]] = defaultdict(set)
    order: dict[str, list[int]] = defaultdict(list)
    try:
        for _ in range(60):
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                assert msg.error() is None, msg.error()
                key, value = msg.key().decode(), msg.value().decode()
                received.add((key, value))
                seen[key].add(msg.partition())
                order[key].append(int(value.split(":")[1]))
            if len(received) == len(sent):
                break
    finally:
        consumer.close()

    assert received == sent
    assert all(len(parts) == 1 for parts in seen.values()), seen
    assert seen == delivered  # the partition the producer was told is where the consumer read it
    assert len({p for parts in seen.values() for p in parts}) > 1  # keys spread over partitions
    assert all(nums == sorted(nums) for nums in order.values())  # per-key order kept
