"""Rollups folded in incrementally, exact under replay, resend, crash and a stale writer.

A consumer never recounts a bucket from its base rows. It reads the bucket's stored state and
folds in the batch's events, at a constant cost per event whatever the bucket already holds.
Four mechanisms keep that exact (DESIGN.md, "Exact aggregates"):

* **Identity.** An order or movement is its id. The id's table holds the version last written
  and the Kafka position it came from. A message is resolved against it (:func:`resolve`): the
  same position again is a *replay*; a later ``event_time`` is a *resend* that replaces the
  stored version (its contribution is taken out of its buckets, the new one's put in); the same
  or an earlier time is a *duplicate* or *stale* and changes nothing. A resend that changes what
  an id *is* (an order's store; a movement's store, SKU or kind) is a *conflict*: dead-lettered.
* **Watermark.** A bucket keeps, per Kafka partition, the offset of the last message folded into
  it. A message at or below it is skipped: a replay after a crash folds nothing twice, even when
  the crash left some buckets written and others not. Such a bucket is written again as it was
  read (:meth:`Fold.changed`): what was read may be on one replica only.
* **Fence.** A bucket's cells are written with a timestamp of the stored row's own newest write
  time plus :data:`FENCE_STEP` per message folded. Two writers folding the same partition's
  messages from the same state reach the same timestamp with the same values; the one that has
  folded more writes a higher timestamp. A consumer that lost its partitions and wakes up later
  with an older state therefore always loses to the new owner (Cassandra keeps the cell with
  the highest timestamp). The rollup repair writes one above the stored fence.
* **Order of writes.** A batch writes its buckets and the deletes of superseded rows first, then
  its base rows, then commits: an id row exists only once every bucket of that version is
  folded, and the base rows of a partition's store days hold exactly what is folded.

Stock is a level, not a sum: the latest absolute count (by time, then event id) plus the deltas
after it. A count that arrives after deltas later than itself (a *late count*) needs the deltas
after its time that are already folded; they are the store's base rows of those days, read once
(:meth:`Fold.late_count`), after the batch has been split so that everything before the count is
written. Everything here compares times at Cassandra's millisecond precision.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from retail.errors import RetailError
from retail.events import Event, InventoryMovement, Order
from retail.rows import Position, identity, rows_for, superseded_rows, utc_day

FENCE_STEP = 1000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def ms(t: datetime) -> int:
    """Milliseconds since the epoch, truncated as Cassandra stores a timestamp."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _MS


def from_ms(value: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=value)


# -- buckets ---------------------------------------------------------------------------------


class HourKey(NamedTuple):
    """sales_by_store_hour: a store's orders in one UTC hour."""

    store_id: str
    day: date
    hour: int


class DayKey(NamedTuple):
    """sales_by_region_day: a store's orders in one UTC day, in its region's day partition."""

    region: str
    day: date
    store_id: str


class ProductKey(NamedTuple):
    """product_sales_by_store_day: units of one product sold by a store in one UTC day."""

    store_id: str
    day: date
    sku: str


class StockKey(NamedTuple):
    """stock_by_store: a store's stock of one product."""

    store_id: str
    sku: str


BucketKey = HourKey | DayKey | ProductKey | StockKey

TABLE_OF: dict[type, str] = {
    HourKey: "sales_by_store_hour",
    DayKey: "sales_by_region_day",
    ProductKey: "product_sales_by_store_day",
    StockKey: "stock_by_store",
}
KEY_OF: dict[str, type] = {table: key for key, table in TABLE_OF.items()}


@dataclass(slots=True)
class Sums:
    """A sales or product bucket: how many (orders or units), how much, in which currency."""

    count: int = 0
    cents: int = 0
    currency: str | None = None


@dataclass(slots=True)
class Stock:
    """A stock bucket: the latest count (time in ms, event id, level) and the deltas after it.
    ``as_of`` is the newest movement time folded in (ms)."""

    count_time: int | None = None
    count_id: str | None = None
    count_level: int = 0
    deltas: int = 0
    as_of: int | None = None

    @property
    def quantity(self) -> int:
        return self.count_level + self.deltas


@dataclass(slots=True)
class Bucket:
    """A rollup row as stored (or empty), then as folded."""

    value: Sums | Stock
    watermark: dict[str, int] = field(default_factory=dict)
    fence: int = 0  # newest write time of the row's cells; 0 when there is no row
    folded: int = 0  # messages folded in since it was read or last written

    def values(self) -> tuple[Any, ...]:
        """The value columns, in rows.ROLLUP_VALUES order."""
        v = self.value
        if isinstance(v, Sums):
            return (v.count, v.cents, v.currency)
        return (
            v.quantity,
            None if v.as_of is None else from_ms(v.as_of),
            None if v.count_time is None else from_ms(v.count_time),
            v.count_id,
            v.count_level,
        )

    def write_timestamp(self) -> int:
        return self.fence + FENCE_STEP * self.folded


