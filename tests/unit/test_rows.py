"""Events to rows: keys from ids (so replays overwrite), timestamps from event time (so replays
change nothing and old events never win), what a superseded version deletes, and the stock
arithmetic."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from retail.aggregates import HourKey, effects, resolve
from retail.events import InventoryMovement, LineItem, Order
from retail.migrations import MIGRATIONS_DIR
from retail.rows import (
    BASE,
    BY_DAY,
    DELETES,
    IDENTITY_READS,
    INSERTS,
    Position,
    event_from_row,
    rows_for,
    stock_level,
    superseded_rows,
    write_timestamp,
)

T = datetime(2026, 3, 1, 23, 59, 59, 500_000, tzinfo=UTC)


def order(**kw: object) -> Order:
    lines = (
        LineItem(sku="SKU-000001", quantity=2, unit_price_cents=150),
        LineItem(sku="SKU-000002", quantity=1, unit_price_cents=999),
    )
    fields = dict(
        event_id="e-1",
        order_id="o-1",
        store_id="store-0001",
        region="eu-west",
        customer_id="cust-000001",
        currency="EUR",
        lines=lines,
        total_cents=1299,
        event_time=T,
    )
    fields.update(kw)
    return Order(**fields)  # type: ignore[arg-type]


def movement(**kw: object) -> InventoryMovement:
    fields = dict(
        event_id="m-1",
        store_id="store-0001",
        region="eu-west",
        sku="SKU-000001",
        kind="delta",
        quantity=-2,
        reason="sale",
        event_time=T,
    )
    fields.update(kw)
    return InventoryMovement(**fields)  # type: ignore[arg-type]


def test_an_order_writes_its_row_and_its_store_day_row_with_its_lines() -> None:
    writes = rows_for(order(), "retail.eu-west.orders[3]@17")
    assert [name for name, _ in writes] == ["orders", "orders_by_store_day"]
    orders = dict(writes)["orders"]
    assert orders[0] == "o-1"  # primary key = order id: a replay overwrites the same row
    assert orders[7] == 3  # item count
    assert orders[8] == [("SKU-000001", 2, 150), ("SKU-000002", 1, 999)]
    assert orders[10] == "retail.eu-west.orders[3]@17"  # where it was read: replay or resend?
    by_day = dict(writes)["orders_by_store_day"]
    assert by_day[:4] == ("store-0001", date(2026, 3, 1), T, "o-1")
    assert by_day[-2] == orders[8]  # the lines travel with the day: product sales recount


def test_every_write_is_stamped_with_the_event_time_and_binds_every_marker() -> None:
    for event in (order(), movement()):
        for name, values in rows_for(event):
            assert values[-1] == write_timestamp(T) == 1772409599500000
            assert INSERTS[name].count("?") == len(values)


def test_the_same_event_maps_to_the_same_rows_and_keys_follow_ids() -> None:
    assert rows_for(order()) == rows_for(order())
    other = rows_for(order(order_id="o-2", event_id="e-2"))
    assert dict(other)["orders"][0] == "o-2"


def test_a_movement_writes_its_identity_row_and_its_store_day_row() -> None:
    writes = dict(rows_for(movement(kind="absolute", quantity=40, reason="count"), "t[0]@1"))
    assert writes["inventory_movements"][:6] == (
        "m-1",
        "store-0001",
        "eu-west",
        "SKU-000001",
        "absolute",
        40,
    )
    assert writes["inventory_by_store_day"][:4] == ("store-0001", date(2026, 3, 1), T, "m-1")


def test_a_later_version_deletes_the_rows_of_the_one_it_replaces_at_its_own_timestamp() -> None:
    later = order(event_time=T + timedelta(hours=1))
    ((table, values),) = superseded_rows(order(), later)
    assert table == "orders_by_store_day"
    assert values == (write_timestamp(later.event_time), "store-0001", date(2026, 3, 1), T, "o-1")
    assert DELETES[table].count("?") == len(values)
    ((table, values),) = superseded_rows(movement(), movement(event_time=T + timedelta(days=1)))
    assert (table, values[1:]) == (
        "inventory_by_store_day",
        ("store-0001", date(2026, 3, 1), T, "m-1"),
    )


def test_an_orders_hour_is_its_utc_hour() -> None:
    local = T.astimezone(ZoneInfo("Asia/Tokyo"))
    (r,) = resolve([(Position("t", 0, 0), order(event_time=local))], {})
    keys = [key for key, _ in effects(r)]
    assert keys[0] == HourKey("store-0001", date(2026, 3, 1), 23)


def test_a_stored_version_reads_back_as_the_event_it_was() -> None:
    class Line:
        def __init__(self, sku: str, quantity: int, unit_price_cents: int) -> None:
            self.sku, self.quantity, self.unit_price_cents = sku, quantity, unit_price_cents

    class Row:
        pass

    o = order()
    row = Row()
    values = dict(rows_for(o, "t[1]@2"))["orders"]
    names = ("order_id", "event_id", "store_id", "region", "customer_id", "currency")
    for name, value in zip(names, values, strict=False):
        setattr(row, name, value)
    row.total_cents, row.lines, row.source = (
        o.total_cents,
        [Line(*li) for li in values[8]],
        "t[1]@2",
    )
    row.event_time = T.replace(tzinfo=None)  # the driver reads timestamps as naive UTC
    assert event_from_row("orders", row) == (o, "t[1]@2")


def t(minutes: int) -> datetime:
    return T + timedelta(minutes=minutes)


@pytest.mark.parametrize(
    "rows, level",
    [
        ([], 0),
        ([(t(0), "a", "delta", 5), (t(1), "b", "delta", -2)], 3),  # never counted: sum of deltas
        ([(t(0), "a", "delta", 5), (t(1), "b", "absolute", 10), (t(2), "c", "delta", -3)], 7),
        ([(t(1), "b", "absolute", 10), (t(1), "c", "delta", -3)], 10),  # same instant: in the count
        ([(t(1), "a", "absolute", 10), (t(1), "b", "absolute", 12)], 12),  # tie: highest event id
    ],
)
def test_stock_is_the_last_count_plus_later_deltas(rows: list, level: int) -> None:
    assert stock_level(rows)[0] == level
    assert stock_level(list(reversed(rows)))[0] == level  # read order does not matter


def _schema(table: str) -> tuple[set[str], tuple[str, ...], tuple[str, ...]]:
    """(columns, partition key, clustering columns) of ``retail.<table>`` as the migrations in
    include/cql create and alter it."""
    cql = "\n".join(p.read_text() for p in sorted(MIGRATIONS_DIR.glob("V*.cql")))
    cql = re.sub(r"--[^\n]*", "", cql)
    body = re.search(rf"CREATE TABLE IF NOT EXISTS retail\.{table} \((.*?)\n\)", cql, re.S)
    assert body is not None, table
    columns, partition, clustering = set(), (), ()
    for line in (x.strip().rstrip(",") for x in body.group(1).splitlines()):
        if key := re.fullmatch(r"PRIMARY KEY \(\((.*?)\)(?:, (.*))?\)", line):
            partition = tuple(c.strip() for c in key.group(1).split(","))
            clustering = tuple(c.strip() for c in (key.group(2) or "").split(",") if c.strip())
        elif line:
            name, *rest = line.split()
            columns.add(name)
            if rest[-2:] == ["PRIMARY", "KEY"]:
                partition = (name,)
    columns |= set(re.findall(rf"ALTER TABLE retail\.{table} ADD IF NOT EXISTS (\w+)", cql))
    return columns, partition, clustering


def test_the_tables_described_as_data_are_the_tables_the_migrations_create() -> None:
    for name, table in BASE.items():
        columns, partition, clustering = _schema(name)
        assert (table.partition_key, table.clustering) == (partition, clustering), name
        assert set(table.columns) <= columns, name
        assert set(table.primary_key) <= set(table.columns), name


def test_the_writer_and_the_reads_are_built_from_the_descriptions() -> None:
    assert INSERTS["orders"] == (
        "INSERT INTO retail.orders (order_id, event_id, store_id, region, customer_id, currency, "
        "total_cents, item_count, lines, event_time, source) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    )
    assert DELETES["inventory_by_store_day"] == (
        "DELETE FROM retail.inventory_by_store_day USING TIMESTAMP ? "
        "WHERE store_id = ? AND day = ? AND event_time = ? AND event_id = ?"
    )
    assert IDENTITY_READS["inventory_movements"].endswith(
        "FROM retail.inventory_movements WHERE event_id IN ?"
    )
    assert BASE["orders_by_store_day"].read_range(("event_time", "order_id")) == (
        "SELECT event_time, order_id FROM retail.orders_by_store_day "
        "WHERE store_id = ? AND day = ? AND event_time >= ? AND event_time <= ?"
    )
    assert set(BY_DAY) | set(BY_DAY.values()) == set(BASE)
