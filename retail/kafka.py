"""The platform's Kafka conventions in one place: topic names, the routing of an event to its
topic, headers, consumer group names; topics created idempotently.

Routing: one topic per region and event type, ``<prefix>.<region>.<type>`` (``retail.eu-west.
orders``), keyed by store, so that a store's events stay in order in one partition and each
regional consumer group reads only its own region's events. A producer picks the topic from the
event's ``region`` and ``type`` fields and puts the region in the ``region`` header too. A
message whose region the producer cannot tell (a line that is not valid JSON, a region nobody
knows) goes to ``<prefix>.unrouted``, which the first region's group reads and dead-letters
from (the catch-all). Anything that cannot be written lands in ``<prefix>.deadletter`` with the
reason and its origin in headers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from retail.credentials import KAFKA_ADMIN, KAFKA_OPS, Credentials, stack_credentials
from retail.errors import RetailError
from retail.events import Event, InvalidEvent, Order, decode
from retail.topology import REGIONS, Topology

log = logging.getLogger(__name__)

EVENT_TYPES = ("orders", "inventory")
# The event ``type`` field -> the topic kind that carries it.
TOPIC_KIND = {"order": "orders", "inventory": "inventory"}

REGION_HEADER = "region"  # set by the producer; must agree with the topic and the body
# Headers of a dead letter: why, and where the message came from.
DLQ_REASON = "reason"
DLQ_ORIGIN_TOPIC = "origin.topic"
DLQ_ORIGIN_PARTITION = "origin.partition"
DLQ_ORIGIN_OFFSET = "origin.offset"
DLQ_CONSUMER_REGION = "consumer.region"
DLQ_FAILED_AT = "failed_at"
# A message too large for the dead-letter topic is dead-lettered by reference: these headers
# say so and how large it was; the payload itself stays in its origin topic.
DLQ_PAYLOAD_OMITTED = "payload.omitted"
DLQ_PAYLOAD_SIZE = "payload.size"
DLQ_PAYLOAD_OMITTED_TEXT = "too large for the dead-letter topic"

# The groups of the operations' own consumers: they only assign() partitions and never commit,
# but the client needs a group id. Never the name of a region's group (see group_name).
AUDIT_GROUP = "retail-pipeline-audit"
BALANCE_GROUP = "retail-balance-check"

Headers = list[tuple[str, bytes | None]]


def group_name(prefix: str, region: str) -> str:
    """The consumer group of a region: ``retail-eu-west``."""
    return f"{prefix}-{region}"


def header(headers: Headers | None, name: str) -> str | None:
    """The first value of header ``name``, decoded (None when absent)."""
    for key, value in headers or []:
        if key == name and value is not None:
            return value.decode(errors="replace")
    return None


def dead_letter_headers(
    origin: tuple[str, int, int],
    reason: str,
    consumer_region: str,
    failed_at: str,
    *,
    omitted_size: int | None = None,
) -> list[tuple[str, bytes]]:
    """The headers of a dead letter: why, where it came from (topic, partition, offset), which
    region's consumer refused it and when. ``omitted_size``: it goes by reference, its payload
    (of that many bytes) too large for the dead-letter topic."""
    topic, partition, offset = origin
    headers = [
        (DLQ_REASON, reason.encode()),
        (DLQ_ORIGIN_TOPIC, topic.encode()),
        (DLQ_ORIGIN_PARTITION, str(partition).encode()),
        (DLQ_ORIGIN_OFFSET, str(offset).encode()),
        (DLQ_CONSUMER_REGION, consumer_region.encode()),
        (DLQ_FAILED_AT, failed_at.encode()),
    ]
    if omitted_size is not None:
        headers += [
            (DLQ_PAYLOAD_OMITTED, DLQ_PAYLOAD_OMITTED_TEXT.encode()),
            (DLQ_PAYLOAD_SIZE, str(omitted_size).encode()),
        ]
    return headers


def dead_letter_origin(headers: Headers | None) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the message a dead letter carries, from its headers (None
    when they do not say)."""
    topic = header(headers, DLQ_ORIGIN_TOPIC)
    partition = header(headers, DLQ_ORIGIN_PARTITION)
    offset = header(headers, DLQ_ORIGIN_OFFSET)
    if topic and partition and offset and partition.isdigit() and offset.isdigit():
        return topic, int(partition), int(offset)
    return None


