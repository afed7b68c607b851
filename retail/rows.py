"""From events to Cassandra rows: the tables, the base rows an event writes, and the CQL of the
identity reads and the rollup rows.

Idempotency lives here. Every base row's primary key comes from the event (order id, event id,
store, day, event time), and every base write carries ``USING TIMESTAMP`` = the event time in
microseconds: a replayed event writes the same cells with the same timestamp, so it changes
nothing. An id's table (``orders``, ``inventory_movements``) is its identity record: it holds
the version last written and the Kafka position it came from (``source``). A later version of
an id deletes the rows of the one it supersedes with its own timestamp, so a stale rewrite of
them can never show again. How rollups are folded in is :mod:`retail.aggregates`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from retail.events import Event, InventoryMovement, LineItem, Order

KEYSPACE = "retail"


@dataclass(frozen=True)
class Table:
    """A base table as data: its partition key, clustering columns, and every column a base row
    binds, in the order :func:`rows_for` binds them (the write timestamp follows). The writer's
    statements and the audit's reads are built from these, never written out twice."""

    name: str
    partition_key: tuple[str, ...]
    clustering: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{KEYSPACE}.{self.name}"

    @property
    def primary_key(self) -> tuple[str, ...]:
        return (*self.partition_key, *self.clustering)

    def insert(self) -> str:
        """A whole row, at a given timestamp (the last marker)."""
        return (
            f"INSERT INTO {self.qualified} ({', '.join(self.columns)}) "
            f"VALUES ({', '.join('?' * len(self.columns))}) USING TIMESTAMP ?"
        )

    def delete(self) -> str:
        """One row by its primary key, at a given timestamp (the first marker)."""
        where = " AND ".join(f"{c} = ?" for c in self.primary_key)
        return f"DELETE FROM {self.qualified} USING TIMESTAMP ? WHERE {where}"

    def read(self, columns: Sequence[str], *, many: bool = False) -> str:
        """``columns`` of one partition (``many``: of the partitions whose last key column is
        ``IN ?``)."""
        *first, last = self.partition_key
        where = [f"{c} = ?" for c in first] + [f"{last} IN ?" if many else f"{last} = ?"]
        return f"SELECT {', '.join(columns)} FROM {self.qualified} WHERE {' AND '.join(where)}"

    def read_range(
        self, columns: Sequence[str], *, low: str = ">=", high: str | None = "<="
    ) -> str:
        """``columns`` of one partition, its first clustering column bounded (``low``, then
        ``high`` unless None)."""
        first = self.clustering[0]
        bounds = [f"{first} {low} ?"] + ([f"{first} {high} ?"] if high else [])
        return self.read(columns) + "".join(f" AND {b}" for b in bounds)


# The base tables. An id's table is its identity record; its row by store and day is in the
# table BY_DAY names.
BASE: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "orders",
            ("order_id",),
            (),
            (
                "order_id",
                "event_id",
                "store_id",
                "region",
                "customer_id",
                "currency",
                "total_cents",
                "item_count",
                "lines",
                "event_time",
                "source",
            ),
        ),
        Table(
            "orders_by_store_day",
            ("store_id", "day"),
            ("event_time", "order_id"),
            (
                "store_id",
                "day",
                "event_time",
                "order_id",
                "region",
                "customer_id",
                "currency",
                "total_cents",
                "item_count",
                "lines",
            ),
        ),
        Table(
            "inventory_movements",
            ("event_id",),
            (),
            (
                "event_id",
                "store_id",
                "region",
                "sku",
                "kind",
                "quantity",
                "reason",
                "event_time",
                "source",
            ),
        ),
        Table(
            "inventory_by_store_day",
            ("store_id", "day"),
            ("event_time", "event_id"),
            (
                "store_id",
                "day",
                "event_time",
                "event_id",
                "sku",
                "kind",
                "quantity",
                "reason",
            ),
        ),
    )
}
# Every table the pipeline writes (the materialized view follows its base table).
BASE_TABLES = tuple(BASE)
ROLLUP_TABLES = (
    "sales_by_store_hour",
    "sales_by_region_day",
    "product_sales_by_store_day",
    "stock_by_store",
)
REGISTRY_TABLES = ("stores_by_region",)
TABLES = BASE_TABLES + ROLLUP_TABLES + REGISTRY_TABLES