def empty(key: BucketKey) -> Bucket:
    return Bucket(Stock() if isinstance(key, StockKey) else Sums())


def bucket_from_row(table: str, r: Any) -> Bucket:
    """A Bucket from a rows.rollup_read row (value columns, watermark, WRITETIME(...) AS wt_*)."""
    fence = max((v for k, v in r._asdict().items() if k.startswith("wt_") and v), default=0)
    watermark = dict(r.watermark or {})
    if table == "stock_by_store":
        stock = Stock(
            count_time=None if r.count_time is None else ms(r.count_time),
            count_id=r.count_event_id,
            count_level=r.count_level or 0,
            as_of=None if r.as_of is None else ms(r.as_of),
        )
        stock.deltas = (r.quantity or 0) - stock.count_level
        return Bucket(stock, watermark, fence)
    count = r.order_count if table != "product_sales_by_store_day" else r.units
    return Bucket(Sums(count or 0, r.revenue_cents or 0, r.currency), watermark, fence)


# -- identity --------------------------------------------------------------------------------


class Outcome(enum.Enum):
    NEW = "new"  # first version of the id
    REPLAY = "replay"  # the stored version came from this very message
    RESEND = "resend"  # a later version: replaces the stored one
    DUPLICATE = "duplicate"  # same version as stored: nothing to do
    STALE = "stale"  # older than the stored version: nothing to do
    CONFLICT = "conflict"  # changes what the id is: dead-lettered


@dataclass(frozen=True, slots=True)
class Resolved:
    position: Position
    event: Event
    outcome: Outcome
    previous: Event | None = None  # the version a RESEND replaces
    reason: str | None = None  # why a CONFLICT is refused

    @property
    def writes(self) -> bool:
        return self.outcome in (Outcome.NEW, Outcome.REPLAY, Outcome.RESEND)


def _conflict(old: Event, new: Event) -> str | None:
    if old.store_id != new.store_id:
        what = "order" if isinstance(new, Order) else "movement"
        key = new.order_id if isinstance(new, Order) else new.event_id
        return (
            f"{what} {key} already belongs to {old.store_id}; a resend may change its time and "
            f"contents, not its store (got {new.store_id})"
        )
    if (
        isinstance(old, InventoryMovement)
        and isinstance(new, InventoryMovement)
        and (old.sku, old.kind) != (new.sku, new.kind)
    ):
        return (
            f"movement {new.event_id} is a {old.kind} of {old.sku}; a resend may change its "
            f"time and quantity, not its SKU or kind (got a {new.kind} of {new.sku})"
        )
    return None


def resolve(
    batch: Sequence[tuple[Position, Event]],
    stored: Mapping[tuple[str, str], tuple[Event, str | None]],
) -> list[Resolved]:
    """Resolve each message of a batch (in order) against the stored version of its id and the
    versions before it in the batch."""
    current = dict(stored)
    out = []
    for pos, event in batch:
        key = identity(event)
        prev = current.get(key)
        if prev is None:
            out.append(Resolved(pos, event, Outcome.NEW))
            current[key] = (event, pos.source)
            continue
        old, source = prev
        if source == pos.source:
            out.append(Resolved(pos, event, Outcome.REPLAY))
            continue
        reason = _conflict(old, event)
        if reason is not None:
            out.append(Resolved(pos, event, Outcome.CONFLICT, reason=reason))
            continue
        new_t, old_t = ms(event.event_time), ms(old.event_time)
        if new_t > old_t:
            out.append(Resolved(pos, event, Outcome.RESEND, previous=old))
            current[key] = (event, pos.source)
        else:
            out.append(Resolved(pos, event, Outcome.DUPLICATE if new_t == old_t else Outcome.STALE))
    return out


# -- effects ---------------------------------------------------------------------------------


def _order_effects(o: Order, sign: int) -> Iterable[tuple[BucketKey, tuple[Any, ...]]]:
    t = o.event_time.astimezone(UTC)
    day = t.date()
    yield HourKey(o.store_id, day, t.hour), (sign, sign * o.total_cents, o.currency)
    yield DayKey(o.region, day, o.store_id), (sign, sign * o.total_cents, o.currency)
    per_sku: dict[str, list[int]] = {}
    for li in o.lines:
        s = per_sku.setdefault(li.sku, [0, 0])
        s[0] += li.quantity
        s[1] += li.quantity * li.unit_price_cents
    for sku, (units, cents) in per_sku.items():
        yield ProductKey(o.store_id, day, sku), (sign * units, sign * cents, o.currency)


