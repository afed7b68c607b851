"""The application-maintained rollups, recomputed from the base rows: one implementation for the
consumer's sink (the buckets a batch touched) and for the rollup repair of the
``materialized_view_rebuild`` DAG (every bucket of a time window, compared with what is stored).

What a bucket holds:

- ``sales_by_store_hour``: a store's orders of one UTC hour, recounted from
  ``orders_by_store_day`` (``totals``);
- ``sales_by_region_day``: a store's day, the sum of its hours: the hours just recounted plus the
  others as the hour table has them;
- ``stock_by_store``: a product's level in a store from all its movements (``stock_level``).

The arithmetic lives in :mod:`retail.rows`; this module decides which rows to read and what to
write from them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import PreparedStatement

from retail.errors import ConfigError
from retail.events import Event, InventoryMovement, Order
from retail.rows import KEYSPACE, ROLLUP_QUERIES, HourBucket, hour_bucket, stock_level, totals

log = logging.getLogger(__name__)

ROLLUP_TABLES = ("sales_by_store_hour", "sales_by_region_day", "stock_by_store")
MAX_WINDOW_HOURS = 168  # a week: the repair reads every bucket of the window
EXAMPLES = 5  # corrections quoted per table in the report

Totals = tuple[int, int, "str | None"]
Statements = list[tuple[PreparedStatement, Sequence[object]]]


@dataclass(frozen=True)
class Recomputed:
    """The rollup rows as the base rows say they should be."""

    hours: dict[HourBucket, Totals]  # recounted from orders_by_store_day
    stored_hours: dict[tuple[str, date], dict[int, Totals]]  # the hour table, as read
    days: dict[tuple[str, date, str], Totals]  # (region, day, store) -> the store's day
    stock: dict[tuple[str, str], tuple[int, datetime | None]]  # (store, sku) -> level, as_of

    def writes(self, q: dict[str, PreparedStatement]) -> Statements:
        """Every row overwritten with its recomputed value (what the sink does after a flush)."""
        writes: Statements = [
            (q["write_store_hour"], (b.store_id, b.day, b.hour, *t)) for b, t in self.hours.items()
        ]
        writes += [
            (q["write_region_day"], (region, day, store, *t))
            for (region, day, store), t in self.days.items()
        ]
        writes += [
            (q["write_stock"], (store, sku, level, as_of or datetime.now(UTC)))
            for (store, sku), (level, as_of) in self.stock.items()
        ]
        return writes


@dataclass(frozen=True)
class RollupPlan:
    """The buckets to recompute and the reads that recompute them (in one round trip)."""

    hours: tuple[HourBucket, ...]
    days: dict[tuple[str, date], str]  # (store, day) -> region
    skus: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, hours: Iterable[HourBucket], skus: Iterable[tuple[str, str]]) -> RollupPlan:
        hour_list = tuple(sorted(set(hours)))
        days = {(b.store_id, b.day): b.region for b in hour_list}
        return cls(hour_list, dict(sorted(days.items())), tuple(sorted(set(skus))))

    @classmethod
    def for_events(cls, events: Iterable[Event]) -> RollupPlan:
        """The buckets a batch of events touched."""
        hours: set[HourBucket] = set()
        skus: set[tuple[str, str]] = set()
        for e in events:
            if isinstance(e, Order):
                hours.add(hour_bucket(e))
            elif isinstance(e, InventoryMovement):
                skus.add((e.store_id, e.sku))
        return cls.of(hours, skus)

    def reads(self, q: dict[str, PreparedStatement]) -> Statements:
        return (
            [(q["orders_in_hour"], (b.store_id, b.day, b.start, b.end)) for b in self.hours]
            + [(q["store_hours"], key) for key in self.days]
            + [(q["sku_movements"], key) for key in self.skus]
        )

    def recompute(self, results: Sequence[Iterable[Any]]) -> Recomputed:
        """The rollup rows from the results of :meth:`reads`, in the same order."""
        n_hours, n_days = len(self.hours), len(self.days)
        hour_reads = results[:n_hours]
        day_reads = results[n_hours : n_hours + n_days]
        sku_reads = results[n_hours + n_days :]

        hours: dict[HourBucket, Totals] = {}
        fresh: dict[tuple[str, date], dict[int, Totals]] = {}
        for bucket, rows in zip(self.hours, hour_reads, strict=True):
            t = totals((1, r.total_cents, r.currency) for r in rows)
            hours[bucket] = t
            fresh.setdefault((bucket.store_id, bucket.day), {})[bucket.hour] = t
        stored_hours: dict[tuple[str, date], dict[int, Totals]] = {}
        days: dict[tuple[str, date, str], Totals] = {}
        for (key, region), rows in zip(self.days.items(), day_reads, strict=True):
            stored = {r.hour: (r.order_count, r.revenue_cents, r.currency) for r in rows}
            stored_hours[key] = stored
            recounted = fresh[key]
            others = [t for hour, t in stored.items() if hour not in recounted]
            store_id, day = key
            days[(region, day, store_id)] = totals([*others, *recounted.values()])
        stock = {
            key: stock_level((r.event_time, r.event_id, r.kind, r.quantity) for r in rows)
            for key, rows in zip(self.skus, sku_reads, strict=True)
        }
        return Recomputed(hours, stored_hours, days, stock)


# -- the window repair (the DAG) ---------------------------------------------------------------

# Reads that find the buckets of a window and what the rollup tables hold for them. DISTINCT
# over partition keys reads one entry per partition (a store's day), not the rows.
REPAIR_QUERIES: dict[str, str] = {
    "order_days": f"SELECT DISTINCT store_id, day FROM {KEYSPACE}.orders_by_store_day",
    "hour_days": f"SELECT DISTINCT store_id, day FROM {KEYSPACE}.sales_by_store_hour",
    "inventory_days": f"SELECT DISTINCT store_id, day FROM {KEYSPACE}.inventory_by_store_day",
    "store_region": (
        f"SELECT region FROM {KEYSPACE}.orders_by_store_day WHERE store_id = ? AND day = ? LIMIT 1"
    ),
    "region_day": (
        f"SELECT store_id, order_count, revenue_cents, currency FROM {KEYSPACE}."
        "sales_by_region_day WHERE region = ? AND day = ?"
    ),
    "moved_skus": (
        f"SELECT sku FROM {KEYSPACE}.inventory_by_store_day WHERE store_id = ? AND day = ? "
        "AND event_time >= ? AND event_time < ?"
    ),
    "store_stock": f"SELECT sku, quantity, as_of FROM {KEYSPACE}.stock_by_store WHERE store_id = ?",
}

# Corrections carry the time the repair started as their write timestamp: a consumer that
# recomputes the same bucket after that moment read newer base rows, and its write must win.
CORRECTIONS: dict[str, str] = {
    "write_store_hour": ROLLUP_QUERIES["write_store_hour"] + " USING TIMESTAMP ?",
    "write_region_day": ROLLUP_QUERIES["write_region_day"] + " USING TIMESTAMP ?",
    "write_stock": ROLLUP_QUERIES["write_stock"] + " USING TIMESTAMP ?",
    "delete_store_hour": (
        f"DELETE FROM {KEYSPACE}.sales_by_store_hour USING TIMESTAMP ? "
        "WHERE store_id = ? AND day = ? AND hour = ?"
    ),
    "delete_region_day": (
        f"DELETE FROM {KEYSPACE}.sales_by_region_day USING TIMESTAMP ? "
        "WHERE region = ? AND day = ? AND store_id = ?"
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


@dataclass(frozen=True)
class Correction:
    table: str
    key: tuple[Any, ...]
    stored: tuple[Any, ...] | None  # None: no row
    expected: tuple[Any, ...] | None  # None: the row should not exist

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": [_plain(v) for v in self.key],
            "stored": None if self.stored is None else [_plain(v) for v in self.stored],
            "expected": None if self.expected is None else [_plain(v) for v in self.expected],
        }


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _naive(t: datetime | None) -> datetime | None:
    # The driver reads timestamps back as naive UTC; compare like with like.
    return t.astimezone(UTC).replace(tzinfo=None) if t is not None and t.tzinfo else t


def corrections(
    recomputed: Recomputed,
    stored_days: dict[tuple[str, date, str], Totals],
    stored_stock: dict[tuple[str, str], tuple[int, datetime | None]],
) -> tuple[dict[str, int], list[Correction]]:
    """Compare recomputed rollups with the stored rows: (buckets checked per table, the rows to
    correct). An empty recount with a stored row means the row should not exist."""
    checked = dict.fromkeys(ROLLUP_TABLES, 0)
    fixes: list[Correction] = []

    def compare(table: str, key: tuple[Any, ...], stored: Any, expected: Any) -> None:
        if stored is None and expected is None:
            return
        checked[table] += 1
        if stored != expected:
            fixes.append(Correction(table, key, stored, expected))

    for b, t in recomputed.hours.items():
        stored = recomputed.stored_hours.get((b.store_id, b.day), {}).get(b.hour)
        compare("sales_by_store_hour", (b.store_id, b.day, b.hour), stored, t if t[0] else None)
    day_keys = sorted(set(recomputed.days) | set(stored_days))
    for key in day_keys:
        t = recomputed.days.get(key)
        compare("sales_by_region_day", key, stored_days.get(key), t if t and t[0] else None)
    for key, (level, as_of) in recomputed.stock.items():
        stored_row = stored_stock.get(key)
        stored = None if stored_row is None else (stored_row[0], _naive(stored_row[1]))
        expected = None if as_of is None else (level, _naive(as_of))
        compare("stock_by_store", key, stored, expected)
    return checked, fixes


def correction_writes(
    fixes: Iterable[Correction], q: dict[str, PreparedStatement], timestamp: int
) -> Statements:
    writes: Statements = []
    for c in fixes:
        if c.table == "sales_by_store_hour":
            if c.expected is None:
                writes.append((q["delete_store_hour"], (timestamp, *c.key)))
            else:
                writes.append((q["write_store_hour"], (*c.key, *c.expected, timestamp)))
        elif c.table == "sales_by_region_day":
            if c.expected is None:
                writes.append((q["delete_region_day"], (timestamp, *c.key)))
            else:
                writes.append((q["write_region_day"], (*c.key, *c.expected, timestamp)))
        elif c.expected is not None:  # stock: a product with movements always has a level
            writes.append((q["write_stock"], (*c.key, *c.expected, timestamp)))
    return writes


@dataclass
class RollupReport:
    """What a window repair checked and corrected, per rollup table."""

    window: Window
    checked: dict[str, int]
    fixes: list[Correction]
    written: bool
    unknown_region: list[tuple[str, date]] = field(default_factory=list)

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
        }


def _run(session: Session, statements: Statements, timeout: float = 60) -> list[list[Any]]:
    """Execute concurrently and return every result's rows; the first failure raises (the
    driver's own error: Unavailable or a timeout means retry later)."""
    if not statements:
        return []
    results = execute_concurrent(
        session, statements, concurrency=64, raise_on_first_error=True, results_generator=False
    )
    return [list(r) for _, r in results]


