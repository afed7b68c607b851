"""The pure logic of the view audit and the rollup recompute and repair (no services)."""

from __future__ import annotations

from collections import namedtuple
from datetime import UTC, date, datetime

import pytest

from retail.aggregates import Bucket, DayKey, HourKey, Stock, StockKey, Sums, ms
from retail.catalog import catalog
from retail.errors import ConfigError
from retail.ops.rollups import Correction, Window, corrected, corrections, expected_stock
from retail.ops.views import ViewAudit, key_filter_columns

MoveRow = namedtuple("MoveRow", "event_time event_id kind quantity")

DAY = date(2026, 11, 24)


def test_the_view_rows_are_the_base_rows_with_a_customer() -> None:
    view = catalog().view("orders_by_customer")
    assert view.base_table == "orders"
    assert key_filter_columns(view, ["order_id"]) == ["customer_id"]


def test_a_view_is_consistent_only_if_counts_samples_and_every_node_agree() -> None:
    ok = ViewAudit("v", "b", True, 10, 10, 5, 5, build_status={"n1": "SUCCESS", "n2": "SUCCESS"})
    assert ok.consistent and ok.missing_rows == 0
    assert not ViewAudit("v", "b", True, 10, 7).consistent
    assert ViewAudit("v", "b", True, 10, 7).missing_rows == 3
    unbuilt = ViewAudit("v", "b", True, 10, 10, build_status={"n1": "SUCCESS", "n2": "STARTED"})
    assert not unbuilt.consistent and unbuilt.not_built == ["n2"]
    gone = ViewAudit("v", "b", False, 10, 0)
    assert not gone.consistent and gone.missing_rows == 10
    assert gone.to_dict()["consistent"] is False


def test_a_window_is_the_last_hours_with_the_current_one() -> None:
    w = Window.last(3, now=datetime(2026, 11, 24, 1, 30, tzinfo=UTC))
    assert w.start == datetime(2026, 11, 23, 23, tzinfo=UTC)
    assert w.end == datetime(2026, 11, 24, 2, tzinfo=UTC)
    assert w.days == [date(2026, 11, 23), DAY]
    assert w.hours_of(date(2026, 11, 23)) == [23]
    assert w.hours_of(DAY) == [0, 1]


@pytest.mark.parametrize("hours", [0, 169, -1, True, "3"])
def test_a_window_out_of_bounds_is_refused(hours: object) -> None:
    with pytest.raises(ConfigError, match="window hours"):
        Window.last(hours)  # type: ignore[arg-type]


def test_a_products_stock_is_recounted_from_its_latest_count_on() -> None:
    t = datetime(2026, 11, 24, 10, 5)
    rows = [
        MoveRow(t.replace(minute=1), "e0", "delta", -50),  # before the count: in it
        MoveRow(t, "e1", "absolute", 10),
        MoveRow(t.replace(minute=9), "e2", "delta", -3),
    ]
    stock = expected_stock(rows)
    assert stock is not None
    assert (stock.quantity, stock.count_level, stock.deltas) == (7, 10, -3)
    assert (stock.count_time, stock.count_id, stock.as_of) == (
        ms(t),
        "e1",
        ms(t.replace(minute=9)),
    )
    # Without a count in the rows the level depends on older days: not checkable from these.
    assert expected_stock([MoveRow(t, "e2", "delta", -3)]) is None


def test_only_buckets_that_differ_are_corrected_and_stray_ones_zeroed() -> None:
    h9, h10, h11 = (HourKey("s1", DAY, h) for h in (9, 10, 11))
    expected = {
        h9: Bucket(Sums(2, 150, "EUR")),
        h10: Bucket(Sums(1, 7, "EUR")),
        DayKey("eu-west", DAY, "s1"): Bucket(Sums(3, 157, "EUR")),
        StockKey("s1", "a"): Bucket(Stock(count_level=5)),
        StockKey("s1", "b"): Bucket(Stock(count_level=1)),
    }
    stored = {
        h9: Bucket(Sums(2, 150, "EUR"), {"t[0]": 4}, fence=9000),
        h10: Bucket(Sums(1, 999, "EUR"), {"t[0]": 4}, fence=9000),
        h11: Bucket(Sums(1, 5, "EUR"), {"t[0]": 2}, fence=3000),  # nothing recounts it
        DayKey("eu-west", DAY, "s1"): Bucket(Sums(3, 157, "EUR")),
        StockKey("s1", "a"): Bucket(Stock(count_level=4, deltas=1)),
        StockKey("s1", "b"): Bucket(Stock(count_level=4)),
    }
    checked, fixes = corrections(expected, stored)
    assert checked == {
        "sales_by_store_hour": 3,
        "sales_by_region_day": 1,
        "product_sales_by_store_day": 0,
        "stock_by_store": 2,
    }
    assert fixes == [
        Correction("sales_by_store_hour", ("s1", DAY, 10), (1, 999, "EUR"), (1, 7, "EUR")),
        Correction("sales_by_store_hour", ("s1", DAY, 11), (1, 5, "EUR"), (0, 0, None)),
        Correction("stock_by_store", ("s1", "b"), (4,), (1,)),
    ]
    assert fixes[0].to_dict() == {
        "key": ["s1", "2026-11-24", 10],
        "stored": [1, 999, "EUR"],
        "expected": [1, 7, "EUR"],
    }
    # A correction keeps the consumers' watermark and is written one above the stored fence:
    # any fold after the repair read the row writes higher, and wins.
    fix = corrected(expected[h10], stored[h10])
    assert (fix.values(), fix.watermark, fix.write_timestamp()) == (
        (1, 7, "EUR"),
        {"t[0]": 4},
        9001,
    )