BY_DAY: dict[str, str] = {
    "orders": "orders_by_store_day",
    "inventory_movements": "inventory_by_store_day",
}


def id_column(identity_table: str) -> str:
    """The id an identity table is keyed by (``order_id``, ``event_id``)."""
    return BASE[identity_table].partition_key[0]


BASE_COLUMNS: dict[str, tuple[str, ...]] = {name: t.columns for name, t in BASE.items()}
INSERTS: dict[str, str] = {name: t.insert() for name, t in BASE.items()}
# The rows a superseded version leaves behind, deleted at the superseding version's timestamp.
DELETES: dict[str, str] = {day: BASE[day].delete() for day in BY_DAY.values()}
# The stored version of many ids at once (one request per replica, see streaming.sink).
IDENTITY_READS: dict[str, str] = {
    name: BASE[name].read(BASE[name].columns, many=True) for name in BY_DAY
}

# Rollup rows: the value columns of each table (after its key columns), in order.
ROLLUP_KEYS: dict[str, tuple[str, ...]] = {
    "sales_by_store_hour": ("store_id", "day", "hour"),
    "sales_by_region_day": ("region", "day", "store_id"),
    "product_sales_by_store_day": ("store_id", "day", "sku"),
    "stock_by_store": ("store_id", "sku"),
}
ROLLUP_VALUES: dict[str, tuple[str, ...]] = {
    "sales_by_store_hour": ("order_count", "revenue_cents", "currency"),
    "sales_by_region_day": ("order_count", "revenue_cents", "currency"),
    "product_sales_by_store_day": ("units", "revenue_cents", "currency"),
    "stock_by_store": ("quantity", "as_of", "count_time", "count_event_id", "count_level"),
}


def rollup_read(table: str, *, whole_partition: bool = False) -> str:
    """Some rows of one partition of a rollup table (the last key column ``IN ?``), or all of
    them, with the write time of every cell: the newest is the row's fence."""
    keys, values = ROLLUP_KEYS[table], ROLLUP_VALUES[table]
    cells = (*values, "watermark")
    where = " AND ".join(f"{k} = ?" for k in keys[:-1])
    if not whole_partition:
        where += f" AND {keys[-1]} IN ?"
    return (
        f"SELECT {keys[-1]}, {', '.join(cells)}, "
        + ", ".join(f"WRITETIME({c}) AS wt_{c}" for c in cells)
        + f" FROM {KEYSPACE}.{table} WHERE {where}"
    )


def rollup_write(table: str) -> str:
    """A whole rollup row, key then values then watermark, at a given timestamp."""
    cols = (*ROLLUP_KEYS[table], *ROLLUP_VALUES[table], "watermark")
    return (
        f"INSERT INTO {KEYSPACE}.{table} ({', '.join(cols)}) "
        f"VALUES ({', '.join('?' * len(cols))}) USING TIMESTAMP ?"
    )


# The stores of a region: the consumers register each store before its first rows, and the
# rollup repair enumerates a window's store-days from them (stores x days).
REGISTER_STORE = f"INSERT INTO {KEYSPACE}.stores_by_region (region, store_id) VALUES (?, ?)"
STORES_OF_REGION = f"SELECT store_id FROM {KEYSPACE}.stores_by_region WHERE region = ?"


# A store's movements of one day after a time: what a late count needs (see retail.aggregates).
MOVEMENTS_SINCE = BASE["inventory_by_store_day"].read_range(
    ("event_time", "event_id", "sku", "kind", "quantity"), low=">", high=None
)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message was read: its topic, partition and offset."""

    topic: str
    partition: int
    offset: int

    @property
    def stream(self) -> str:
        """The watermark key of the partition: ``retail.eu-west.orders[3]``."""
        return f"{self.topic}[{self.partition}]"

    @property
    def source(self) -> str:
        """How the identity tables record it: ``retail.eu-west.orders[3]@1234``."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


