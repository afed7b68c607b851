"""The pipeline audit: reconcile what Kafka received in a window with what Cassandra holds.

The window is a range of offsets per partition of the event topics: from the first message
stamped at or after its start to the first stamped at or after its end (``offsets_for_times``).
Consecutive windows therefore meet exactly, and a message whose producer clock was wrong is
still audited, in the window its offset falls in. Every message of the range is judged by the
consumers' own rule (:func:`retail.kafka.judge`):

* a valid event of its topic's region must be stored: its row by store and day holds this
  version (``orders_by_store_day``, ``inventory_by_store_day``), or its id's table holds a later
  one (a resend replaces an earlier version everywhere);
* a message the consumers must refuse must be in the dead-letter topic, found by the
  ``origin.*`` headers the consumer puts on every dead letter: it does not decode, its region
  header or topic disagrees with its body (:func:`retail.kafka.misrouted`), it arrived unrouted,
  or it tries to move an id to another store (a conflict: :mod:`retail.aggregates`).

**Cost.** Every partition of the window is assigned at once and its messages are judged in
chunks of :data:`CHUNK`, so memory does not grow with the window. Within a chunk each touched
store-day partition is read once, with a range read bounded by the chunk's earliest and latest
event time there, and compared as a set; single rows (the id's stored version) are read only for
the events whose day row is not there, to tell a loss from a resend or a conflict and to name
it. A store's events arrive in order of their offsets, so consecutive chunks read consecutive
stretches of a store-day: the rows read stay close to the events audited.

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
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import Session
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from retail import kafka as conv
from retail.aggregates import ms
from retail.cassandra import run_all
from retail.errors import RetailError
from retail.events import Event, Order
from retail.kafka import ClientConfig, Topics
from retail.rows import BASE, BY_DAY, id_column, identity, utc_day

log = logging.getLogger(__name__)

EXAMPLES = 10  # ids shown per kind of finding

CHUNK = 5_000  # messages judged and checked at a time, per Kafka partition

# The stored version of an id: read only for events whose day row is absent.
STORED_VERSION = {t: BASE[t].read(("store_id", "event_time")) for t in BY_DAY}
# The rows of a store's day between two event times (inclusive): one range read per partition.
DAY_RANGE = {t: BASE[day].read_range(("event_time", id_column(t))) for t, day in BY_DAY.items()}


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


def group_of(topic: str, topics: Topics) -> str:
    """The group that reads ``topic``: its region's, or the catch-all's for unrouted."""
    return topics.group(topics.reader_of(topic))


def responsible_group(seen: Seen, topics: Topics) -> str:
    return group_of(seen.topic, topics)


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
    partitions_read: int = 0  # store-day range reads
    rows_read: int = 0  # rows those range reads returned
    point_reads: int = 0  # single-row reads, for events whose day row was absent

    @property
    def missing(self) -> int:
        return sum(t.missing for t in self.topics.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "partitions_read": self.partitions_read,
            "rows_read": self.rows_read,
            "point_reads": self.point_reads,
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
        return "; ".join(parts) + (
            f"; {self.partitions_read} store-day partitions read ({self.rows_read} rows), "
            f"{self.point_reads} single rows read"
        )


# -- Kafka ---------------------------------------------------------------------------------------


def _consumer(client: ClientConfig, group: str) -> Consumer:
    return Consumer(
        {
            **client,
            "group.id": group,  # never subscribed, never committed: assign() only
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )


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


@dataclass(frozen=True)
class Span:
    """The offsets ``[start, end)`` of one partition that a window covers."""

    topic: str
    partition: int
    start: int
    end: int


def read_spans(consumer: Consumer, spans: Sequence[Span], idle: float) -> Iterator[Message]:
    """The messages of every span, all partitions assigned at once (a partition read after
    another waits for a fetch each: seconds per window for nothing). A partition is paused at
    its span's end, so a live stream past the window is not fetched. Raises when nothing
    arrives for ``idle`` seconds while a span is unfinished."""
    ends = {(s.topic, s.partition): s.end for s in spans if s.end > s.start}
    if not ends:
        return
    consumer.assign(
        [TopicPartition(s.topic, s.partition, s.start) for s in spans if s.end > s.start]
    )
    last = time.monotonic()
    try:
        while ends:
            batch = consumer.consume(1000, 1.0)
            now = time.monotonic()
            if batch:
                last = now
            elif now - last > idle:
                left = ", ".join(f"{t}[{p}] to {e}" for (t, p), e in sorted(ends.items())[:5])
                raise AuditError(f"nothing read for {idle:.0f}s; still to read: {left} ...")
            for msg in batch:
                if msg.error() is not None:
                    continue  # partition EOF; a real error shows up as the idle timeout
                key = (msg.topic(), msg.partition())
                end = ends.get(key)
                if end is None or msg.offset() >= end:
                    continue  # past its span (fetched with the last batch)
                yield msg
                if msg.offset() >= end - 1:
                    del ends[key]
                    consumer.pause([TopicPartition(*key)])
    finally:
        consumer.unassign()


def window_spans(
    consumer: Consumer, audited: Sequence[str], start_ms: int, end_ms: int
) -> list[Span]:
    """Per partition of ``audited``, the offsets from the first message stamped at or after
    ``start_ms`` to the first stamped at or after ``end_ms``: consecutive windows meet exactly,
    whatever timestamps the producers put on their messages."""
    try:
        meta = consumer.list_topics(timeout=10)
    except KafkaException as exc:
        raise AuditError(f"Kafka did not answer: {exc}") from exc
    spans = []
    for topic in audited:
        if topic not in meta.topics:
            raise AuditError(f"topic {topic} does not exist; check the topic prefix")
        parts = sorted(meta.topics[topic].partitions)
        first = _offsets_at(consumer, topic, parts, start_ms, 10)
        after = _offsets_at(consumer, topic, parts, end_ms, 10)
        spans += [Span(topic, p, first[p], after[p]) for p in parts]
    return spans


def judged(messages: Iterable[Message], topics: Topics) -> Iterator[Seen]:
    """Every message, judged as the consumers judge it."""
    for msg in messages:
        topic = msg.topic() or ""
        header = conv.header(msg.headers(), conv.REGION_HEADER)
        event, reason = conv.judge(topics, topic, header, msg.value() or b"")
        yield Seen(topic, msg.partition() or 0, msg.offset() or 0, event, reason)


def chunks(items: Iterable[Seen], size: int) -> Iterator[list[Seen]]:
    chunk: list[Seen] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_dead_letters(
    client: ClientConfig, deadletter: str, since_ms: int, *, timeout: float = 120.0
) -> dict[tuple[str, int, int], str]:
    """The (topic, partition, offset) of every message dead-lettered since ``since_ms``, and
    the reason given (empty if the dead letter gives none).

    A dead letter is produced after the message it carries, so reading from the window's start
    to the end of the dead-letter topic finds every dead letter of the window's messages.
    """
    consumer = _consumer(client, conv.AUDIT_GROUP)
    origins: dict[tuple[str, int, int], str] = {}
    try:
        meta = consumer.list_topics(deadletter, timeout=10)
        parts = sorted(meta.topics[deadletter].partitions) if deadletter in meta.topics else []
        first = _offsets_at(consumer, deadletter, parts, since_ms, 10) if parts else {}
        spans = [
            Span(
                deadletter,
                p,
                first[p],
                consumer.get_watermark_offsets(TopicPartition(deadletter, p), timeout=10)[1],
            )
            for p in parts
        ]
        for msg in read_spans(consumer, spans, timeout):
            origin = conv.dead_letter_origin(msg.headers())
            if origin is not None:
                origins[origin] = conv.header(msg.headers(), conv.DLQ_REASON) or ""
    finally:
        consumer.close()
    return origins


def committed_offsets(
    client: ClientConfig, groups: list[str], partitions: list[tuple[str, int]]
) -> dict[str, dict[tuple[str, int], int]]:
    """group -> (topic, partition) -> next offset it will read (absent: nothing committed)."""
    out: dict[str, dict[tuple[str, int], int]] = {}
    for group in groups:
        c = _consumer(client, group)
        try:
            got = c.committed([TopicPartition(t, p) for t, p in partitions], timeout=10)
        except KafkaException as exc:
            raise AuditError(f"could not read the committed offsets of {group}: {exc}") from exc
        finally:
            c.close()
        out[group] = {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}
    return out


# -- Cassandra -----------------------------------------------------------------------------------


PartitionKey = tuple[str, str, object]  # (identity table, store_id, day)


def day_row_key(event: Event) -> tuple[int, str]:
    """How an event's row by store and day is told apart within its partition."""
    return ms(event.event_time), identity(event)[1]