def repair_rollups(
    session: Session,
    regions: Sequence[str],
    window: Window,
    *,
    write: bool = True,
    progress: Callable[[str], None] = log.info,
) -> RollupReport:
    """Recompute every rollup bucket of ``window`` from the base rows, compare with the stored
    rows and (if ``write``) overwrite the ones that differ. Read at the session's consistency:
    give it one that sees every acknowledged write (ALL, or QUORUM when every write is)."""
    started = int(datetime.now(UTC).timestamp() * 1_000_000)
    prepare = {**ROLLUP_QUERIES, **REPAIR_QUERIES, **CORRECTIONS}
    q = {name: session.prepare(cql) for name, cql in prepare.items()}
    days = set(window.days)

    def store_days(name: str) -> set[tuple[str, date]]:
        rows = session.execute(q[name].bind(()), timeout=120)
        return {(r.store_id, r.day.date()) for r in rows if r.day.date() in days}

    order_days, hour_days = store_days("order_days"), store_days("hour_days")
    inventory_days = store_days("inventory_days")
    region_days = [(region, day) for region in regions for day in sorted(days)]
    stored_days: dict[tuple[str, date, str], Totals] = {}
    region_of: dict[tuple[str, date], str] = {}
    for (region, day), rows in zip(
        region_days, _run(session, [(q["region_day"], key) for key in region_days]), strict=True
    ):
        for r in rows:
            stored_days[(region, day, r.store_id)] = (r.order_count, r.revenue_cents, r.currency)
            region_of[(r.store_id, day)] = region
    base_days = sorted(order_days)
    for key, rows in zip(
        base_days, _run(session, [(q["store_region"], k) for k in base_days]), strict=True
    ):
        if rows:
            region_of[key] = rows[0].region
    unknown = sorted(k for k in order_days | hour_days if k not in region_of)
    for store_id, day in unknown:
        progress(f"{store_id} {day}: hour rows but no orders and no region row; skipping its day")
    hours = [
        HourBucket(store_id, region_of[(store_id, day)], day, hour)
        for store_id, day in sorted(order_days | hour_days)
        if (store_id, day) in region_of
        for hour in window.hours_of(day)
    ]
    inv = sorted(inventory_days)
    moved = _run(
        session,
        [
            (
                q["moved_skus"],
                (s, d, max(window.start, _midnight(d)), min(window.end, _midnight(d, 1))),
            )
            for s, d in inv
        ],
    )
    skus = {(store_id, r.sku) for (store_id, _), rows in zip(inv, moved, strict=True) for r in rows}
    plan = RollupPlan.of(hours, skus)
    progress(
        f"window {window.start:%Y-%m-%d %H:00} to {window.end:%Y-%m-%d %H:00} UTC: "
        f"{len({(b.store_id, b.day) for b in plan.hours})} store-days, "
        f"{len(plan.hours)} store-hours, {len(plan.skus)} products with movements"
    )
    recomputed = plan.recompute(_run(session, plan.reads(q)))
    stores = sorted({store for store, _ in plan.skus})
    stored_stock: dict[tuple[str, str], tuple[int, datetime | None]] = {}
    for store, rows in zip(
        stores, _run(session, [(q["store_stock"], (s,)) for s in stores]), strict=True
    ):
        for r in rows:
            if (store, r.sku) in skus:
                stored_stock[(store, r.sku)] = (r.quantity, r.as_of)
    checked, fixes = corrections(recomputed, stored_days, stored_stock)
    for c in fixes:
        progress(f"{c.table} {c.to_dict()['key']}: stored {c.stored}, expected {c.expected}")
    if write and fixes:
        _run(session, correction_writes(fixes, q, started))
        progress(f"wrote {len(fixes)} corrections")
    return RollupReport(window, checked, fixes, write, unknown)


def _midnight(day: date, plus_days: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=plus_days)
