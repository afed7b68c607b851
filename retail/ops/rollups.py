"""The rollup repair of the ``materialized_view_rebuild`` DAG: recount every rollup bucket of a
time window from the base rows, compare with what is stored, and correct what differs.

The consumers fold events into the rollups incrementally (:mod:`retail.aggregates`); this is the
independent check and the way back from a wrong bucket (a bug, a restore, a hand edit). Its cost
follows the window, not the tables: it enumerates the window's partitions, every store of the
registry (``stores_by_region``, one partition per region of the topology) times the window's
days, and reads each once. What a bucket should hold, from the base rows alone:

* ``sales_by_store_hour`` / ``sales_by_region_day`` / ``product_sales_by_store_day``: the
  orders of the store's day partition in ``orders_by_store_day`` (lines included), summed with
  the same contributions the consumers fold (:func:`retail.aggregates.sums_of`);
* ``stock_by_store``: the definition of :func:`retail.rows.stock_level` over the store's
  movements from the latest count of the product on. Its days are read from the stored count's
  day (at most :data:`STOCK_LOOKBACK_DAYS` back); a product whose latest count is older cannot be
  checked from its recent days and is reported so.

A correction keeps the bucket's watermark and is written one above its fence: a consumer that
folds into the bucket after the repair read it writes a higher timestamp, and its state wins;
the repair never overwrites a newer state with an older one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cassandra.cluster import Session

from retail.aggregates import (
    KEY_OF,
    TABLE_OF,
    Bucket,
    BucketKey,
    HourKey,
    Stock,
    StockKey,
    bucket_from_row,
    empty,
    from_ms,
    ms,
    sums_of,
)
from retail.cassandra import run_all
from retail.errors import ConfigError
from retail.events import LineItem, Order
from retail.rows import (
    BASE,
    ROLLUP_TABLES,
    STORES_OF_REGION,
    rollup_read,
    rollup_write,
    stock_level,
)

log = logging.getLogger(__name__)

MAX_WINDOW_HOURS = 168  # a week: the repair reads every bucket of the window
STOCK_LOOKBACK_DAYS = 7
EXAMPLES = 5  # corrections quoted per table in the report

# The base rows of a store's day: the repair reads each store-day of the window once, the
# stores enumerated from the registry of each region (retail.stores_by_region).
REPAIR_QUERIES: dict[str, str] = {
    "stores": STORES_OF_REGION,
    "store_day_orders": BASE["orders_by_store_day"].read(
        ("store_id", "region", "event_time", "order_id", "currency", "total_cents", "lines")
    ),
    "store_day_movements": BASE["inventory_by_store_day"].read(
        ("event_time", "event_id", "sku", "kind", "quantity")
    ),
}


@dataclass(frozen=True)
class Window:
    """The UTC hours ``[start, end)``: the last ``hours`` hours, the current one included."""

    start: datetime
    end: datetime

    @classmethod
    def last(cls, hours: int, now: datetime | None = None) -> Window:
        if not isinstance(hours, int) or isinstance(hours, bool):
            raise ConfigError(f"window hours must be an integer, got {hours!r}")
        if not 1 <= hours <= MAX_WINDOW_HOURS:
            raise ConfigError(f"window hours must be 1..{MAX_WINDOW_HOURS}, got {hours}")
        now = (now or datetime.now(UTC)).astimezone(UTC)
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return cls(end - timedelta(hours=hours), end)

    def hours_of(self, day: date) -> list[int]:
        """The hours of ``day`` inside the window."""
        first = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return [h for h in range(24) if self.start <= first + timedelta(hours=h) < self.end]

    @property
    def days(self) -> list[date]:
        days, t = [], self.start
        while t < self.end:
            if t.date() not in days:
                days.append(t.date())
            t += timedelta(hours=1)
        return days

    def holds(self, key: BucketKey) -> bool:
        """Whether the window checks this bucket: an hour inside it, any day it touches."""
        if isinstance(key, HourKey):
            return key.hour in self.hours_of(key.day)
        if isinstance(key, StockKey):
            return True
        return key.day in self.days


@dataclass(frozen=True)
class Correction:
    table: str
    key: tuple[Any, ...]
    stored: tuple[Any, ...] | None  # None: no row
    expected: tuple[Any, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": [_plain(v) for v in self.key],
            "stored": None if self.stored is None else [_plain(v) for v in self.stored],
            "expected": [_plain(v) for v in self.expected],
        }


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _shown(key: BucketKey, bucket: Bucket) -> tuple[Any, ...]:
    """What a bucket is compared on: (count, cents, currency) or (quantity,)."""
    v = bucket.value
    if isinstance(v, Stock):
        return (v.quantity,)
    return (v.count, v.cents, v.currency if v.count else None)


def corrections(
    expected: dict[BucketKey, Bucket], stored: dict[BucketKey, Bucket]
) -> tuple[dict[str, int], list[Correction]]:
    """Compare the recounted buckets with the stored ones: (buckets checked per table, the
    corrections). A stored bucket that nothing recounts should hold zero."""
    checked = dict.fromkeys(ROLLUP_TABLES, 0)
    fixes: list[Correction] = []
    for key in sorted(set(expected) | set(stored), key=lambda k: (TABLE_OF[type(k)], k)):
        want = _shown(key, expected.get(key) or empty(key))
        have = stored.get(key)
        if have is None and not any(want[:1]):
            continue
        table = TABLE_OF[type(key)]
        checked[table] += 1
        got = None if have is None else _shown(key, have)
        if got != want:
            fixes.append(Correction(table, tuple(key), got, want))
    return checked, fixes


def corrected(expected: Bucket, stored: Bucket | None) -> Bucket:
    """The row a correction writes: the recounted values, the stored watermark (the consumers
    go on from where they were), one above the stored fence."""
    fence = 0 if stored is None else stored.fence
    watermark = {} if stored is None else dict(stored.watermark)
    return Bucket(expected.value, watermark, fence + 1)


@dataclass
class RollupReport:
    """What a window repair checked and corrected, per rollup table."""

    window: Window
    checked: dict[str, int]
    fixes: list[Correction]
    written: bool
    unchecked_stock: list[tuple[str, str]] = field(default_factory=list)

    def corrected(self, table: str) -> int:
        return sum(1 for c in self.fixes if c.table == table)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": {"start": self.window.start.isoformat(), "end": self.window.end.isoformat()},
            "written": self.written,
            "tables": {
                t: {
                    "buckets_checked": self.checked[t],
                    "buckets_corrected": self.corrected(t),
                    "examples": [c.to_dict() for c in self.fixes if c.table == t][:EXAMPLES],
                }
                for t in ROLLUP_TABLES
            },
            "stock_not_checkable": [f"{s} {k}" for s, k in self.unchecked_stock[:EXAMPLES]],
        }


# -- recounting from base rows -------------------------------------------------------------------


def _order(row: Any) -> Order:
    """An order as far as the rollups see it, from its orders_by_store_day row."""
    return Order(
        event_id="-",  # not in this table, and no bucket depends on it
        order_id=row.order_id,
        store_id=row.store_id,
        region=row.region,
        customer_id="cust-000000",
        currency=row.currency,
        lines=tuple(
            LineItem(sku=li.sku, quantity=li.quantity, unit_price_cents=li.unit_price_cents)
            for li in row.lines or ()
        ),
        total_cents=row.total_cents,
        event_time=row.event_time.replace(tzinfo=UTC),
    )


def expected_stock(rows: Iterable[Any]) -> Stock | None:
    """A product's stock from its movements since (at least) its latest count, as the latest
    count plus the deltas after it (stock_level's definition): None when the rows hold no count
    (the level then depends on older days)."""
    moves = [(r.event_time, r.event_id, r.kind, r.quantity) for r in rows]
    counts = [m for m in moves if m[2] == "absolute"]
    if not counts:
        return None
    t, event_id, _, level = max(counts, key=lambda m: (m[0], m[1]))
    total, as_of = stock_level(moves)
    assert as_of is not None
    return Stock(ms(t), event_id, level, total - level, ms(as_of))


# -- I/O -----------------------------------------------------------------------------------------


def repair_rollups(
    session: Session,
    regions: Sequence[str],
    window: Window,
    *,
    correct: bool = True,
    progress: Callable[[str], None] = log.info,
) -> RollupReport:
    """Recount every rollup bucket of ``window`` from the base rows, compare with the stored
    rows and (if ``correct``) write the corrections. Read at the session's consistency:
    give it one that sees every acknowledged write (ALL, or QUORUM when every write is)."""
    q = {name: session.prepare(cql) for name, cql in REPAIR_QUERIES.items()}
    whole = {t: session.prepare(rollup_read(t, whole_partition=True)) for t in ROLLUP_TABLES}
    stock_read = session.prepare(rollup_read("stock_by_store"))
    write = {t: session.prepare(rollup_write(t)) for t in ROLLUP_TABLES}
    days = set(window.days)

    # The window's partitions: every registered store of every region, times the window's days.
    stores = sorted(
        r.store_id
        for rows in run_all(session, [(q["stores"], (region,)) for region in regions])
        for r in rows
    )
    store_days = [(store, day) for store in stores for day in sorted(days)]
    order_reads = [(q["store_day_orders"], k) for k in store_days]
    day_orders = dict(zip(store_days, run_all(session, order_reads), strict=True))
    movements = dict(
        zip(
            store_days,
            run_all(session, [(q["store_day_movements"], k) for k in store_days]),
            strict=True,
        )
    )
    order_days = {k for k, rows in day_orders.items() if rows}
    moved_days = {k for k, rows in movements.items() if rows}
    progress(
        f"window {window.start:%Y-%m-%d %H:00} to {window.end:%Y-%m-%d %H:00} UTC: "
        f"{len(stores)} registered stores x {len(days)} days read; {len(order_days)} store-days "
        f"with sales, {len(moved_days)} with movements"
    )

    # Sales: the store days' orders, and every stored row of every store-day (a bucket where
    # nothing was sold is wrong too) and of the regions' days.
    orders = [_order(r) for k in sorted(order_days) for r in day_orders[k]]
    expected = {k: b for k, b in sums_of(orders).items() if window.holds(k)}
    stored: dict[BucketKey, Bucket] = {}
    reads: list[tuple[str, tuple[Any, ...]]] = [
        (t, k) for t in ("sales_by_store_hour", "product_sales_by_store_day") for k in store_days
    ]
    reads += [("sales_by_region_day", (region, day)) for region in regions for day in sorted(days)]
    for (table, prefix), rows in zip(
        reads, run_all(session, [(whole[t], k) for t, k in reads]), strict=True
    ):
        for r in rows:
            key = KEY_OF[table](*prefix, r[0])
            if window.holds(key):
                stored[key] = bucket_from_row(table, r)

    # Stock: the products moved in the window, from their latest count on.
    moved: dict[str, set[str]] = defaultdict(set)
    for store, day in moved_days:
        moved[store].update(r.sku for r in movements[(store, day)])
    stock_keys = [(store, sorted(skus)) for store, skus in sorted(moved.items())]
    for (store, _), rows in zip(
        stock_keys, run_all(session, [(stock_read, k) for k in stock_keys]), strict=True
    ):
        for r in rows:
            stored[StockKey(store, r[0])] = bucket_from_row("stock_by_store", r)
    # Each store's days from its oldest stored count (or its first day in the window) on, at
    # most STOCK_LOOKBACK_DAYS back: the days a recount from the latest count can need.
    today = datetime.now(UTC).date()
    first: dict[str, date] = {}
    for store, day in moved_days:
        first[store] = min(day, first.get(store, day))
    for key, bucket in stored.items():
        if isinstance(key, StockKey) and isinstance(bucket.value, Stock):
            anchor = bucket.value.count_time
            if anchor is not None and key.store_id in first:
                first[key.store_id] = min(first[key.store_id], from_ms(anchor).date())
    lookback = today - timedelta(days=STOCK_LOOKBACK_DAYS)
    spans = {store: _days(max(day, lookback), today) for store, day in first.items()}
    older = [(s, d) for s, days_ in sorted(spans.items()) for d in days_ if (s, d) not in movements]
    movements.update(
        zip(older, run_all(session, [(q["store_day_movements"], k) for k in older]), strict=True)
    )
    unchecked: list[tuple[str, str]] = []
    for store, skus in stock_keys:
        rows_of_store = [r for d in spans[store] for r in movements.get((store, d), [])]
        for sku in skus:
            level = expected_stock(r for r in rows_of_store if r.sku == sku)
            if level is None:
                unchecked.append((store, sku))
                stored.pop(StockKey(store, sku), None)
            else:
                expected[StockKey(store, sku)] = Bucket(level)
    if unchecked:
        progress(
            f"{len(unchecked)} products have no count in the last {STOCK_LOOKBACK_DAYS} days: "
            "their stock cannot be checked from recent days (e.g. "
            + ", ".join(f"{s} {k}" for s, k in unchecked[:EXAMPLES])
            + ")"
        )

    checked, fixes = corrections(expected, stored)
    for c in fixes:
        progress(f"{c.table} {c.to_dict()['key']}: stored {c.stored}, expected {c.expected}")
    if correct and fixes:
        writes = []
        for c in fixes:
            key = KEY_OF[c.table](*c.key)
            row = corrected(expected.get(key) or empty(key), stored.get(key))
            writes.append((write[c.table], (*key, *row.values(), row.watermark, row.fence)))
        run_all(session, writes)
        progress(f"wrote {len(fixes)} corrections")
    return RollupReport(window, checked, fixes, correct, unchecked)


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]