@dataclass(frozen=True)
class Topics:
    """The topics of one prefix: an event topic per region and type, unrouted, dead letters."""

    prefix: str = "retail"
    partitions: int = 12
    regions: tuple[str, ...] = field(default_factory=lambda: tuple(r.dc for r in REGIONS))

    @classmethod
    def named(cls, prefix: str = "retail", partitions: int = 12) -> Topics:
        """The topics under another prefix (``it-3f2a.eu-west.orders`` ...): isolated runs."""
        return cls(prefix, partitions)

    @classmethod
    def from_settings(cls) -> Topics:
        from retail.settings import get_settings

        s = get_settings()
        return cls.named(s.topic_prefix, s.topic_partitions)

    def topic(self, region: str, kind: str) -> str:
        """``<prefix>.<region>.<kind>``; kind is ``orders`` or ``inventory``."""
        return f"{self.prefix}.{region}.{kind}"

    def orders(self, region: str) -> str:
        return self.topic(region, "orders")

    def inventory(self, region: str) -> str:
        return self.topic(region, "inventory")

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def unrouted(self) -> str:
        return f"{self.prefix}.unrouted"

    def of_region(self, region: str) -> list[str]:
        """The event topics one region's group reads."""
        return [self.topic(region, kind) for kind in EVENT_TYPES]

    def read_by(self, region: str) -> list[str]:
        """Every topic the region's consumer group subscribes to: its event topics, and the
        unrouted topic for the catch-all (the first region)."""
        topics = self.of_region(region)
        return [*topics, self.unrouted] if self.is_catch_all(region) else topics

    @property
    def catch_all(self) -> str:
        """The region whose group also reads the unrouted topic (and dead-letters it)."""
        return self.regions[0]

    def is_catch_all(self, region: str) -> bool:
        return region == self.catch_all

    def group(self, region: str) -> str:
        """The consumer group of ``region`` under this prefix."""
        return group_name(self.prefix, region)

    def reader_of(self, topic: str) -> str:
        """The region whose group reads ``topic``: its region's, the catch-all for the rest."""
        return self.region_of(topic) or self.catch_all

    @property
    def events(self) -> list[str]:
        """Every event topic of every region, and the unrouted topic."""
        return [t for r in self.regions for t in self.of_region(r)] + [self.unrouted]

    @property
    def all(self) -> list[str]:
        return [*self.events, self.deadletter]

    def for_event(self, event_type: str | None, region: str | None) -> str:
        """Where a producer sends a message of ``event_type`` (the body's ``type``) for
        ``region``: the region's topic of that kind, or unrouted when the region is unknown.
        An unknown type of a known region goes to its orders topic (its group dead-letters it)."""
        if region not in self.regions:
            return self.unrouted
        return self.topic(region, TOPIC_KIND.get(event_type or "", "orders"))

    def region_of(self, topic: str) -> str | None:
        """The region whose events ``topic`` carries (None for unrouted and other topics)."""
        parts = topic.split(".")
        if len(parts) == 3 and parts[0] == self.prefix and parts[1] in self.regions:
            return parts[1]
        return None

    @staticmethod
    def short(topic: str) -> str:
        """The event kind of a topic, for metric names (no dots): ``retail.eu-west.orders`` ->
        ``orders``; ``retail.unrouted`` -> ``unrouted``."""
        return topic.rsplit(".", 1)[-1]

    def metric_name(self, topic: str) -> str:
        """A topic's name in metric names, unique within the prefix and without dots:
        ``retail.eu-west.orders`` -> ``eu-west_orders``, ``retail.deadletter`` -> ``deadletter``."""
        rest = topic.removeprefix(f"{self.prefix}.")
        return rest.replace(".", "_")