def sums_of(orders: Iterable[Order]) -> dict[BucketKey, Bucket]:
    """The sales and product buckets of a set of orders, with the contributions the fold uses
    (the rollup repair recounts with this)."""
    out: dict[BucketKey, Bucket] = {}
    for o in orders:
        for key, change in _order_effects(o, 1):
            bucket = out.get(key)
            if bucket is None:
                bucket = out[key] = empty(key)
            _apply_sums(bucket, change)
    return out


def effects(r: Resolved) -> list[tuple[BucketKey, tuple[Any, ...]]]:
    """What a resolved message does to its buckets, in order: the superseded version taken
    out, then the new one put in. Sums get (count, cents, currency); stock gets
    ("delta", time ms, event id, quantity, +1/-1) or ("count", time ms, event id, level)."""
    if not r.writes:
        return []
    out: list[tuple[BucketKey, tuple[Any, ...]]] = []
    for event, sign in ((r.previous, -1), (r.event, 1)):
        if event is None:
            continue
        if isinstance(event, Order):
            out.extend(_order_effects(event, sign))
        elif event.kind == "delta":
            key = StockKey(event.store_id, event.sku)
            out.append((key, ("delta", ms(event.event_time), event.event_id, event.quantity, sign)))
        elif sign > 0:
            # A superseded count needs no taking out: its resend is a later count of the same
            # id, which replaces it as the latest.
            key = StockKey(event.store_id, event.sku)
            out.append((key, ("count", ms(event.event_time), event.event_id, event.quantity)))
    return out


# -- the fold --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LateCount:
    """A count older than movements already folded into its bucket: the batch stops before it;
    once the messages before it are written, the deltas of ``days`` after ``after`` are read
    (rows.MOVEMENTS_SINCE) and :meth:`Fold.late_count` takes them in."""

    index: int  # of the count's message in the batch
    key: StockKey
    after: datetime
    days: tuple[date, ...]


