"""Events to rows: keys from ids (so replays overwrite), timestamps from event time (so replays
change nothing and old events never win), and the rollup arithmetic."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from retail.events import InventoryMovement, LineItem, Order
from retail.rows import (
    INSERTS,
    HourBucket,
    hour_bucket,
    rows_for,
    stock_level,
    totals,
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


def test_an_order_writes_its_row_its_store_day_row_and_one_row_per_line() -> None:
    writes = rows_for(order())
    assert [name for name, _ in writes] == [
        "orders",
        "orders_by_store_day",
        "product_sales",
        "product_sales",
    ]
    orders = dict(writes)["orders"]
    assert orders[0] == "o-1"  # primary key = order id: a replay overwrites the same row
    assert orders[7] == 3  # item count
    assert orders[8] == [("SKU-000001", 2, 150), ("SKU-000002", 1, 999)]
    by_day = dict(writes)["orders_by_store_day"]
    assert by_day[:4] == ("store-0001", date(2026, 3, 1), T, "o-1")
    lines = [v for name, v in writes if name == "product_sales"]
    assert [(v[2], v[3], v[4], v[5], v[6]) for v in lines] == [
        ("SKU-000001", "o-1", 0, 2, 300),
        ("SKU-000002", "o-1", 1, 1, 999),
    ]


def test_every_write_is_stamped_with_the_event_time_and_binds_every_marker() -> None:
    for event in (order(), movement()):
        for name, values in rows_for(event):
            assert values[-1] == write_timestamp(T) == 1772409599500000
            assert INSERTS[name].count("?") == len(values)


def test_the_same_event_maps_to_the_same_rows_and_keys_follow_ids() -> None:
    assert rows_for(order()) == rows_for(order())
    other = rows_for(order(order_id="o-2", event_id="e-2"))
    assert dict(other)["orders"][0] == "o-2"


def test_a_movement_writes_its_store_day_and_store_sku_rows() -> None:
    writes = dict(rows_for(movement(kind="absolute", quantity=40, reason="count")))
    assert writes["inventory_by_store_day"][:4] == ("store-0001", date(2026, 3, 1), T, "m-1")
    assert writes["inventory_by_store_sku"][:6] == (
        "store-0001",
        "SKU-000001",
        T,
        "m-1",
        "absolute",
        40,
    )


def test_an_orders_hour_bucket_is_its_utc_hour() -> None:
    local = T.astimezone(ZoneInfo("Asia/Tokyo"))
    b = hour_bucket(order(event_time=local))
    assert b == HourBucket("store-0001", "eu-west", date(2026, 3, 1), 23)
    assert (b.start, b.end) == (
        T.replace(minute=0, second=0, microsecond=0),
        T.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1),
    )


def test_totals_add_counts_and_amounts() -> None:
    assert totals([(1, 100, "EUR"), (2, 250, "EUR")]) == (3, 350, "EUR")
    assert totals([]) == (0, 0, None)


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
