"""The audit's pure parts: which rows an event must have, who is responsible for a message,
and the report a person reads."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from retail.events import InventoryMovement, LineItem, Order
from retail.ops.audit import (
    AuditReport,
    Seen,
    TopicAudit,
    event_label,
    insert_columns,
    responsible_group,
    row_keys,
)
from retail.rows import INSERTS

# The primary keys of include/cql (the integration test reads them from the live schema).
PRIMARY_KEYS = {
    "orders": ("order_id",),
    "orders_by_store_day": ("store_id", "day", "event_time", "order_id"),
    "product_sales_by_region_day": ("region", "day", "sku", "order_id", "line_no"),
    "inventory_by_store_day": ("store_id", "day", "event_time", "event_id"),
    "inventory_by_store_sku": ("store_id", "sku", "event_time", "event_id"),
}
T = datetime(2025, 6, 2, 23, 59, 59, 123456, tzinfo=UTC)
REGIONS = ["eu-west", "us-east", "ap-southeast"]

ORDER = Order(
    event_id="e-1",
    order_id="store-0001-00000007",
    store_id="store-0001",
    region="eu-west",
    customer_id="cust-000001",
    currency="EUR",
    lines=(LineItem("SKU-000001", 2, 100), LineItem("SKU-000002", 1, 50)),
    total_cents=250,
    event_time=T,
)
MOVE = InventoryMovement(
    event_id="e-2",
    store_id="store-0001",
    region="eu-west",
    sku="SKU-000001",
    kind="delta",
    quantity=-2,
    reason="sale",
    event_time=T,
)


def test_every_insert_names_its_table_and_columns() -> None:
    cols = insert_columns()
    assert set(cols) == set(INSERTS)
    assert cols["product_sales"][0] == "product_sales_by_region_day"
    assert cols["orders"][1][:2] == ("order_id", "event_id")


def test_an_order_must_have_its_row_by_id_by_store_day_and_one_per_line() -> None:
    assert row_keys(ORDER, PRIMARY_KEYS) == [
        ("orders", ("store-0001-00000007",)),
        ("orders_by_store_day", ("store-0001", date(2025, 6, 2), T, "store-0001-00000007")),
        (
            "product_sales_by_region_day",
            ("eu-west", date(2025, 6, 2), "SKU-000001", "store-0001-00000007", 0),
        ),
        (
            "product_sales_by_region_day",
            ("eu-west", date(2025, 6, 2), "SKU-000002", "store-0001-00000007", 1),
        ),
    ]


def test_a_movement_must_have_its_rows_by_store_day_and_by_store_sku() -> None:
    assert row_keys(MOVE, PRIMARY_KEYS) == [
        ("inventory_by_store_day", ("store-0001", date(2025, 6, 2), T, "e-2")),
        ("inventory_by_store_sku", ("store-0001", "SKU-000001", T, "e-2")),
    ]


def test_the_responsible_group_follows_the_consumers_routing() -> None:
    valid = Seen("p.orders", 0, 1, "us-east", ORDER, None)
    assert responsible_group(valid, "p", REGIONS) == "p-eu-west"  # the event's region writes
    invalid = Seen("p.orders", 0, 2, "us-east", None, "bad")
    assert responsible_group(invalid, "p", REGIONS) == "p-us-east"
    headless = Seen("p.orders", 0, 3, None, None, "bad")
    assert responsible_group(headless, "p", REGIONS) == "p-eu-west"  # the catch-all group


def test_labels_name_what_a_person_searches_for() -> None:
    assert event_label(ORDER) == "order store-0001-00000007 (event e-1)"
    assert event_label(MOVE) == "store-0001 SKU-000001 movement (event e-2)"


def test_the_report_sums_losses_and_serialises() -> None:
    orders = TopicAudit("p.orders", messages=10, events=9, invalid=1, deadlettered=1, missing=1)
    orders.per_partition = {0: 4, 1: 6}
    orders.missing_examples = ["order x at p.orders[1]@5: no row in orders"]
    report = AuditReport(0, 60_000, {"p.orders": orders, "p.inventory": TopicAudit("p.inventory")})
    report.rows_checked = 30
    assert report.missing == 1
    data = json.loads(json.dumps(report.to_dict()))
    assert data["topics"]["p.orders"]["per_partition"] == {"0": 4, "1": 6}
    assert report.summary().startswith(
        "p.orders: 10 messages (9 events, 1 invalid, 1 dead-lettered, 0 not yet consumed), 1 lost"
    )