def misrouted(topics: Topics, topic: str, header: str | None, region: str, kind: str) -> str | None:
    """Why a valid event of ``region`` and ``kind`` (``order`` or ``inventory``), read from
    ``topic`` with this ``region`` header, is not its region's to write (None if it is): the
    consumers dead-letter it with this reason, and the audit expects them to."""
    if header is not None and header != region:
        return f"region header says {header!r} but the event's region is {region!r}"
    expected = topics.for_event(kind, region)
    if topic != expected:
        return f"an event of region {region} on {topic}; producers send it to {expected}"
    return None


# How long the consumers of a region may be down (or its DC unwritable) without losing an event:
# the topics keep every message this long after it arrived. A long weekend without anyone on call;
# past it, unread messages are deleted and the consumers stall there, with an alert
# (UnreadEventsDeleted), rather than skip them (DESIGN.md, Durability).
LONGEST_TOLERATED_OUTAGE = timedelta(days=3)
# A day more as a margin: an outage noticed late still ends before anything unread is deleted.
RETENTION_MS = int((LONGEST_TOLERATED_OUTAGE + timedelta(days=1)).total_seconds() * 1000)

ClientConfig = Mapping[str, Any]  # librdkafka properties: bootstrap.servers, security.*, sasl.*

SECURITY_PROTOCOL = "SASL_SSL"
SASL_MECHANISM = "SCRAM-SHA-512"


def client_config(
    topology: Topology, user: str, credentials: Credentials | None = None
) -> dict[str, Any]:
    """The librdkafka config with which Kafka login ``user`` reaches ``topology``'s brokers:
    SASL_SSL, SCRAM-SHA-512, the brokers' certificates checked against the platform's CA. The
    base of every client; each takes the least login it needs (``producer``, ``consumer-<dc>``,
    ``ops``, ``admin``: :mod:`retail.kafka_acls`). ``credentials``: the platform's
    (``RETAIL_SECRETS_DIR``, else the local stack's) unless given."""
    creds = credentials or stack_credentials()
    login = creds.login("kafka", user)
    return {
        "bootstrap.servers": topology.bootstrap_servers,
        "security.protocol": SECURITY_PROTOCOL,
        "sasl.mechanism": SASL_MECHANISM,
        "sasl.username": login.username,
        "sasl.password": login.password.get_secret_value(),
        "ssl.ca.location": str(creds.ca_file),
    }


def judge(
    topics: Topics, topic: str, region_header: str | None, value: bytes
) -> tuple[Event | None, str | None]:
    """What a consumer does with a message read from ``topic``: (the event to write, None), or
    (None, the reason it is dead-lettered). The consumers route by it and the audit judges by
    it, so they cannot disagree."""
    try:
        event = decode(value)
    except InvalidEvent as exc:
        return None, exc.reason
    kind = "order" if isinstance(event, Order) else "inventory"
    reason = misrouted(topics, topic, region_header, event.region, kind)
    return (None, reason) if reason else (event, None)


class PartitionGrowthRefused(RetailError):
    """Growing a keyed topic's partition count without a plan for the keys that move."""


def check_partition_growth(topic: str, current: int, wanted: int, plan: str | None) -> None:
    """Refuse to grow ``topic`` from ``current`` to ``wanted`` partitions unless ``plan`` says
    how the keys that change partition keep their order. Every topic of the platform is keyed
    by store, and a producer picks a key's partition by a hash of the key modulo the partition
    count: with another count most stores map to another partition, so a store's new events
    land on a partition its older, maybe unconsumed, events are not on, and a consumer can
    write them before those (per-store order lost). Shrinking is impossible in Kafka."""
    if wanted < current:
        raise PartitionGrowthRefused(
            f"{topic} has {current} partitions and Kafka cannot remove partitions; {wanted} "
            "would need a new topic and a migration of its events"
        )
    if wanted > current and not (plan and plan.strip()):
        raise PartitionGrowthRefused(
            f"growing {topic} from {current} to {wanted} partitions changes the key-to-"
            "partition mapping: most stores' events would go to another partition than their "
            "earlier ones, and their order per store would be lost while both are consumed. "
            "Plan it first (stop the producers, let the consumers drain every partition to "
            "lag 0, grow, then start the producers again), and pass that plan (plan=...) to "
            "grow it; or keep the count and rebalance the brokers instead (kafka_rebalance DAG)"
        )


