"""The pipeline audit: reconcile what Kafka received in a time window with what Cassandra holds.

For every message of the event topics whose timestamp falls in the window (found with
``offsets_for_times``, decoded with :func:`retail.events.decode`):

* a valid event must have every base row :func:`retail.rows.rows_for` says it writes (orders by
  order id, inventory movements by store, SKU, event time and event id, ...);
* an invalid one must be in the dead-letter topic, found by the ``origin.*`` headers the
  consumer puts on every dead letter.

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
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from retail.errors import RetailError
from retail.events import Event, InvalidEvent, Order, decode
from retail.kafka import Topics
from retail.rows import INSERTS, KEYSPACE, rows_for

log = logging.getLogger(__name__)

REGION_HEADER = "region"  # set by retail.producer; read by the consumers without decoding
EXAMPLES = 10  # ids shown per kind of finding


class AuditError(RetailError):
    """The audit could not read what it needs (Kafka or a DC unreachable)."""


_INSERT = re.compile(r"INSERT INTO (\w+)\.(\w+) \(([^)]*)\)")


def insert_columns() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Insert name -> (table, its columns in the order rows_for binds them)."""
    out = {}
    for name, cql in INSERTS.items():
        match = _INSERT.search(cql)
        if match is None:
            raise AuditError(f"cannot read the columns of insert {name!r}: {cql[:80]}")
        cols = tuple(c.strip() for c in match.group(3).split(","))
        out[name] = (match.group(2), cols)
    return out


def row_keys(
    event: Event, primary_keys: Mapping[str, tuple[str, ...]]
) -> list[tuple[str, tuple[object, ...]]]:
    """(table, primary key values) of every base row ``event`` writes."""
    columns = insert_columns()
    keys = []
    for name, values in rows_for(event):
        table, cols = columns[name]
        row = dict(zip(cols, values, strict=False))  # the last value is the write timestamp
        keys.append((table, tuple(row[c] for c in primary_keys[table])))
    return keys


def event_label(event: Event) -> str:
    """How a person finds the event again: the order id for orders, else the event id."""
    if isinstance(event, Order):
        return f"order {event.order_id} (event {event.event_id})"
    return f"{event.store_id} {event.sku} movement (event {event.event_id})"


@dataclass(frozen=True)
class Seen:
    """One message of the window."""

    topic: str
    partition: int
    offset: int
    region: str | None  # the producer's header
    event: Event | None
    reason: str | None  # why it is invalid

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def responsible_group(seen: Seen, prefix: str, regions: list[str]) -> str:
    """The group that writes or dead-letters a message, by the consumers' routing rule: the
    event's region; for an invalid message the region of its header, or the first region's
    group (the catch-all) when the header names none."""
    if seen.event is not None:
        return f"{prefix}-{seen.event.region}"
    region = seen.region if seen.region in regions else regions[0]
    return f"{prefix}-{region}"


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


def _header(msg: Message, name: str) -> str | None:
    for key, value in msg.headers() or []:
        if key == name and value is not None:
            return value.decode(errors="replace")
    return None


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
    topics: list[str],
    start_ms: int,
    end_ms: int,
    *,
    timeout: float = 120.0,
) -> list[Seen]:
    """Every message of ``topics`` with a timestamp in [start_ms, end_ms), decoded."""
    consumer = _consumer(bootstrap, "retail-pipeline-audit")
    seen: list[Seen] = []
    try:
        try:
            meta = consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise AuditError(f"Kafka at {bootstrap} did not answer: {exc}") from exc
        for topic in topics:
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
                    try:
                        event, reason = decode(msg.value() or b""), None
                    except InvalidEvent as exc:
                        event, reason = None, exc.reason
                    seen.append(
                        Seen(topic, p, msg.offset(), _header(msg, REGION_HEADER), event, reason)
                    )
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
                topic = _header(msg, "origin.topic")
                part = _header(msg, "origin.partition")
                offset = _header(msg, "origin.offset")
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


def missing_keys(
    session: Session,
    table: str,
    key_columns: tuple[str, ...],
    keys: list[tuple[object, ...]],
    *,
    concurrency: int = 64,
) -> set[tuple[object, ...]]:
    """The keys of ``keys`` that have no row in ``table`` (point reads, in parallel)."""
    if not keys:
        return set()
    where = " AND ".join(f"{c} = ?" for c in key_columns)
    stmt = session.prepare(f"SELECT {key_columns[0]} FROM {KEYSPACE}.{table} WHERE {where}")
    results = execute_concurrent_with_args(
        session, stmt, keys, concurrency=concurrency, raise_on_first_error=True
    )
    return {key for key, (ok, rows) in zip(keys, results, strict=True) if ok and not rows.one()}