def write_timestamp(event_time: datetime) -> int:
    """The cell timestamp for a base row: the event time in microseconds since the epoch."""
    return int(event_time.timestamp() * 1_000_000)


def utc_day(t: datetime) -> date:
    return t.astimezone(UTC).date()


def identity(event: Event) -> tuple[str, str]:
    """(identity table, id): what makes two messages the same order or movement."""
    if isinstance(event, Order):
        return ("orders", event.order_id)
    return ("inventory_movements", event.event_id)


def rows_for(event: Event, source: str | None = None) -> list[tuple[str, tuple[object, ...]]]:
    """Every base-row write an event makes: (table, bound values incl. the timestamp)."""
    ts = write_timestamp(event.event_time)
    day = utc_day(event.event_time)
    if isinstance(event, Order):
        items = sum(line.quantity for line in event.lines)
        lines = [(li.sku, li.quantity, li.unit_price_cents) for li in event.lines]
        return [
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
                    source,
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
                    lines,
                    ts,
                ),
            ),
        ]
    if isinstance(event, InventoryMovement):
        return [
            (
                "inventory_movements",
                (
                    event.event_id,
                    event.store_id,
                    event.region,
                    event.sku,
                    event.kind,
                    event.quantity,
                    event.reason,
                    event.event_time,
                    source,
                    ts,
                ),
            ),
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
        ]
    raise TypeError(f"no rows for {type(event).__name__}")


def superseded_rows(old: Event, by: Event) -> list[tuple[str, tuple[object, ...]]]:
    """The deletes of the rows ``old`` wrote outside its identity table (which ``by``
    overwrites), at ``by``'s timestamp: (table, bound values)."""
    ts = write_timestamp(by.event_time)
    day = utc_day(old.event_time)
    if isinstance(old, Order):
        return [("orders_by_store_day", (ts, old.store_id, day, old.event_time, old.order_id))]
    return [("inventory_by_store_day", (ts, old.store_id, day, old.event_time, old.event_id))]


def as_utc(t: datetime) -> datetime:
    """A timestamp read from Cassandra as an aware UTC time (the driver returns naive UTC)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def event_from_row(table: str, r: Any) -> tuple[Event, str | None]:
    """The stored version of an id, from its identity table's row (an IDENTITY_READS row),
    and the Kafka position it was written from."""
    if table == "orders":
        order = Order(
            event_id=r.event_id,
            order_id=r.order_id,
            store_id=r.store_id,
            region=r.region,
            customer_id=r.customer_id,
            currency=r.currency,
            lines=tuple(
                LineItem(sku=li.sku, quantity=li.quantity, unit_price_cents=li.unit_price_cents)
                for li in r.lines or ()
            ),
            total_cents=r.total_cents,
            event_time=as_utc(r.event_time),
        )
        return order, r.source
    movement = InventoryMovement(
        event_id=r.event_id,
        store_id=r.store_id,
        region=r.region,
        sku=r.sku,
        kind=r.kind,
        quantity=r.quantity,
        reason=r.reason,
        event_time=as_utc(r.event_time),
    )
    return movement, r.source


def stock_level(
    movements: Iterable[tuple[datetime, str, str, int]],
) -> tuple[int, datetime | None]:
    """Stock from a product's movements (event_time, event_id, kind, quantity), in any order;
    returns the level and the time of the newest movement.

    The latest absolute count sets the level (on a tie in time, the highest event id, so the
    answer never depends on read order); deltas after it are added; deltas at the very instant
    of the count are taken as already in it. Never counted: the sum of all deltas. This is the
    definition the incremental stock of :mod:`retail.aggregates` must agree with.
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