class RegionReads:
    """The reads of one region's DC, prepared once per audit (a prepare is a round trip to
    every node)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.day_range = {t: session.prepare(q) for t, q in DAY_RANGE.items()}
        self.stored_version = {t: session.prepare(q) for t, q in STORED_VERSION.items()}

    @staticmethod
    def partitions(events: Sequence[Event]) -> dict[PartitionKey, list[int]]:
        """The store-day partitions of ``events``, each with the indexes of its events."""
        groups: dict[PartitionKey, list[int]] = defaultdict(list)
        for i, e in enumerate(events):
            groups[(identity(e)[0], e.store_id, utc_day(e.event_time))].append(i)
        return groups

    def day_rows(
        self,
        events: Sequence[Event],
        groups: dict[PartitionKey, list[int]],
        keys: list[PartitionKey],
        level: int | None = None,
    ) -> dict[PartitionKey, list[tuple[int, str]]]:
        """The rows of each partition in ``keys`` as (event time in ms, id), a row held twice
        listed twice: each partition read once, between the earliest and the latest time of
        its events in ``groups``, at ``level`` (None: the session's)."""
        statements: list[tuple[Any, tuple[object, ...]]] = []
        for table, store, day in keys:
            times = [events[i].event_time for i in groups[(table, store, day)]]
            # Cassandra keeps milliseconds: widen the bounds so truncation drops no row.
            low = min(times) - timedelta(milliseconds=1)
            high = max(times) + timedelta(milliseconds=1)
            bound = self.day_range[table].bind((store, day, low, high))
            if level is not None:
                bound.consistency_level = level
            statements.append((bound, ()))
        return {
            key: [(ms(r[0]), r[1]) for r in rows]
            for key, rows in zip(keys, run_all(self.session, statements), strict=True)
        }

    def absent_day_rows(self, events: Sequence[Event]) -> tuple[list[int], int, int]:
        """Indexes of ``events`` whose row by store and day is not stored, with the partitions
        and rows read to find out: each store-day partition is read once, between the earliest
        and the latest event time of its events.

        A first read asks one replica (``LOCAL_ONE``): a row it returns was written. Only a
        partition where something is not found is read again at the session's level
        (``LOCAL_QUORUM``, which overlaps the consumer's write quorum) before it counts as
        absent.
        """
        groups = self.partitions(events)
        rows_read = 0

        def read(keys: list[PartitionKey], level: int | None) -> dict[PartitionKey, list[int]]:
            """Per partition, the indexes of its events whose row was not returned."""
            nonlocal rows_read
            out = {}
            for key, rows in self.day_rows(events, groups, keys, level).items():
                rows_read += len(rows)
                stored = set(rows)
                out[key] = [i for i in groups[key] if day_row_key(events[i]) not in stored]
            return out

        keys = sorted(groups, key=str)
        doubtful = [k for k, lacking in read(keys, ConsistencyLevel.LOCAL_ONE).items() if lacking]
        absent = [i for lacking in read(doubtful, None).values() for i in lacking]
        return sorted(absent), len(keys) + len(doubtful), rows_read

    def stored_versions(self, events: Sequence[Event]) -> list[tuple[str, object] | None]:
        """Per event, the stored version of its id: (store_id, event_time), or None."""
        statements = [(self.stored_version[identity(e)[0]], (identity(e)[1],)) for e in events]
        return [
            (rows[0].store_id, rows[0].event_time) if rows else None
            for rows in run_all(self.session, statements)
        ]


# -- the audit -----------------------------------------------------------------------------------


def audit(
    *,
    client: ClientConfig,
    topics: Topics,
    audited: list[str],
    sessions: Callable[[str], Session],
    start_ms: int,
    end_ms: int,
    chunk: int = CHUNK,
    timeout: float = 120.0,
    progress: Callable[[str], None] = log.info,
) -> AuditReport:
    """Reconcile the window [start_ms, end_ms) of the ``audited`` topics with Cassandra.

    ``client`` is the librdkafka config that reaches Kafka (credentials and TLS included);
    ``sessions(region)`` returns a session whose local DC is that region, at LOCAL_QUORUM.
    """
    report = AuditReport(start_ms, end_ms, {t: TopicAudit(t) for t in audited})
    consumer = _consumer(client, conv.AUDIT_GROUP)
    try:
        spans = [s for s in window_spans(consumer, audited, start_ms, end_ms) if s.end > s.start]
        total = sum(s.end - s.start for s in spans)
        progress(f"{total} messages in {len(spans)} partitions of {len(audited)} topics")
        groups = sorted({group_of(s.topic, topics) for s in spans})
        parts = sorted({(s.topic, s.partition) for s in spans})
        committed = committed_offsets(client, groups, parts) if parts else {}
        origins = read_dead_letters(client, topics.deadletter, start_ms)
        prepared: dict[str, RegionReads] = {}

        def reads(region: str) -> RegionReads:
            if region not in prepared:
                prepared[region] = RegionReads(sessions(region))
            return prepared[region]

        done = 0
        for batch in chunks(judged(read_spans(consumer, spans, timeout), topics), chunk):
            _check(batch, report, topics, reads, committed, origins)
            done += len(batch)
            progress(f"{done}/{total} messages checked, {report.missing} lost so far")
    finally:
        consumer.close()
    return report


def _check(
    batch: list[Seen],
    report: AuditReport,
    topics: Topics,
    reads: Callable[[str], RegionReads],
    committed: dict[str, dict[tuple[str, int], int]],
    origins: Container[tuple[str, int, int]],
) -> None:
    """Judge one chunk of a partition's messages and look up its consumed events."""

    def lost(s: Seen, text: str) -> None:
        t = report.topics[s.topic]
        t.missing += 1
        _example(t.missing_examples, text)

    def conflict(s: Seen, e: Event, table: str) -> None:
        # It tried to move the id to another store: the consumer dead-letters it.
        if (s.topic, s.partition, s.offset) in origins:
            report.topics[s.topic].deadlettered += 1
        else:
            lost(s, f"{event_label(e)} at {s.where} conflicts with {table}, not dead-lettered")

    to_check: dict[str, list[Seen]] = defaultdict(list)
    for s in batch:
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
        region_reads = reads(region)
        events = [s.event for s in items if s.event is not None]
        absent, partitions, rows = region_reads.absent_day_rows(events)
        report.partitions_read += partitions
        report.rows_read += rows
        if not absent:
            continue
        # Only the events without their day row: is it lost, replaced, or a conflict?
        versions = region_reads.stored_versions([events[i] for i in absent])
        report.point_reads += len(absent)
        for i, version in zip(absent, versions, strict=True):
            s, e = items[i], events[i]
            table = identity(e)[0]
            if version is None:
                lost(s, f"{event_label(e)} at {s.where}: no row in {table}")
            elif version[0] != e.store_id:
                conflict(s, e, table)
            elif ms(version[1]) < ms(e.event_time):  # type: ignore[arg-type]
                lost(s, f"{event_label(e)} at {s.where}: {table} holds an older version")
            elif ms(version[1]) == ms(e.event_time):  # type: ignore[arg-type]
                lost(s, f"{event_label(e)} at {s.where}: no row in {BY_DAY[table]}")
            # else: a later version replaced it, which is what a resend does


def _example(examples: list[str], text: str) -> None:
    if len(examples) < EXAMPLES:
        examples.append(text)
