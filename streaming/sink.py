"""The Cassandra sink: ``add`` buffers events per partition, ``flush`` writes them and always
clears the buffer, and a typed :class:`SinkBackpressureError` tells the poll loop to pause,
seek back and retry later (the quix-streams sink contract, written for Cassandra).

A flush writes every base row of the buffer concurrently (prepared, idempotent statements, a
bounded number in flight), rows of one partition grouped into small unlogged batches: Cassandra
applies a single-partition batch as one mutation, so a store's day costs one request per
``batch_rows`` rows instead of one per row. Then it recomputes the rollup buckets the buffer
touched from those base rows. It returns only when all of it is acknowledged at the configured
consistency: the caller commits the Kafka offsets after that, never before.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cassandra import OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable, Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, PreparedStatement, Statement

from retail.errors import RetailError
from retail.events import Event
from retail.metrics import Metrics
from retail.ops.rollups import RollupPlan
from retail.rows import INSERTS, ROLLUP_QUERIES, rows_for

log = logging.getLogger(__name__)

# The failures that mean "Cassandra is down or overloaded, try again later". The driver's
# default retry policy does not retry write timeouts, so they reach us and we back off.
RETRIABLE = (WriteTimeout, ReadTimeout, Unavailable, OperationTimedOut, NoHostAvailable)


class SinkError(RetailError):
    """A write failed in a way that retrying will not fix (a schema mismatch, a bug)."""


class SinkBackpressureError(RetailError):
    """Cassandra cannot take the writes now: pause, seek back, retry after ``retry_after`` s."""

    def __init__(self, retry_after: float, cause: BaseException) -> None:
        self.retry_after = retry_after
        self.cause = cause
        super().__init__(
            f"Cassandra unavailable or overloaded ({type(cause).__name__}: "
            f"{cause}); retrying in {retry_after:.1f}s"
        )


@dataclass
class FlushResult:
    """What a successful flush wrote, and the offsets that are now safe to commit."""

    events: int
    rows: int
    next_offsets: dict[tuple[str, int], int]
    event_times: list[datetime] = field(default_factory=list)
    # When the base rows were acknowledged: the events are readable from then on (the rollups
    # are recomputed right after, before the flush returns).
    written_at: datetime | None = None


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
    """Buffers decoded events per Kafka partition and writes them to Cassandra on flush."""

    def __init__(
        self,
        session: Session,
        metrics: Metrics,
        *,
        local_dc: str,
        concurrency: int = 128,
        batch_rows: int = 32,
        retry_after: float = 1.0,
    ) -> None:
        self.session = session
        self.local_dc = local_dc
        self.metrics = metrics
        self.concurrency = concurrency
        self.batch_rows = batch_rows
        self.retry_after = retry_after
        # Prepared once: no query parsing on the hot path, and token-aware routing needs the
        # partition key positions that only a prepared statement carries.
        self.inserts = {name: self._prepare(cql) for name, cql in INSERTS.items()}
        self.queries = {name: self._prepare(cql) for name, cql in ROLLUP_QUERIES.items()}
        self._buffer: dict[tuple[str, int], list[tuple[int, Event]]] = defaultdict(list)
        self._skipped: dict[tuple[str, int], int] = {}

    def _prepare(self, cql: str) -> PreparedStatement:
        stmt = self.session.prepare(cql)
        stmt.is_idempotent = True  # every write here is safe to send twice
        return stmt

    def add(self, topic: str, partition: int, offset: int, event: Event) -> None:
        """Buffer one event read at (topic, partition, offset)."""
        self._buffer[(topic, partition)].append((offset, event))

    def mark_done(self, topic: str, partition: int, offset: int) -> None:
        """Record an offset that needs no write (another region's event, a dead letter) so that
        the next flush still moves the partition's commit point past it."""
        key = (topic, partition)
        self._skipped[key] = max(self._skipped.get(key, -1), offset)

    def clear(self) -> None:
        self._buffer.clear()
        self._skipped.clear()

    def flush(self) -> FlushResult:
        """Write everything buffered; the buffer is cleared whether this succeeds or raises."""
        buffer, skipped = dict(self._buffer), dict(self._skipped)
        self.clear()
        next_offsets = {key: off + 1 for key, off in skipped.items()}
        for key, items in buffer.items():
            next_offsets[key] = max(next_offsets.get(key, 0), max(o for o, _ in items) + 1)
        events = [e for items in buffer.values() for _, e in items]
        if not events:
            return FlushResult(0, 0, next_offsets)
        rows = [(self.inserts[name], values) for e in events for name, values in rows_for(e)]
        self._run([(b, ()) for b in partition_batches(rows, self.batch_rows)], "write")
        written_at = datetime.now(UTC)
        self._recompute_rollups(events)
        return FlushResult(
            len(events), len(rows), next_offsets, [e.event_time for e in events], written_at
        )

    def _run(
        self, statements: Sequence[tuple[PreparedStatement, Sequence[object]]], what: str
    ) -> list[object]:
        """Execute concurrently (at most ``concurrency`` in flight); raise on any failure."""
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
            results = execute_concurrent(
                self.session, statements, concurrency=self.concurrency, raise_on_first_error=False
            )
        except (RecursionError, TypeError) as exc:
            raise SinkBackpressureError(self.retry_after, exc) from exc
        failures = [r for ok, r in results if not ok]
        if failures:
            first = failures[0]
            self.metrics.incr(f"sink.errors.{type(first).__name__}", len(failures))
            if isinstance(first, RETRIABLE):
                raise SinkBackpressureError(self.retry_after, first)
            raise SinkError(
                f"{len(failures)} of {len(statements)} {what}s failed; first: "
                f"{type(first).__name__}: {first}"
            ) from first
        return [r for _, r in results]

    def _recompute_rollups(self, events: Iterable[Event]) -> None:
        """Recompute every rollup bucket the events touched, in two round trips: all reads at
        once, then all writes at once (see :class:`retail.ops.rollups.RollupPlan`).

        A store's hour is recounted from its base rows. A store's day is the sum of its hours:
        the hours just recounted, plus the others as the hour table has them (exact, since one
        consumer at a time owns a store's partition and wrote them the same way).
        """
        plan = RollupPlan.for_events(events)
        reads = self._run(plan.reads(self.queries), "rollup read")
        writes = plan.recompute(reads).writes(self.queries)
        if writes:
            batches = partition_batches(writes, self.batch_rows)
            self._run([(b, ()) for b in batches], "rollup write")
