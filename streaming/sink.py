"""The Cassandra sink: writes one batch of decoded events, rollups folded in, and returns only
when all of it is acknowledged at the session's consistency; the caller commits the Kafka
offsets after that, never before. A typed :class:`SinkBackpressureError` tells the poll loop to
pause, keep what it has polled, and retry later (the quix-streams sink contract, written for
Cassandra).

What a batch does, and why in this order, is :func:`retail.aggregates.apply_batch`; this module
is its :class:`~retail.aggregates.Store` on Cassandra, at a constant cost per event:

* the stored versions of the batch's ids: one ``IN`` read per replica and 100 ids;
* the rollup buckets it touches: one read per rollup partition (``IN`` on the last key column);
* writes: prepared idempotent statements, at most ``concurrency`` in flight, the rows of one
  partition grouped into small unlogged batches (Cassandra applies a single-partition batch as
  one mutation), routed token-aware to a replica in the local DC.

No read grows with what a bucket, a store or a product already holds. A batch's Kafka
partitions are split into ``parallelism`` groups applied side by side: a store's events, ids and
buckets all belong to one partition, so the groups share nothing, and each one's round trips
overlap the others' instead of leaving Cassandra idle.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cassandra import InvalidRequest, OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable, Session
from cassandra.query import (
    BatchStatement,
    BatchType,
    BoundStatement,
    PreparedStatement,
    Statement,
)

from retail.aggregates import (
    KEY_OF,
    TABLE_OF,
    Applied,
    Bucket,
    BucketKey,
    ConcurrentWriter,
    LateCount,
    apply_batch,
    bucket_from_row,
)
from retail.cassandra import StatementsFailed, consistency, run_all
from retail.errors import RetailError
from retail.events import Event
from retail.metrics import Metrics
from retail.rows import (
    DELETES,
    IDENTITY_READS,
    INSERTS,
    KEYSPACE,
    MOVEMENTS_SINCE,
    REGISTER_STORE,
    ROLLUP_KEYS,
    Position,
    event_from_row,
    rollup_read,
    rollup_write,
)

log = logging.getLogger(__name__)

# The failures that mean "Cassandra is down or overloaded, try again later". The driver's
# default retry policy does not retry write timeouts, so they reach us and we back off.
RETRIABLE = (WriteTimeout, ReadTimeout, Unavailable, OperationTimedOut, NoHostAvailable)
IN_CHUNK = 100  # keys per IN read: one request, a bounded response

Rows = Sequence[tuple[str, tuple[object, ...]]]


# The failures that mean the cluster has more in flight than it can answer in time.
TIMEOUTS = (WriteTimeout, ReadTimeout, OperationTimedOut)


class InFlightLimit:
    """How many requests a group keeps in flight: halved on timeouts (down to 1), so that an
    overloaded cluster gets a retry it can answer instead of the same flood again, and raised
    back by an eighth of the maximum after each batch written (additive increase,
    multiplicative decrease, as TCP does)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.value = self.maximum

    def overloaded(self) -> bool:
        """Halve the limit; True if it went down."""
        before, self.value = self.value, max(1, self.value // 2)
        return self.value < before

    def succeeded(self) -> None:
        self.value = min(self.maximum, self.value + max(1, self.maximum // 8))


class SinkError(RetailError):
    """A write failed in a way that retrying will not fix (a schema mismatch, a bug)."""


class SinkBackpressureError(RetailError):
    """Cassandra cannot take the writes now: pause, keep the batch, retry after ``retry_after``
    seconds."""

    def __init__(self, retry_after: float, cause: BaseException) -> None:
        self.retry_after = retry_after
        self.cause = cause
        super().__init__(
            f"Cassandra unavailable or overloaded ({type(cause).__name__}: "
            f"{cause}); retrying in {retry_after:.1f}s"
        )


def partition_batches(
    rows: Sequence[tuple[PreparedStatement, Sequence[object]]], batch_rows: int
) -> list[Statement]:
    """Group rows by table and partition key into unlogged batches of at most ``batch_rows``
    rows. One partition per batch: no coordinator fans a batch out over replicas, and
    token-aware routing still sends it straight to a replica."""
    groups: dict[tuple[object, ...], list[tuple[PreparedStatement, Sequence[object]]]] = {}
    for stmt, values in rows:
        key = (stmt.query_id, *(values[i] for i in stmt.routing_key_indexes))
        groups.setdefault(key, []).append((stmt, values))
    batches: list[Statement] = []
    for group in groups.values():
        for start in range(0, len(group), batch_rows):
            chunk = group[start : start + batch_rows]
            if len(chunk) == 1:
                batches.append(chunk[0][0].bind(chunk[0][1]))
                continue
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for stmt, values in chunk:
                batch.add(stmt, values)
            batch.is_idempotent = True
            batches.append(batch)
    return batches


class CassandraSink:
    """Writes batches of events into the local DC (:meth:`write`)."""

    def __init__(
        self,
        session: Session,
        metrics: Metrics,
        *,
        local_dc: str,
        concurrency: int = 128,
        batch_rows: int = 32,
        parallelism: int = 3,
        read_level: str | None = None,
        retry_after: float = 1.0,
    ) -> None:
        self.session = session
        self.local_dc = local_dc
        self.metrics = metrics
        self.parallelism = max(1, parallelism)
        self.in_flight = InFlightLimit(concurrency // self.parallelism)  # per group
        self.batch_rows = batch_rows
        self.retry_after = retry_after
        # Prepared once: no query parsing on the hot path, and token-aware routing needs the
        # partition key positions that only a prepared statement carries.
        self.inserts = {t: self._prepare(cql) for t, cql in INSERTS.items()}
        self.deletes = {t: self._prepare(cql) for t, cql in DELETES.items()}
        # Reads need only overlap the writes' quorum (read_level_for): with two replicas per DC
        # one replica answers instead of two.
        read = None if read_level is None else consistency(read_level)
        self.identity = {t: self._prepare(cql, read) for t, cql in IDENTITY_READS.items()}
        self.rollup_reads = {t: self._prepare(rollup_read(t), read) for t in ROLLUP_KEYS}
        self.rollup_writes = {t: self._prepare(rollup_write(t)) for t in ROLLUP_KEYS}
        self.movements_since = self._prepare(MOVEMENTS_SINCE, read)
        self.register_store = self._prepare(REGISTER_STORE)
        self.registered: set[tuple[str, str]] = set()  # (region, store) written by this process
        self._groups = ThreadPoolExecutor(self.parallelism, thread_name_prefix="sink")

    def _prepare(self, cql: str, level: int | None = None) -> PreparedStatement:
        stmt = self.session.prepare(cql)
        stmt.is_idempotent = True  # every statement here is safe to send twice
        if level is not None:
            stmt.consistency_level = level
        return stmt

    def write(self, batch: Sequence[tuple[Position, Event]]) -> Applied:
        """Write one batch (messages in offset order per partition): rows, deletes and rollups.
        Raises SinkBackpressureError when a retry later can succeed, SinkError when not (when
        a group fails, the others may be written: the retry skips what they wrote)."""
        groups: dict[int, list[tuple[Position, Event]]] = defaultdict(list)
        for position, event in batch:
            groups[position.partition % self.parallelism].append((position, event))
        if len(groups) <= 1:
            applied = self._apply(batch)
        else:
            futures = [self._groups.submit(self._apply, group) for group in groups.values()]
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                fatal = [e for e in errors if not isinstance(e, SinkBackpressureError)]
                raise (fatal or errors)[0]  # type: ignore[misc]
            applied = Applied.merge([f.result() for f in futures])
        self.in_flight.succeeded()
        return applied

    def _apply(self, batch: Sequence[tuple[Position, Event]]) -> Applied:
        try:
            self._register_stores(batch)
            return apply_batch(self, batch)
        except ConcurrentWriter as exc:
            # A consumer that lost these partitions is still writing: retry at once, the
            # batch's folded part is skipped by the watermarks.
            self.metrics.incr("sink.concurrent_writer")
            raise SinkBackpressureError(0.0, exc) from exc

    def _register_stores(self, batch: Sequence[tuple[Position, Event]]) -> None:
        """Register the batch's stores this process has not registered yet, before any of their
        rows: the rollup repair finds a window's store-days through the registry."""
        new = {(e.region, e.store_id) for _, e in batch} - self.registered
        if new:
            self._run([(self.register_store, store) for store in sorted(new)], "store registry")
            self.registered |= new

    # -- the Store of retail.aggregates ---------------------------------------------------------

    def read_versions(
        self, ids: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[Event, str | None]]:
        by_table: dict[str, list[str]] = defaultdict(list)
        for table, id_ in ids:
            by_table[table].append(id_)
        statements = []
        tables = []
        for table, values in by_table.items():
            for chunk in self._by_replica(values):
                # Routed to a replica of the first id (the group's replicas hold them all).
                bound = BoundStatement(self.identity[table], routing_key=chunk[0].encode())
                statements.append((bound.bind((chunk,)), ()))
                tables.append(table)
        out: dict[tuple[str, str], tuple[Event, str | None]] = {}
        for table, rows in zip(tables, self._run(statements, "identity read"), strict=True):
            for row in rows:
                event, source = event_from_row(table, row)
                out[(table, row[0])] = (event, source)
        return out

    def _by_replica(self, ids: list[str]) -> list[list[str]]:
        """Ids grouped by their replicas in the local DC, in chunks of IN_CHUNK: each IN read
        goes to a node that holds every one of its partitions."""
        meta = self.session.cluster.metadata
        groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for id_ in ids:
            replicas = meta.get_replicas(KEYSPACE, id_.encode())
            local = tuple(sorted(h.address for h in replicas if h.datacenter == self.local_dc))
            groups[local].append(id_)
        return [g[i : i + IN_CHUNK] for g in groups.values() for i in range(0, len(g), IN_CHUNK)]

    def read_buckets(self, keys: Collection[BucketKey]) -> dict[BucketKey, Bucket]:
        partitions: dict[tuple[str, tuple[Any, ...]], list[Any]] = defaultdict(list)
        for key in keys:
            partitions[(TABLE_OF[type(key)], tuple(key[:-1]))].append(key[-1])
        statements = []
        reads = []
        for (table, prefix), last in partitions.items():
            for i in range(0, len(last), IN_CHUNK):
                statements.append((self.rollup_reads[table], (*prefix, last[i : i + IN_CHUNK])))
                reads.append((table, prefix))
        out: dict[BucketKey, Bucket] = {}
        for (table, prefix), rows in zip(reads, self._run(statements, "rollup read"), strict=True):
            key_type = KEY_OF[table]
            for row in rows:
                out[key_type(*prefix, row[0])] = bucket_from_row(table, row)
        return out

    def read_movements(self, late: LateCount) -> Iterable[Any]:
        statements = [
            (self.movements_since, (late.key.store_id, day, late.after)) for day in late.days
        ]
        return [row for rows in self._run(statements, "late count read") for row in rows]

    def write_buckets(self, buckets: Sequence[tuple[BucketKey, Bucket]]) -> None:
        rows = [
            (
                self.rollup_writes[TABLE_OF[type(key)]],
                (*key, *bucket.values(), bucket.watermark, bucket.write_timestamp()),
            )
            for key, bucket in buckets
        ]
        self._write(rows, "rollup write")

    def write_deletes(self, rows: Rows) -> None:
        self._write([(self.deletes[table], values) for table, values in rows], "delete")

    def write_rows(self, rows: Rows) -> None:
        self._write([(self.inserts[table], values) for table, values in rows], "write")

    # -- execution ----------------------------------------------------------------------------

    def _write(self, rows: Sequence[tuple[PreparedStatement, Sequence[object]]], what: str) -> None:
        if rows:
            self._run([(b, ()) for b in partition_batches(rows, self.batch_rows)], what)

    def _run(
        self, statements: Sequence[tuple[Any, Sequence[object]]], what: str
    ) -> list[list[Any]]:
        """Execute concurrently (at most :attr:`in_flight` per group); raise on any failure."""
        if not statements:
            return []
        # With no coordinator up, every request fails at once, inside the driver's callback
        # chain: execute_concurrent then recurses per statement and dies sorting the errors
        # (RecursionError, TypeError). Asking the driver's own view of the hosts first avoids
        # that, and the except below keeps the same outcome if the view is a moment behind.
        if not any(
            h.is_up and h.datacenter == self.local_dc
            for h in self.session.cluster.metadata.all_hosts()
        ):
            raise SinkBackpressureError(
                self.retry_after, NoHostAvailable(f"no node of {self.local_dc} is up", {})
            )
        try:
            # Every statement is tried: the failures are counted, and the retry of the batch
            # redoes only what the writes' idempotency makes harmless anyway.
            return run_all(
                self.session, statements, self.in_flight.value, stop_on_first_error=False
            )
        except (RecursionError, TypeError) as exc:
            raise SinkBackpressureError(self.retry_after, exc) from exc
        except StatementsFailed as failed:
            first = failed.first
            self.metrics.incr(f"sink.errors.{type(first).__name__}", len(failed.failures))
            if isinstance(first, TIMEOUTS) and self.in_flight.overloaded():
                log.warning(
                    "Cassandra timed out: at most %d requests in flight per group from now on",
                    self.in_flight.value,
                )
            if isinstance(first, RETRIABLE):
                raise SinkBackpressureError(self.retry_after, first) from None
            hint = ""
            if isinstance(first, InvalidRequest) and "unconfigured table" in str(first):
                hint = "; the schema is not migrated: run `retail migrate`"
            raise SinkError(
                f"{len(failed.failures)} of {len(statements)} {what}s failed; first: "
                f"{type(first).__name__}: {first}{hint}"
            ) from first
