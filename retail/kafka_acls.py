"""Who may do what on Kafka: the platform's ACLs as data, a function of its topics and regions.

The brokers' authorizer denies whatever no ACL allows (no ``allow.everyone.if.no.acl.found``);
the ``admin`` login is a super user (it creates topics and these ACLs). Every other login gets
the least its clients need:

- ``producer`` (``retail produce``, the stream): writes the event topics, nothing else.
- ``consumer-<region>`` (a region's consumer processes): reads its region's topics and commits
  its own group's offsets only, and writes dead letters.
- ``ops`` (the audit, the balance check, consumer lag in ``retail stack status``): reads every
  topic (the audit rereads the events and the dead letters), reads the regional groups' committed
  offsets (DESCRIBE on a group allows OffsetFetch, not OffsetCommit: it cannot move them) and
  uses its own two groups, which never join or commit (``assign()`` only).

Idempotent producers need no IDEMPOTENT_WRITE on the cluster: since Kafka 3.0 (KIP-679) WRITE
on a topic is enough for InitProducerId, so none is granted.
"""

from __future__ import annotations

from dataclasses import dataclass

from retail.credentials import KAFKA_OPS, KAFKA_PRODUCER, kafka_consumer
from retail.kafka import AUDIT_GROUP, BALANCE_GROUP, Topics


@dataclass(frozen=True, order=True)
class Grant:
    """ALLOW ``operation`` on the resource ``kind``/``name`` (literal name) to Kafka user
    ``user``, from any host."""

    user: str
    kind: str  # topic | group
    name: str
    operation: str  # READ | WRITE | DESCRIBE

    @property
    def principal(self) -> str:
        return f"User:{self.user}"


def _each(user: str, kind: str, names: list[str], *operations: str) -> list[Grant]:
    return [Grant(user, kind, name, op) for name in names for op in operations]


def grants(topics: Topics) -> list[Grant]:
    """Every ACL the platform of ``topics`` needs, sorted (the same set on every call)."""
    out = _each(KAFKA_PRODUCER, "topic", topics.events, "WRITE", "DESCRIBE")
    for region in topics.regions:
        user = kafka_consumer(region)
        out += _each(user, "topic", topics.read_by(region), "READ", "DESCRIBE")
        out += _each(user, "group", [topics.group(region)], "READ")
        out += _each(user, "topic", [topics.deadletter], "WRITE", "DESCRIBE")
    out += _each(KAFKA_OPS, "topic", topics.all, "READ", "DESCRIBE")
    out += _each(KAFKA_OPS, "group", [topics.group(r) for r in topics.regions], "DESCRIBE")
    out += _each(KAFKA_OPS, "group", [AUDIT_GROUP, BALANCE_GROUP], "READ", "DESCRIBE")
    return sorted(set(out))


def bindings(topics: Topics) -> list[object]:
    """:func:`grants` as confluent-kafka ``AclBinding``s, for ``AdminClient.create_acls``."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    return [
        AclBinding(
            kinds[g.kind],
            g.name,
            ResourcePatternType.LITERAL,
            g.principal,
            "*",
            AclOperation[g.operation],
            AclPermissionType.ALLOW,
        )
        for g in grants(topics)
    ]
