"""The pipeline audit: reconcile what Kafka received in a time window with what Cassandra holds.

For every message of the event topics whose timestamp falls in the window (found with
``offsets_for_times``, decoded with :func:`retail.events.decode`):

* a valid event of its topic's region must be stored: its id's table holds this version or a
  later one (a resend replaces an earlier version everywhere), and when it holds this version,
  the version's row by store and day exists too;
* a message the consumers must refuse must be in the dead-letter topic, found by the
  ``origin.*`` headers the consumer puts on every dead letter: it does not decode, its region
  header or topic disagrees with its body (:func:`retail.kafka.misrouted`), it arrived unrouted,
  or it tries to move an id to another store (a conflict: :mod:`retail.aggregates`).

Only what the responsible consumer group says it has done is judged: a message at or past the
group's committed offset is *pending* (not yet consumed), counted and reported, never called
lost; consumer lag has its own gauge and alert. Anything the group committed past without its
rows or its dead letter is a **loss**.

Consistency: each region's consumer writes its events in its own DC at ``LOCAL_QUORUM``; the
other DCs get them asynchronously. So each event is looked up in its own region's DC at
``LOCAL_QUORUM``, which overlaps the write's quorum: a row that is not found there was not
durably written, whatever replication lag the other DCs have (the repair DAG looks after those).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from retail import kafka as conv
from retail.aggregates import ms
from retail.errors import RetailError
from retail.events import Event, InvalidEvent, Order, decode
from retail.kafka import Topics
from retail.rows import KEYSPACE, identity, utc_day

log = logging.getLogger(__name__)

EXAMPLES = 10  # ids shown per kind of finding

# The stored version of an id, and whether a version's row by store and day exists.
STORED_VERSION = {
    "orders": f"SELECT store_id, event_time FROM {KEYSPACE}.orders WHERE order_id = ?",
    "inventory_movements": (
        f"SELECT store_id, event_time FROM {KEYSPACE}.inventory_movements WHERE event_id = ?"
    ),
}
DAY_ROW = {
    "orders": (
        "orders_by_store_day",
        f"SELECT order_id FROM {KEYSPACE}.orders_by_store_day "
        "WHERE store_id = ? AND day = ? AND event_time = ? AND order_id = ?",
    ),
    "inventory_movements": (
        "inventory_by_store_day",
        f"SELECT event_id FROM {KEYSPACE}.inventory_by_store_day "
        "WHERE store_id = ? AND day = ? AND event_time = ? AND event_id = ?",
    ),
}


class AuditError(RetailError):
    """The audit could not read what it needs (Kafka or a DC unreachable)."""


def event_label(event: Event) -> str:
    """How a person finds the event again: the order id for orders, else the event id."""
    if isinstance(event, Order):
        return f"order {event.order_id} (event {event.event_id})"
    return f"{event.store_id} {event.sku} movement (event {event.event_id})"


@dataclass(frozen=True)
class Seen:
    """One message of the window: a valid event of its topic's region, or why the consumers
    must refuse it."""

    topic: str
    partition: int
    offset: int
    event: Event | None
    reason: str | None  # why it must be dead-lettered

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def judge(
    msg_topic: str, header: str | None, value: bytes, topics: Topics
) -> tuple[Event | None, str | None]:
    """What the consumers do with a message: (the event to write, None) or (None, the reason
    it is dead-lettered), by the same rules."""
    try:
        event = decode(value)
    except InvalidEvent as exc:
        return None, exc.reason
    kind = "order" if isinstance(event, Order) else "inventory"
    reason = conv.misrouted(topics, msg_topic, header, event.region, kind)
    return (None, reason) if reason else (event, None)


def responsible_group(seen: Seen, topics: Topics) -> str:
    """The group that reads a message's topic: its region's, or the catch-all's for unrouted."""
    region = topics.region_of(seen.topic) or topics.regions[0]
    return conv.group_name(topics.prefix, region)


@dataclass
class TopicAudit:
    topic: str
    messages: int = 0
    events: int = 0
    invalid: int = 0
    deadlettered: int = 0
    pending: int = 0
    missing: int = 0  # events without all their rows, plus invalid ones without a dead letter
    per_partition: dict[int, int] = field(default_factory=dict)
    missing_examples: list[str] = field(default_factory=list)
    pending_examples: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    window_start_ms: int
    window_end_ms: int
    topics: dict[str, TopicAudit]
    rows_checked: int = 0

    @property
    def missing(self) -> int:
        return sum(t.missing for t in self.topics.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "rows_checked": self.rows_checked,
            "missing": self.missing,
            "topics": {
                name: {
                    "messages": t.messages,
                    "events": t.events,
                    "invalid": t.invalid,
                    "deadlettered": t.deadlettered,
                    "pending": t.pending,
                    "missing": t.missing,
                    "per_partition": {str(p): n for p, n in sorted(t.per_partition.items())},
                    "missing_examples": t.missing_examples,
                    "pending_examples": t.pending_examples,
                }
                for name, t in self.topics.items()
            },
        }

    def summary(self) -> str:
        parts = [
            f"{name}: {t.messages} messages ({t.events} events, {t.invalid} invalid, "
            f"{t.deadlettered} dead-lettered, {t.pending} not yet consumed), {t.missing} lost"
            for name, t in self.topics.items()
        ]
        return "; ".join(parts) + f"; {self.rows_checked} rows checked"


