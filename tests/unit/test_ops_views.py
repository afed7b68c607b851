"""The pure logic of the view audit and the rollup recompute and repair (no services)."""

from __future__ import annotations

from collections import namedtuple
from datetime import UTC, date, datetime

import pytest

from retail.catalog import catalog
from retail.errors import ConfigError
from retail.ops.rollups import (
    Correction,
    Recomputed,
    RollupPlan,
    Window,
    correction_writes,
    corrections,
)
from retail.ops.views import ViewAudit, key_filter_columns
from retail.rows import HourBucket

OrderRow = namedtuple("OrderRow", "total_cents currency")
HourRow = namedtuple("HourRow", "hour order_count revenue_cents currency")
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


def _plan() -> RollupPlan:
    return RollupPlan.of(
        [HourBucket("store-0001", "eu-west", DAY, 10), HourBucket("store-0001", "eu-west", DAY, 9)],
        [("store-0001", "sku-1")],
    )


def test_a_store_day_is_the_recounted_hours_plus_the_stored_others() -> None:
    plan = _plan()
    t = datetime(2026, 11, 24, 10, 5)
    results = [
        [OrderRow(100, "EUR"), OrderRow(50, "EUR")],  # hour 9
        [OrderRow(7, "EUR")],  # hour 10
        [HourRow(8, 2, 30, "EUR"), HourRow(9, 99, 99, "EUR")],  # stored hours of the day
        [MoveRow(t, "e1", "absolute", 10), MoveRow(t.replace(minute=9), "e2", "delta", -3)],
    ]
    r = plan.recompute(results)
    assert r.hours[HourBucket("store-0001", "eu-west", DAY, 9)] == (2, 150, "EUR")
    assert r.days == {("eu-west", DAY, "store-0001"): (5, 187, "EUR")}  # 8 stored, 9+10 fresh
    assert r.stock == {("store-0001", "sku-1"): (7, t.replace(minute=9))}
    assert r.stored_hours[("store-0001", DAY)][9] == (99, 99, "EUR")
    q = {n: n for n in ("write_store_hour", "write_region_day", "write_stock")}
    writes = r.writes(q)  # type: ignore[arg-type]
    assert [w[0] for w in writes] == ["write_store_hour"] * 2 + ["write_region_day", "write_stock"]
    assert writes[0][1] == ("store-0001", DAY, 9, 2, 150, "EUR")


def test_only_buckets_that_differ_are_corrected_and_empty_ones_deleted() -> None:
    b9, b10, b11 = (HourBucket("s1", "eu-west", DAY, h) for h in (9, 10, 11))
    t = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    recomputed = Recomputed(
        hours={b9: (2, 150, "EUR"), b10: (1, 7, "EUR"), b11: (0, 0, None)},
        stored_hours={("s1", DAY): {9: (2, 150, "EUR"), 10: (1, 999, "EUR"), 11: (1, 5, "EUR")}},
        days={("eu-west", DAY, "s1"): (3, 157, "EUR")},
        stock={("s1", "a"): (5, t), ("s1", "b"): (1, t)},
    )
    checked, fixes = corrections(
        recomputed,
        {("eu-west", DAY, "s1"): (3, 157, "EUR"), ("eu-west", DAY, "s2"): (1, 1, "EUR")},
        {("s1", "a"): (5, t.replace(tzinfo=None)), ("s1", "b"): (4, t.replace(tzinfo=None))},
    )
    assert checked == {"sales_by_store_hour": 3, "sales_by_region_day": 2, "stock_by_store": 2}
    assert fixes == [
        Correction("sales_by_store_hour", ("s1", DAY, 10), (1, 999, "EUR"), (1, 7, "EUR")),
        Correction("sales_by_store_hour", ("s1", DAY, 11), (1, 5, "EUR"), None),
        Correction("sales_by_region_day", ("eu-west", DAY, "s2"), (1, 1, "EUR"), None),
        Correction(
            "stock_by_store", ("s1", "b"), (4, t.replace(tzinfo=None)), (1, t.replace(tzinfo=None))
        ),
    ]
    q = {
        n: n
        for n in (
            "write_store_hour",
            "write_region_day",
            "write_stock",
            "delete_store_hour",
            "delete_region_day",
        )
    }
    writes = correction_writes(fixes, q, 42)  # type: ignore[arg-type]
    assert writes == [
        ("write_store_hour", ("s1", DAY, 10, 1, 7, "EUR", 42)),
        ("delete_store_hour", (42, "s1", DAY, 11)),
        ("delete_region_day", (42, "eu-west", DAY, "s2")),
        ("write_stock", ("s1", "b", 1, t.replace(tzinfo=None), 42)),
    ]
    assert fixes[0].to_dict() == {
        "key": ["s1", "2026-11-24", 10],
        "stored": [1, 999, "EUR"],
        "expected": [1, 7, "EUR"],
    }