class Fold:
    """Folds a resolved batch into its buckets, message by message.

    ``run()`` goes as far as it can: to the end (None), or to a late count it cannot settle
    from memory (the LateCount). Then write what is folded so far (the messages before
    ``LateCount.index``), call :meth:`written`, read the count's movements, pass them to
    :meth:`late_count`, and ``run()`` again.
    """

    def __init__(self, resolved: Sequence[Resolved], buckets: dict[BucketKey, Bucket]) -> None:
        self.resolved = resolved
        self.buckets = buckets
        self.next = 0  # index of the next message to fold
        # Per stock bucket: the deltas in effect that this fold knows of, and the time after
        # which it knows all of them (None: all of them). The deltas of the stored state are
        # not in memory, so at first it knows all of them only after the stored as_of.
        self._known: dict[StockKey, dict[str, tuple[int, int]]] = {}
        self._complete_after: dict[StockKey, int | None] = {}
        # Buckets read already holding a message of this batch (a replay): written again as
        # read, see changed().
        self._replayed: set[BucketKey] = set()

    def run(self) -> LateCount | None:
        while self.next < len(self.resolved):
            late = self._fold(self.resolved[self.next])
            if late is not None:
                return late
            self.next += 1
        return None

    def _fold(self, r: Resolved) -> LateCount | None:
        stream, offset = r.position.stream, r.position.offset
        steps: dict[BucketKey, list[tuple[Any, ...]]] = {}
        for key, change in effects(r):
            steps.setdefault(key, []).append(change)
        # A message moves each of its buckets once, and only past the bucket's watermark: a
        # bucket written by an earlier attempt of this batch already holds it.
        due = []
        for key, changes in steps.items():
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = empty(key)
            if offset > bucket.watermark.get(stream, -1):
                due.append((key, bucket, changes))
            else:
                self._replayed.add(key)
        for key, bucket, changes in due:
            if isinstance(key, StockKey):
                late = self._late(key, bucket, changes)
                if late is not None:
                    return late
        for key, bucket, changes in due:
            for change in changes:
                if isinstance(key, StockKey):
                    self._apply_stock(key, bucket, change)
                else:
                    _apply_sums(bucket, change)
            bucket.watermark[stream] = offset
            bucket.folded += 1
        return None

    def _stock_state(
        self, key: StockKey, bucket: Bucket
    ) -> tuple[Stock, dict[str, tuple[int, int]]]:
        stock = bucket.value
        assert isinstance(stock, Stock)
        if key not in self._known:
            self._known[key] = {}
            self._complete_after[key] = stock.as_of
        return stock, self._known[key]

    def _late(
        self, key: StockKey, bucket: Bucket, changes: list[tuple[Any, ...]]
    ) -> LateCount | None:
        stock, _ = self._stock_state(key, bucket)
        complete_after = self._complete_after[key]
        for change in changes:
            if change[0] != "count" or not _newer_count(stock, change):
                continue
            t = change[1]
            if complete_after is not None and t < complete_after:
                # Every day up to the newest movement folded, this batch's included: the read
                # replaces what the fold knows, and the messages before the count are written
                # before it (a delta of the next day folded just now is a base row by then).
                assert stock.as_of is not None  # as_of >= complete_after
                first, last = utc_day(from_ms(t)), utc_day(from_ms(stock.as_of))
                days = tuple(first + timedelta(days=n) for n in range((last - first).days + 1))
                return LateCount(self.next, key, from_ms(t), days)
        return None

    def late_count(self, rows: Iterable[Any]) -> None:
        """Take in the movements read for the pending LateCount (rows with event_time,
        event_id, sku, kind, quantity, read after everything before the count was written):
        every delta of its SKU after the count's time."""
        key, change = next((k, c) for k, c in effects(self.resolved[self.next]) if c[0] == "count")
        assert isinstance(key, StockKey)
        t = change[1]
        self._known[key] = {
            row.event_id: (ms(row.event_time), row.quantity)
            for row in rows
            if row.sku == key.sku and row.kind == "delta" and ms(row.event_time) > t
        }
        self._complete_after[key] = t

    def _apply_stock(self, key: StockKey, bucket: Bucket, change: tuple[Any, ...]) -> None:
        stock, known = self._stock_state(key, bucket)
        if change[0] == "delta":
            _, t, event_id, quantity, sign = change
            if sign > 0:
                known[event_id] = (t, quantity)
                if stock.as_of is None or t > stock.as_of:
                    stock.as_of = t
            else:
                known.pop(event_id, None)
            # A delta at or before the latest count is part of it (and was never added).
            if stock.count_time is None or t > stock.count_time:
                stock.deltas += sign * quantity
            return
        _, t, event_id, level = change
        if not _newer_count(stock, change):
            return
        stock.deltas = sum(q for tq, q in known.values() if tq > t)
        stock.count_time, stock.count_id, stock.count_level = t, event_id, level
        if stock.as_of is None or t > stock.as_of:
            stock.as_of = t

    def written(self) -> None:
        """The buckets of :meth:`changed` are written: their fences move on."""
        for bucket in self.buckets.values():
            if bucket.folded:
                bucket.fence = bucket.write_timestamp()
                bucket.folded = 0
        self._replayed.clear()

    def changed(self) -> list[tuple[BucketKey, Bucket]]:
        """The buckets to write: those folded into since they were read or last written, and
        those read already holding a message of this batch. The latter are written again as
        they were read, at their own timestamp: such a state may have been left on one replica
        only, by a write that timed out or a process that died before its quorum answered, and
        a read at LOCAL_ONE found it there. Left so, the next batch could read the other replica,
        fold from the state before, and reach the same timestamp with other values; Cassandra
        settles such a tie cell by cell and drops a message's contribution. Written again, the
        state is on the quorum before the batch's rows and commit build on it."""
        return [(k, b) for k, b in self.buckets.items() if b.folded or k in self._replayed]


def _newer_count(stock: Stock, change: tuple[Any, ...]) -> bool:
    _, t, event_id, _ = change
    return stock.count_time is None or (t, event_id) > (stock.count_time, stock.count_id or "")


def _apply_sums(bucket: Bucket, change: tuple[Any, ...]) -> None:
    sums = bucket.value
    assert isinstance(sums, Sums)
    count, cents, currency = change
    sums.count += count
    sums.cents += cents
    if count > 0 and currency:
        sums.currency = currency


# -- what a batch writes -----------------------------------------------------------------------


def base_rows(resolved: Sequence[Resolved]) -> list[tuple[str, tuple[object, ...]]]:
    """The base rows of the batch's winning versions (one per id: a version superseded inside
    the batch is not written)."""
    last: dict[tuple[str, str], Resolved] = {}
    for r in resolved:
        if r.writes:
            last[identity(r.event)] = r
    return [row for r in last.values() for row in rows_for(r.event, r.position.source)]


def deletes(resolved: Sequence[Resolved]) -> list[tuple[str, tuple[object, ...]]]:
    """The deletes of the rows every superseded version left."""
    return [
        row
        for r in resolved
        if r.outcome is Outcome.RESEND and r.previous is not None
        for row in superseded_rows(r.previous, r.event)
    ]