def add_partitions(
    topology: Topology,
    topic: str,
    total: int,
    *,
    plan: str | None = None,
    timeout: float = 30.0,
    credentials: Credentials | None = None,
) -> int:
    """Grow ``topic`` to ``total`` partitions, as the admin; refused without ``plan``
    (:func:`check_partition_growth`). Returns the partition count it had."""
    from confluent_kafka.admin import NewPartitions

    admin = AdminClient(client_config(topology, KAFKA_ADMIN, credentials))
    try:
        meta = admin.list_topics(topic=topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        raise RetailError(
            f"Kafka at {topology.bootstrap_servers} did not answer within {timeout:.0f}s ({exc}); "
            "is it up? (`retail stack status`)"
        ) from exc
    if meta is None or meta.error is not None:
        raise RetailError(f"topic {topic} does not exist: create it with `retail topics`")
    current = len(meta.partitions)
    check_partition_growth(topic, current, total, plan)
    if total == current:
        return current
    log.warning("growing %s from %d to %d partitions; plan: %s", topic, current, total, plan)
    future = admin.create_partitions([NewPartitions(topic, total)], request_timeout=timeout)[topic]
    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        raise RetailError(f"could not grow {topic} to {total} partitions: {exc}") from exc
    return current


def ensure_topics(
    topology: Topology,
    topics: Topics,
    timeout: float = 30.0,
    *,
    credentials: Credentials | None = None,
) -> list[str]:
    """Create the platform's topics if missing, and the ACLs that let each login use them
    (:mod:`retail.kafka_acls`), as the admin; returns the topics created. Idempotent: an ACL
    that exists already is created again as a no-op. An existing topic with fewer partitions
    than ``topics.partitions`` is refused (:class:`PartitionGrowthRefused`), never grown
    silently nor left as it is silently: growing it is :func:`add_partitions`, with a plan."""
    from retail.kafka_acls import bindings

    admin = AdminClient(client_config(topology, KAFKA_ADMIN, credentials))
    try:
        metadata = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise RetailError(
            f"Kafka at {topology.bootstrap_servers} did not answer within {timeout:.0f}s ({exc}); "
            "is it up? (`retail stack status`)"
        ) from exc
    existing = set(metadata)
    for name in topics.all:
        if name in metadata and len(metadata[name].partitions) < topics.partitions:
            check_partition_growth(name, len(metadata[name].partitions), topics.partitions, None)
    rf = min(3, len(topology.brokers))
    wanted = [
        NewTopic(
            t,
            num_partitions=topics.partitions,
            replication_factor=rf,
            # acks=all then means two replicas when there are three: one broker may die.
            config={"retention.ms": str(RETENTION_MS), "min.insync.replicas": str(max(1, rf - 1))},
        )
        for t in topics.all
        if t not in existing
    ]
    created = []
    if wanted:
        for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
                created.append(name)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise RetailError(f"could not create topic {name}: {exc}") from exc
        log.info("created topics %s", ", ".join(created))
    wanted_acls = bindings(topics)
    for acl, future in admin.create_acls(wanted_acls, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            raise RetailError(f"could not create the ACL {acl}: {exc}") from exc
    _wait_for_acls(admin, wanted_acls, timeout)
    return created


def _wait_for_acls(admin: AdminClient, wanted: list[Any], timeout: float) -> None:
    """Return once a broker applies ``wanted``: the controller acknowledges new ACLs before the
    brokers have replayed them from the metadata log, and a client that uses them at once
    (a producer right after ``ensure_topics``) is refused with no retry."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    every = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    deadline = time.monotonic() + timeout
    while True:
        applied = set(admin.describe_acls(every, request_timeout=timeout).result(timeout))
        missing = [acl for acl in wanted if acl not in applied]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RetailError(
                f"{len(missing)} ACLs not applied within {timeout:.0f}s, e.g. {missing[0]}"
            )
        time.sleep(0.2)


def missing_topics(client: ClientConfig, names: list[str], timeout: float = 10.0) -> list[str]:
    """Which of ``names`` the login of ``client`` cannot see (absent, or not its to see):
    what a client that may not create topics waits for."""
    admin = AdminClient(dict(client))
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise RetailError(
            f"Kafka at {client.get('bootstrap.servers')} did not answer within {timeout:.0f}s "
            f"({exc}); is it up? (`retail stack status`)"
        ) from exc
    return [n for n in names if n not in existing]


def group_lag(
    topology: Topology, topics: list[str], group: str, partitions: int, timeout: float = 10.0
) -> int:
    """Messages on ``topics`` (each with ``partitions`` partitions) that ``group`` has not
    committed yet, read as ``ops`` (which may read a group's offsets, not move them), through
    a client kept for the process (:func:`_offsets_reader`)."""
    from confluent_kafka import TopicPartition

    consumer, lock = _offsets_reader(client_config(topology, KAFKA_OPS), group)
    parts = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    deadline = time.monotonic() + timeout
    with lock:
        while True:
            try:
                committed = consumer.committed(parts, timeout=timeout)
                return sum(
                    consumer.get_watermark_offsets(tp, timeout=timeout)[1] - max(tp.offset, 0)
                    for tp in committed
                )
            except KafkaException as exc:
                # The group's coordinator is still loading or has just moved, or a partition's
                # leader has (a broker that has just started, restarted or died): the client
                # finds them again when asked again.
                if not _moving(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


_READERS: dict[tuple[tuple[str, str], ...], tuple[Any, threading.Lock]] = {}
_READERS_LOCK = threading.Lock()


def _offsets_reader(config: Mapping[str, object], group: str) -> tuple[Any, threading.Lock]:
    """One client per login and group for the whole process (it never subscribes, so it never
    joins the group): a new client over SASL_SSL costs a TLS handshake and a SCRAM login (8192
    PBKDF2 rounds) on both sides, which a lag probe made every quarter second (``retail stack
    status``, the chaos and fuzz runs, the benchmarks) would otherwise pay every time."""
    from confluent_kafka import Consumer

    key = tuple(sorted((k, str(v)) for k, v in {**config, "group.id": group}.items()))
    with _READERS_LOCK:
        if key not in _READERS:
            consumer = Consumer(
                {
                    **config,
                    "group.id": group,
                    "enable.auto.commit": False,
                    # Its connection errors while a broker is down go through logging (it
                    # outlives the probe that made it), not straight to stderr.
                    "logger": logging.getLogger("retail.kafka.lag"),
                }
            )
            _READERS[key] = (consumer, threading.Lock())
        return _READERS[key]


_COORDINATOR_MOVING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)


def _coordinator_moving(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() in _COORDINATOR_MOVING


_LEADER_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})


def _moving(exc: KafkaException) -> bool:
    """A coordinator or a partition leader that is moving: worth asking again."""
    error = exc.args[0] if exc.args else None
    return _coordinator_moving(exc) or (
        isinstance(error, KafkaError) and (error.code() in _LEADER_MOVING or error.retriable())
    )


def region_lag(topology: Topology, topics: Topics, region: str, timeout: float = 10.0) -> int:
    """What the region's consumer group has not committed yet, over every topic it reads."""
    return group_lag(
        topology, topics.read_by(region), topics.group(region), topics.partitions, timeout
    )
