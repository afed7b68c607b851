"""The audit's pure parts: what the consumers must do with a message, who is responsible for it,
and the report a person reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from retail.events import InventoryMovement, LineItem, Order, encode
from retail.kafka import Topics, judge
from retail.ops.audit import AuditReport, Seen, TopicAudit, event_label, responsible_group

T = datetime(2025, 6, 2, 23, 59, 59, 123456, tzinfo=UTC)
TOPICS = Topics.named("p")

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


def test_a_message_is_judged_by_the_consumers_rules() -> None:
    assert judge(TOPICS, "p.eu-west.orders", "eu-west", encode(ORDER)) == (ORDER, None)
    assert judge(TOPICS, "p.eu-west.orders", None, encode(ORDER)) == (ORDER, None)
    _, reason = judge(TOPICS, "p.eu-west.orders", "us-east", encode(ORDER))
    assert reason == "region header says 'us-east' but the event's region is 'eu-west'"
    _, reason = judge(TOPICS, "p.eu-west.orders", "eu-west", encode(MOVE))
    assert reason == (
        "an event of region eu-west on p.eu-west.orders; producers send it to p.eu-west.inventory"
    )
    _, reason = judge(TOPICS, "p.unrouted", None, encode(ORDER))
    assert reason is not None and "p.eu-west.orders" in reason
    event, reason = judge(TOPICS, "p.us-east.orders", None, b"{")
    assert event is None and reason is not None and reason.startswith("not valid JSON")


def test_the_responsible_group_is_the_topics_region() -> None:
    assert responsible_group(Seen("p.us-east.orders", 0, 1, None, "bad"), TOPICS) == "p-us-east"
    assert responsible_group(Seen("p.eu-west.inventory", 0, 1, MOVE, None), TOPICS) == "p-eu-west"
    # The unrouted topic is the catch-all's: the first region's group.
    assert responsible_group(Seen("p.unrouted", 0, 3, None, "bad"), TOPICS) == "p-eu-west"


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


def test_a_run_audits_its_data_interval_so_runs_meet_without_gap_or_overlap() -> None:
    from datetime import timedelta

    from retail_airflow.operators.audit import audit_window

    hour = timedelta(hours=1)
    t0 = datetime(2026, 11, 30, 10, tzinfo=UTC)
    first = audit_window(t0, t0 + hour, settle=5, window=None)
    second = audit_window(t0 + hour, t0 + 2 * hour, settle=5, window=None)
    assert first[1] == second[0]  # consecutive scheduled runs meet
    assert first == (int(t0.timestamp() * 1000) - 300_000, int(t0.timestamp() * 1000) + 3_300_000)
    # A window in minutes is the end of the same interval: what a manual check asks for.
    assert audit_window(t0, t0 + hour, settle=5, window=15) == (first[1] - 900_000, first[1])


def test_chunks_keep_order_and_bound_their_size() -> None:
    from retail.ops.audit import chunks

    seen = [Seen("p.eu-west.orders", 0, n, None, "bad") for n in range(12)]
    parts = list(chunks(iter(seen), 5))
    assert [len(p) for p in parts] == [5, 5, 2]
    assert [s for p in parts for s in p] == seen
