"""Kafka topics of the platform, created idempotently, and client configs from the topology."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from retail.errors import RetailError
from retail.topology import Topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topics:
    """One topic per event type, keyed by store, plus the dead-letter topic."""

    orders: str = "retail.orders"
    inventory: str = "retail.inventory"
    deadletter: str = "retail.deadletter"
    partitions: int = 12

    @classmethod
    def named(cls, prefix: str = "retail", partitions: int = 12) -> Topics:
        """The topics under another prefix (``it-3f2a.orders`` ...): isolated runs, same code."""
        return cls(f"{prefix}.orders", f"{prefix}.inventory", f"{prefix}.deadletter", partitions)

    @classmethod
    def from_settings(cls) -> Topics:
        from retail.settings import get_settings

        s = get_settings()
        return cls.named(s.topic_prefix, s.topic_partitions)

    @property
    def events(self) -> list[str]:
        return [self.orders, self.inventory]

    def for_type(self, event_type: str) -> str:
        return {"order": self.orders, "inventory": self.inventory}[event_type]

    @staticmethod
    def short(topic: str) -> str:
        """The metric-safe name of a topic (no dots): ``retail.orders`` -> ``orders``."""
        return topic.rsplit(".", 1)[-1]


def ensure_topics(topology: Topology, topics: Topics, timeout: float = 30.0) -> list[str]:
    """Create the platform's topics if missing; returns the ones created."""
    admin = AdminClient({"bootstrap.servers": topology.bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout).topics)
    rf = min(3, len(topology.brokers))
    wanted = [
        NewTopic(t, num_partitions=topics.partitions, replication_factor=rf)
        for t in [*topics.events, topics.deadletter]
        if t not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RetailError(f"could not create topic {name}: {exc}") from exc
    log.info("created topics %s", ", ".join(created))
    return created


def group_lag(topology: Topology, topics: Topics, group: str, timeout: float = 10.0) -> int:
    """Messages on the event topics that ``group`` has not committed yet."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": topology.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
        }
    )
    try:
        parts = [TopicPartition(t, p) for t in topics.events for p in range(topics.partitions)]
        total = 0
        for tp in consumer.committed(parts, timeout=timeout):
            _, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            total += high - max(tp.offset, 0)
        return total
    finally:
        consumer.close()