def bucket_keys(resolved: Iterable[Resolved]) -> set[BucketKey]:
    return {key for r in resolved for key, _ in effects(r)}


# -- one batch, end to end -------------------------------------------------------------------


class ConcurrentWriter(RetailError):
    """Another consumer wrote a bucket of this batch while it was being applied (one of the two
    lost its partitions without knowing yet). Nothing is wrong: apply the batch again from its
    start; whatever is already folded is skipped."""


class Store(Protocol):
    """Where a batch is read from and written to: Cassandra in the consumer (streaming.sink),
    dictionaries in the unit tests. Each write call returns once all of it is acknowledged and
    raises if any of it failed (some of it may then be written)."""

    def read_versions(
        self, ids: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[Event, str | None]]: ...

    def read_buckets(self, keys: Collection[BucketKey]) -> dict[BucketKey, Bucket]: ...

    def read_movements(self, late: LateCount) -> Iterable[Any]: ...

    def write_buckets(self, buckets: Sequence[tuple[BucketKey, Bucket]]) -> None: ...

    def write_deletes(self, rows: Sequence[tuple[str, tuple[object, ...]]]) -> None: ...

    def write_rows(self, rows: Sequence[tuple[str, tuple[object, ...]]]) -> None: ...


@dataclass
class Applied:
    """What a batch did: every message resolved (outcomes, conflicts to dead-letter)."""

    resolved: list[Resolved]
    rows: int = 0
    buckets: int = 0
    late_counts: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per step, for the logs

    def timed(self, step: str, started: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - started

    @classmethod
    def merge(cls, parts: Sequence[Applied]) -> Applied:
        """Parts of one batch applied side by side: their messages, their counts, and for each
        step the longest part's time."""
        out = cls([r for p in parts for r in p.resolved])
        for p in parts:
            out.rows += p.rows
            out.buckets += p.buckets
            out.late_counts += p.late_counts
            for step, seconds in p.seconds.items():
                out.seconds[step] = max(out.seconds.get(step, 0.0), seconds)
        return out

    @property
    def conflicts(self) -> list[Resolved]:
        return [r for r in self.resolved if r.outcome is Outcome.CONFLICT]


def apply_batch(store: Store, batch: Sequence[tuple[Position, Event]]) -> Applied:
    """Resolve, fold and write one batch, in the order that keeps it exact if it stops
    anywhere (see the module docstring): read the ids' stored versions, then the buckets; fold;
    write the buckets, then the deletes of superseded rows, then the base rows. A late count
    splits the batch: the part before it is written first, then its movements are read."""
    t = time.perf_counter()
    resolved = resolve(batch, store.read_versions({identity(e) for _, e in batch}))
    applied = Applied(resolved)
    applied.timed("ids", t)
    t = time.perf_counter()
    fold = Fold(resolved, store.read_buckets(bucket_keys(resolved)))
    applied.timed("buckets", t)
    start = 0
    while True:
        t = time.perf_counter()
        late = fold.run()
        end = len(resolved) if late is None else late.index
        part = resolved[start:end]
        changed = fold.changed()
        if changed:
            store.write_buckets(changed)
            fold.written()
        # After the buckets: a consumer that sees these deletes (or the rows below) when it
        # reads a late count's movements sees the buckets moved too (see read_late_count).
        superseded = deletes(part)
        if superseded:
            store.write_deletes(superseded)
        applied.timed("rollups", t)
        t = time.perf_counter()
        rows = base_rows(part)
        store.write_rows(rows)
        applied.timed("rows", t)
        applied.rows += len(rows)
        applied.buckets += len(changed)
        if late is None:
            return applied
        applied.late_counts += 1
        fold.late_count(read_late_count(store, late, fold.buckets[late.key]))
        start = end


def read_late_count(store: Store, late: LateCount, bucket: Bucket) -> list[Any]:
    """The movements a late count needs, read after everything before it is written.

    They are exact only if no other consumer has moved past the count in the meantime (a stale
    one woken up, or the new owner if this one is stale): its rows would be read as folded.
    Every consumer writes a bucket before the rows of the same messages, so the bucket read
    *after* the movements tells: unchanged, nobody had written past the count when they were
    read."""
    rows = list(store.read_movements(late))
    now = store.read_buckets([late.key]).get(late.key)
    if (now.fence if now else 0) != bucket.fence:
        raise ConcurrentWriter(
            f"stock of {late.key.store_id} {late.key.sku} was written by another consumer "
            "while this batch was applied; applying it again"
        )
    return rows