def primary_keys(session: Session, tables: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Primary key columns (partition then clustering) of ``tables``, from the live schema."""
    ks = session.cluster.metadata.keyspaces.get(KEYSPACE)
    if ks is None:
        raise AuditError(f"keyspace {KEYSPACE} does not exist: run the schema_migrations DAG")
    out = {}
    for t in tables:
        if t not in ks.tables:
            raise AuditError(f"table {KEYSPACE}.{t} does not exist: run the schema_migrations DAG")
        out[t] = tuple(c.name for c in ks.tables[t].primary_key)
    return out


# -- the audit -----------------------------------------------------------------------------------


def audit(
    *,
    bootstrap: str,
    topics: Topics,
    audited: list[str],
    regions: list[str],
    sessions: Callable[[str], Session],
    start_ms: int,
    end_ms: int,
    prefix: str,
) -> AuditReport:
    """Reconcile the window [start_ms, end_ms) of the ``audited`` topics with Cassandra.

    ``sessions(region)`` returns a session whose local DC is that region, at LOCAL_QUORUM.
    """
    seen = read_window(bootstrap, audited, start_ms, end_ms)
    report = AuditReport(start_ms, end_ms, {t: TopicAudit(t) for t in audited})
    groups = [f"{prefix}-{r}" for r in regions]
    partitions = sorted({(s.topic, s.partition) for s in seen})
    committed = committed_offsets(bootstrap, groups, partitions) if partitions else {}
    origins = (
        read_dead_letter_origins(bootstrap, topics.deadletter, start_ms)
        if any(s.event is None for s in seen)
        else set()
    )

    # Valid, consumed events by region: their rows are looked up in that region's DC.
    to_check: dict[str, list[Seen]] = defaultdict(list)
    for s in seen:
        t = report.topics[s.topic]
        t.messages += 1
        t.per_partition[s.partition] = t.per_partition.get(s.partition, 0) + 1
        group = responsible_group(s, prefix, regions)
        consumed = committed.get(group, {}).get((s.topic, s.partition), -1) > s.offset
        if s.event is None:
            t.invalid += 1
            if (s.topic, s.partition, s.offset) in origins:
                t.deadlettered += 1
            elif consumed:
                t.missing += 1
                _example(
                    t.missing_examples,
                    f"invalid message {s.where} ({s.reason}) was not dead-lettered by {group}",
                )
            else:
                t.pending += 1
                _example(t.pending_examples, f"{s.where} not yet consumed by {group}")
            continue
        t.events += 1
        if consumed:
            to_check[s.event.region].append(s)
        else:
            t.pending += 1
            _example(t.pending_examples, f"{s.where} not yet consumed by {group}")

    for region, items in sorted(to_check.items()):
        session = sessions(region)
        pks = primary_keys(session, {table for table, _ in insert_columns().values()})
        wanted: dict[str, list[tuple[object, ...]]] = defaultdict(list)
        owner: dict[tuple[str, tuple[object, ...]], Seen] = {}
        for s in items:
            assert s.event is not None
            for table, key in row_keys(s.event, pks):
                wanted[table].append(key)
                owner[(table, key)] = s
        lost: dict[tuple[str, int, int], tuple[Seen, list[str]]] = {}
        for table, keys in sorted(wanted.items()):
            absent = missing_keys(session, table, pks[table], keys)
            report.rows_checked += len(keys)
            log.info("%s: %d %s rows checked, %d missing", region, len(keys), table, len(absent))
            for key in absent:
                s = owner[(table, key)]
                lost.setdefault((s.topic, s.partition, s.offset), (s, []))[1].append(table)
        for s, tables_missing in lost.values():
            assert s.event is not None
            t = report.topics[s.topic]
            t.missing += 1
            _example(
                t.missing_examples,
                f"{event_label(s.event)} at {s.where}: no row in {', '.join(tables_missing)}",
            )
    return report


def _example(examples: list[str], text: str) -> None:
    if len(examples) < EXAMPLES:
        examples.append(text)