# -- Kafka ---------------------------------------------------------------------------------------


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,  # never subscribed, never committed: assign() only
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )


def read_range(
    consumer: Consumer,
    topic: str,
    partition: int,
    start: int,
    end: int,
    timeout: float,
) -> Iterable[Message]:
    """The messages at offsets [start, end) of one partition."""
    if end <= start:
        return
    consumer.assign([TopicPartition(topic, partition, start)])
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise AuditError(
                    f"{topic}[{partition}]: offsets {start}..{end} not read within {timeout:.0f}s"
                )
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is not None:
                    continue  # partition EOF; a real error shows up as the deadline
                if msg.offset() >= end:
                    return
                yield msg
                if msg.offset() >= end - 1:
                    return
    finally:
        consumer.unassign()


def _offsets_at(
    consumer: Consumer, topic: str, partitions: list[int], ms: int, timeout: float
) -> dict[int, int]:
    """First offset at or after ``ms`` per partition (the high watermark if there is none)."""
    found = consumer.offsets_for_times(
        [TopicPartition(topic, p, ms) for p in partitions], timeout=timeout
    )
    out = {}
    for tp in found:
        if tp.offset >= 0:
            out[tp.partition] = tp.offset
        else:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout)
            out[tp.partition] = high
    return out


def read_window(
    bootstrap: str,
    topics: Topics,
    audited: list[str],
    start_ms: int,
    end_ms: int,
    *,
    timeout: float = 120.0,
) -> list[Seen]:
    """Every message of ``audited`` with a timestamp in [start_ms, end_ms), judged."""
    consumer = _consumer(bootstrap, "retail-pipeline-audit")
    seen: list[Seen] = []
    try:
        try:
            meta = consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise AuditError(f"Kafka at {bootstrap} did not answer: {exc}") from exc
        for topic in audited:
            if topic not in meta.topics:
                raise AuditError(f"topic {topic} does not exist; check the topic prefix")
            parts = sorted(meta.topics[topic].partitions)
            first = _offsets_at(consumer, topic, parts, start_ms, 10)
            after = _offsets_at(consumer, topic, parts, end_ms, 10)
            for p in parts:
                for msg in read_range(consumer, topic, p, first[p], after[p], timeout):
                    _, ts = msg.timestamp()
                    if not start_ms <= ts < end_ms:
                        continue  # a producer clock out of order: judged by its own window
                    header = conv.header(msg.headers(), conv.REGION_HEADER)
                    event, reason = judge(topic, header, msg.value() or b"", topics)
                    seen.append(Seen(topic, p, msg.offset(), event, reason))
            log.info("%s: %d messages in the window", topic, sum(s.topic == topic for s in seen))
    finally:
        consumer.close()
    return seen


def read_dead_letter_origins(
    bootstrap: str, deadletter: str, since_ms: int, *, timeout: float = 120.0
) -> set[tuple[str, int, int]]:
    """(topic, partition, offset) of every message dead-lettered since ``since_ms``.

    A dead letter is produced after the message it carries, so reading from the window's start
    to the end of the dead-letter topic finds every dead letter of the window's messages.
    """
    consumer = _consumer(bootstrap, "retail-pipeline-audit")
    origins: set[tuple[str, int, int]] = set()
    try:
        meta = consumer.list_topics(deadletter, timeout=10)
        parts = sorted(meta.topics[deadletter].partitions) if deadletter in meta.topics else []
        first = _offsets_at(consumer, deadletter, parts, since_ms, 10) if parts else {}
        for p in parts:
            _, high = consumer.get_watermark_offsets(TopicPartition(deadletter, p), timeout=10)
            for msg in read_range(consumer, deadletter, p, first[p], high, timeout):
                topic = conv.header(msg.headers(), conv.DLQ_ORIGIN_TOPIC)
                part = conv.header(msg.headers(), conv.DLQ_ORIGIN_PARTITION)
                offset = conv.header(msg.headers(), conv.DLQ_ORIGIN_OFFSET)
                if topic and part and offset and part.isdigit() and offset.isdigit():
                    origins.add((topic, int(part), int(offset)))
    finally:
        consumer.close()
    return origins


def committed_offsets(
    bootstrap: str, groups: list[str], partitions: list[tuple[str, int]]
) -> dict[str, dict[tuple[str, int], int]]:
    """group -> (topic, partition) -> next offset it will read (absent: nothing committed)."""
    out: dict[str, dict[tuple[str, int], int]] = {}
    for group in groups:
        c = _consumer(bootstrap, group)
        try:
            got = c.committed([TopicPartition(t, p) for t, p in partitions], timeout=10)
        except KafkaException as exc:
            raise AuditError(f"could not read the committed offsets of {group}: {exc}") from exc
        finally:
            c.close()
        out[group] = {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}
    return out


