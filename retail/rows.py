"""From events to Cassandra rows, and the arithmetic of the application-maintained rollups.

Idempotency lives here. Every base row's primary key comes from the event (order id, event id,
line number), and every base write carries ``USING TIMESTAMP`` = the event time in microseconds:
a replayed event writes the same cells with the same timestamp, so it changes nothing, and an
older event replayed after a newer one cannot overwrite it. Rollups are never incremented: they
are recomputed from the base rows of the buckets a batch touched (see :mod:`streaming.sink`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from retail.events import Event, InventoryMovement, Order

KEYSPACE = "retail"

# Every table the pipeline writes (the materialized view follows its base table).
TABLES = (
    "orders",
    "orders_by_store_day",
    "product_sales_by_region_day",
    "inventory_by_store_day",
    "inventory_by_store_sku",
    "stock_by_store",
    "sales_by_store_hour",
    "sales_by_region_day",
)

# Base-row writes, by name. Each takes its row values then the write timestamp.
INSERTS: dict[str, str] = {
    "orders": (
        f"INSERT INTO {KEYSPACE}.orders (order_id, event_id, store_id, region, customer_id, "
        "currency, total_cents, item_count, lines, event_time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    ),
    "orders_by_store_day": (
        f"INSERT INTO {KEYSPACE}.orders_by_store_day (store_id, day, event_time, order_id, "
        "region, customer_id, currency, total_cents, item_count) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    ),
    "product_sales": (
        f"INSERT INTO {KEYSPACE}.product_sales_by_region_day (region, day, sku, order_id, "
        "line_no, quantity, revenue_cents) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    ),
    "inventory_by_store_day": (
        f"INSERT INTO {KEYSPACE}.inventory_by_store_day (store_id, day, event_time, event_id, "
        "sku, kind, quantity, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    ),
    "inventory_by_store_sku": (
        f"INSERT INTO {KEYSPACE}.inventory_by_store_sku (store_id, sku, event_time, event_id, "
        "kind, quantity) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    ),
}

# Rollup reads and writes (the sink runs these after the base rows are acknowledged).
ROLLUP_QUERIES: dict[str, str] = {
    "orders_in_hour": (
        f"SELECT total_cents, currency FROM {KEYSPACE}.orders_by_store_day "
        "WHERE store_id = ? AND day = ? AND event_time >= ? AND event_time < ?"
    ),
    "write_store_hour": (
        f"INSERT INTO {KEYSPACE}.sales_by_store_hour (store_id, day, hour, order_count, "
        "revenue_cents, currency) VALUES (?, ?, ?, ?, ?, ?)"
    ),
    "store_hours": (
        f"SELECT hour, order_count, revenue_cents, currency FROM {KEYSPACE}.sales_by_store_hour "
        "WHERE store_id = ? AND day = ?"
    ),
    "write_region_day": (
        f"INSERT INTO {KEYSPACE}.sales_by_region_day (region, day, store_id, order_count, "
        "revenue_cents, currency) VALUES (?, ?, ?, ?, ?, ?)"
    ),
    "sku_movements": (
        f"SELECT event_time, event_id, kind, quantity FROM {KEYSPACE}.inventory_by_store_sku "
        "WHERE store_id = ? AND sku = ?"
    ),
    "write_stock": (
        f"INSERT INTO {KEYSPACE}.stock_by_store (store_id, sku, quantity, as_of) "
        "VALUES (?, ?, ?, ?)"
    ),
}


def write_timestamp(event_time: datetime) -> int:
    """The cell timestamp for a base row: the event time in microseconds since the epoch."""
    return int(event_time.timestamp() * 1_000_000)


def _day(t: datetime) -> date:
    return t.astimezone(UTC).date()


def rows_for(event: Event) -> list[tuple[str, tuple[object, ...]]]:
    """Every base-row write an event makes: (insert name, bound values)."""
    ts = write_timestamp(event.event_time)
    day = _day(event.event_time)
    if isinstance(event, Order):
        items = sum(line.quantity for line in event.lines)
        lines = [(li.sku, li.quantity, li.unit_price_cents) for li in event.lines]
        writes: list[tuple[str, tuple[object, ...]]] = [
            (
                "orders",
                (
                    event.order_id,
                    event.event_id,
                    event.store_id,
                    event.region,
                    event.customer_id,
                    event.currency,
                    event.total_cents,
                    items,
                    lines,
                    event.event_time,
                    ts,
                ),
            ),
            (
                "orders_by_store_day",
                (
                    event.store_id,
                    day,
                    event.event_time,
                    event.order_id,
                    event.region,
                    event.customer_id,
                    event.currency,
                    event.total_cents,
                    items,
                    ts,
                ),
            ),
        ]
        writes += [
            (
                "product_sales",
                (
                    event.region,
                    day,
                    li.sku,
                    event.order_id,
                    n,
                    li.quantity,
                    li.quantity * li.unit_price_cents,
                    ts,
                ),
            )
            for n, li in enumerate(event.lines)
        ]
        return writes
    if isinstance(event, InventoryMovement):
        return [
            (
                "inventory_by_store_day",
                (
                    event.store_id,
                    day,
                    event.event_time,
                    event.event_id,
                    event.sku,
                    event.kind,
                    event.quantity,
                    event.reason,
                    ts,
                ),
            ),
            (
                "inventory_by_store_sku",
                (
                    event.store_id,
                    event.sku,
                    event.event_time,
                    event.event_id,
                    event.kind,
                    event.quantity,
                    ts,
                ),
            ),
        ]
    raise TypeError(f"no rows for {type(event).__name__}")


@dataclass(frozen=True, order=True)
class HourBucket:
    """One store's sales in one UTC hour: the unit a batch's rollups are recomputed in."""

    store_id: str
    region: str
    day: date
    hour: int

    @property
    def start(self) -> datetime:
        return datetime(self.day.year, self.day.month, self.day.day, self.hour, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(hours=1)


def hour_bucket(order: Order) -> HourBucket:
    t = order.event_time.astimezone(UTC)
    return HourBucket(order.store_id, order.region, t.date(), t.hour)


def totals(rows: Iterable[tuple[int, int, str | None]]) -> tuple[int, int, str | None]:
    """(count, sum, currency) over rows of (count, amount, currency). A store sells in one
    currency, so the last non-null one stands for all."""
    count = amount = 0
    currency = None
    for n, cents, cur in rows:
        count += n
        amount += cents
        currency = cur or currency
    return count, amount, currency


def stock_level(
    movements: Iterable[tuple[datetime, str, str, int]],
) -> tuple[int, datetime | None]:
    """Current stock from a product's movements (event_time, event_id, kind, quantity), in any
    order; returns the level and the time of the newest movement.

    The latest absolute count sets the level (on a tie in time, the highest event id, so the
    answer never depends on read order); deltas after it are added; deltas at the very instant
    of the count are taken as already in it. Never counted: the sum of all deltas.
    """
    rows = list(movements)
    if not rows:
        return 0, None
    as_of = max(r[0] for r in rows)
    counts = [r for r in rows if r[2] == "absolute"]
    if not counts:
        return sum(r[3] for r in rows), as_of
    last = max(counts, key=lambda r: (r[0], r[1]))
    after = sum(r[3] for r in rows if r[2] == "delta" and r[0] > last[0])
    return last[3] + after, as_of