# -- Cassandra -----------------------------------------------------------------------------------


def stored_versions(session: Session, events: list[Event]) -> list[tuple[str, object] | None]:
    """Per event, the stored version of its id: (store_id, event_time), or None (point reads,
    in parallel)."""
    out: list[tuple[str, object] | None] = [None] * len(events)
    by_table: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(events):
        by_table[identity(e)[0]].append(i)
    for table, indexes in by_table.items():
        stmt = session.prepare(STORED_VERSION[table])
        args = [(identity(events[i])[1],) for i in indexes]
        results = execute_concurrent_with_args(
            session, stmt, args, concurrency=64, raise_on_first_error=True
        )
        for i, (_, rows) in zip(indexes, results, strict=True):
            row = rows.one()
            out[i] = None if row is None else (row.store_id, row.event_time)
    return out


def missing_day_rows(session: Session, events: list[Event]) -> set[int]:
    """Indexes of ``events`` whose row by store and day does not exist."""
    absent: set[int] = set()
    by_table: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(events):
        by_table[identity(e)[0]].append(i)
    for table, indexes in by_table.items():
        stmt = session.prepare(DAY_ROW[table][1])
        args = [
            (e.store_id, utc_day(e.event_time), e.event_time, identity(e)[1])
            for e in (events[i] for i in indexes)
        ]
        results = execute_concurrent_with_args(
            session, stmt, args, concurrency=64, raise_on_first_error=True
        )
        absent |= {i for i, (_, rows) in zip(indexes, results, strict=True) if not rows.one()}
    return absent


# -- the audit -----------------------------------------------------------------------------------


def audit(
    *,
    bootstrap: str,
    topics: Topics,
    audited: list[str],
    sessions: Callable[[str], Session],
    start_ms: int,
    end_ms: int,
) -> AuditReport:
    """Reconcile the window [start_ms, end_ms) of the ``audited`` topics with Cassandra.

    ``sessions(region)`` returns a session whose local DC is that region, at LOCAL_QUORUM.
    """
    seen = read_window(bootstrap, topics, audited, start_ms, end_ms)
    report = AuditReport(start_ms, end_ms, {t: TopicAudit(t) for t in audited})
    groups = sorted({responsible_group(s, topics) for s in seen})
    partitions = sorted({(s.topic, s.partition) for s in seen})
    committed = committed_offsets(bootstrap, groups, partitions) if partitions else {}
    origins = read_dead_letter_origins(bootstrap, topics.deadletter, start_ms) if seen else set()

    def lost(s: Seen, text: str) -> None:
        t = report.topics[s.topic]
        t.missing += 1
        _example(t.missing_examples, text)

    # Valid, consumed events by region: they are looked up in that region's DC.
    to_check: dict[str, list[Seen]] = defaultdict(list)
    for s in seen:
        t = report.topics[s.topic]
        t.messages += 1
        t.per_partition[s.partition] = t.per_partition.get(s.partition, 0) + 1
        group = responsible_group(s, topics)
        if committed.get(group, {}).get((s.topic, s.partition), -1) <= s.offset:
            t.pending += 1
            _example(t.pending_examples, f"{s.where} not yet consumed by {group}")
        elif s.event is not None:
            t.events += 1
            to_check[s.event.region].append(s)
        else:
            t.invalid += 1
            if (s.topic, s.partition, s.offset) in origins:
                t.deadlettered += 1
            else:
                lost(s, f"invalid message {s.where} ({s.reason}) was not dead-lettered by {group}")

    for region, items in sorted(to_check.items()):
        session = sessions(region)
        events = [s.event for s in items if s.event is not None]
        versions = stored_versions(session, events)
        report.rows_checked += len(events)
        current: list[int] = []
        for i, (s, e, version) in enumerate(zip(items, events, versions, strict=True)):
            table = identity(e)[0]
            if version is None:
                lost(s, f"{event_label(e)} at {s.where}: no row in {table}")
            elif version[0] != e.store_id:
                # It tried to move the id to another store: the consumer dead-letters it.
                if (s.topic, s.partition, s.offset) in origins:
                    report.topics[s.topic].deadlettered += 1
                else:
                    lost(
                        s,
                        f"{event_label(e)} at {s.where} conflicts with {table}, not dead-lettered",
                    )
            elif ms(version[1]) < ms(e.event_time):  # type: ignore[arg-type]
                lost(s, f"{event_label(e)} at {s.where}: {table} holds an older version")
            elif ms(version[1]) == ms(e.event_time):  # type: ignore[arg-type]
                current.append(i)
            # else: a later version replaced it, which is what a resend does
        absent = missing_day_rows(session, [events[i] for i in current])
        report.rows_checked += len(current)
        for j in sorted(absent):
            s, e = items[current[j]], events[current[j]]
            lost(s, f"{event_label(e)} at {s.where}: no row in {DAY_ROW[identity(e)[0]][0]}")
        log.info("%s: %d events checked, %d current versions", region, len(events), len(current))
    return report


def _example(examples: list[str], text: str) -> None:
    if len(examples) < EXAMPLES:
        examples.append(text)
