"""The materialized_view_rebuild DAG against the live cluster: a consistent view and exact
rollups are left alone; the view audit rotates over the ring; a corrupted rollup and a dropped
view are rebuilt; a retried rebuild keeps the view its first try recreated."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cassandra.cluster import Cluster, Session

from retail import migrations
from retail.cassandra import connect, wait_for_schema_agreement
from retail.catalog import catalog
from retail.credentials import CASSANDRA_OPS
from retail.events import Event, InventoryMovement, Order
from retail.generator import StreamGenerator
from retail.metrics import MemoryMetrics
from retail.ops import views
from retail.rows import TABLES, Position, stock_level
from retail.topology import Topology
from streaming.sink import CassandraSink
from tests.integration.airflow import run_dag, task_states, xcom
from tests.integration.pipeline import stored_rollups

VIEW = catalog().view("orders_by_customer")
N = 400


def _truncate(session: Session) -> None:
    for table in TABLES:
        session.execute(f"TRUNCATE retail.{table}", timeout=60)
    session.execute(f"TRUNCATE {views.CURSOR_TABLE}", timeout=60)


@pytest.fixture(scope="module")
def db(topology: Topology, airflow: None) -> Iterator[tuple[Cluster, Session]]:
    # ALL: the test's own writes and checks see every replica, so nothing waits on replication.
    cluster, session = connect(
        topology, topology.datacenters[0].name, consistency_level="ALL", role=CASSANDRA_OPS
    )
    migrations.migrate(cluster, session, topology)
    _truncate(session)
    yield cluster, session
    _ensure_view(cluster, session)  # whatever happened, leave the schema as the migrations say
    _truncate(session)
    cluster.shutdown()


def _ensure_view(cluster: Cluster, session: Session) -> None:
    cluster.refresh_schema_metadata()
    if VIEW.name not in cluster.metadata.keyspaces["retail"].views:
        session.execute(VIEW.ddl.strip().rstrip(";"), timeout=120)
        wait_for_schema_agreement(cluster, f"creating {VIEW.name}")


@pytest.fixture(scope="module")
def events(db: tuple[Cluster, Session], topology: Topology) -> list[Event]:
    """A few hundred events of the last half hour, written through the consumer's sink."""
    _, session = db
    gen = StreamGenerator(
        seed=23,
        stores_per_region=3,
        skus=25,
        customers_per_region=15,
        start=datetime.now(UTC) - timedelta(minutes=30),
        events_per_second=2,
    )
    evs = list(gen.events(N))
    sink = CassandraSink(session, MemoryMetrics(), local_dc=topology.datacenters[0].name)
    positions = [Position("retail.eu-west.orders", 0, offset) for offset in range(N)]
    for start in range(0, N, 100):  # a few batches, as the consumer writes them
        sink.write(list(zip(positions, evs, strict=True))[start : start + 100])
    return evs


def expected_rollups(evs: list[Event]) -> dict[str, dict[tuple, tuple]]:
    """The rollups recomputed here from the events themselves."""
    hours: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    days: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    products: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    moves: dict[tuple, list] = defaultdict(list)
    for e in evs:
        if isinstance(e, Order):
            t = e.event_time.astimezone(UTC)
            for bucket in (
                hours[(e.store_id, t.date(), t.hour)],
                days[(e.region, t.date(), e.store_id)],
            ):
                bucket[0] += 1
                bucket[1] += e.total_cents
            for li in e.lines:
                p = products[(e.store_id, t.date(), li.sku)]
                p[0] += li.quantity
                p[1] += li.quantity * li.unit_price_cents
        elif isinstance(e, InventoryMovement):
            # As the base row keeps it: Cassandra's timestamp has milliseconds, and a delta
            # less than a millisecond after a count is "at the same instant" once stored.
            stored = e.event_time.replace(microsecond=e.event_time.microsecond // 1000 * 1000)
            moves[(e.store_id, e.sku)].append((stored, e.event_id, e.kind, e.quantity))
    return {
        "sales_by_store_hour": {k: tuple(v) for k, v in hours.items()},
        "sales_by_region_day": {k: tuple(v) for k, v in days.items()},
        "product_sales_by_store_day": {k: tuple(v) for k, v in products.items()},
        "stock_by_store": {k: (stock_level(v)[0],) for k, v in moves.items()},
    }


def built_on(cluster: Cluster, session: Session) -> dict[str, str]:
    """The view's build status per node address, as system_distributed records it."""
    address = {h.host_id: h.address for h in cluster.metadata.all_hosts()}
    return {
        address[r.host_id]: r.status
        for r in session.execute(
            "SELECT host_id, status FROM system_distributed.view_build_status "
            "WHERE keyspace_name = 'retail' AND view_name = %s",
            (VIEW.name,),
        )
    }


def exporter_value(topology: Topology, sample: str) -> float:
    """A sample's value on the statsd_exporter (``name{labels}``), 0 if it is not there."""
    text = httpx.get(f"{topology.statsd_exporter.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def wait_exporter(topology: Topology, sample: str, want: float, timeout: float = 20) -> None:
    """StatsD is UDP, fire and forget: poll until the exporter shows ``want``."""
    deadline = time.monotonic() + timeout
    while (got := exporter_value(topology, sample)) != want:
        assert time.monotonic() < deadline, f"{sample} is {got}, expected {want}"
        time.sleep(0.2)


CONF = {"view": "all", "rebuild": "if_inconsistent", "window_hours": 3, "fix_rollups": True}


def test_a_consistent_view_and_exact_rollups_are_left_alone(
    db: tuple[Cluster, Session], events: list[Event], topology: Topology
) -> None:
    _, session = db
    expected = expected_rollups(events)
    assert stored_rollups(session) == expected  # the sink wrote them right

    run = run_dag("materialized_view_rebuild", CONF)

    assert str(run.state) == "success", task_states(run)
    assert task_states(run) == {
        "audit_views": "success",
        "rebuild_views": "skipped",
        "fix_rollups": "success",
    }
    audit = xcom(run, "audit_views")[VIEW.name]
    n_orders = sum(isinstance(e, Order) for e in events)
    assert audit["consistent"] is True
    assert (audit["base_rows"], audit["view_rows"], audit["missing_rows"]) == (
        n_orders,
        n_orders,
        0,
    )
    assert audit["sampled_base"] > 0 and audit["sampled_view"] > 0
    # The table is smaller than one run's budget: the run audits the whole ring each way.
    assert {r: audit["rings"][r]["covered_this_run"] for r in ("base", "view")} == {
        "base": 1.0,
        "view": 1.0,
    }
    assert audit["sampled_view"] == n_orders
    assert audit["build_status"] == {n.name: "SUCCESS" for n in topology.nodes}
    tables = xcom(run, "fix_rollups")["tables"]
    assert {t: (r["buckets_checked"], r["buckets_corrected"]) for t, r in tables.items()} == {
        t: (len(expected[t]), 0) for t in expected
    }
    assert stored_rollups(session) == expected


def test_the_view_audit_goes_round_the_ring_in_bounded_slices(
    db: tuple[Cluster, Session], events: list[Event]
) -> None:
    _, session = db
    session.execute(f"TRUNCATE {views.CURSOR_TABLE}", timeout=60)
    n_orders = sum(isinstance(e, Order) for e in events)
    budget = n_orders // 2 + 1  # orders are partitions of one row: exactly this many a run
    conf = {"view": VIEW.name, "rebuild": "never", "audit_rows": budget, "fix_rollups": False}

    first = xcom(run_dag("materialized_view_rebuild", conf), "audit_views")
    second = xcom(run_dag("materialized_view_rebuild", conf), "audit_views")

    a, b = first[VIEW.name]["rings"]["base"], second[VIEW.name]["rings"]["base"]
    assert (a["rows_read"], a["passes"], a["passes_completed_this_run"]) == (budget, 0, 0)
    assert 0 < a["covered_this_run"] < 1 and a["pass_covered"] == a["covered_this_run"]
    # The second run goes on where the first stopped, ends the pass and starts the next one.
    assert b["start_token"] == a["next_token"]
    assert (b["rows_read"], b["passes"], b["passes_completed_this_run"]) == (budget, 1, 1)
    assert first[VIEW.name]["rings"]["view"]["covered_this_run"] < 1
    assert second[VIEW.name]["rings"]["view"]["passes"] == 1
    assert first[VIEW.name]["consistent"] and second[VIEW.name]["consistent"]
    stored = {
        r.ring: r.next_token
        for r in session.execute(
            f"SELECT ring, next_token FROM {views.CURSOR_TABLE} WHERE view_name = %s",
            (VIEW.name,),
        )
    }
    assert stored["base"] == b["next_token"]


def test_a_corrupted_rollup_and_a_dropped_view_are_rebuilt(
    db: tuple[Cluster, Session], events: list[Event], topology: Topology
) -> None:
    cluster, session = db
    expected = expected_rollups(events)
    (store, day, hour), (count, cents) = sorted(expected["sales_by_store_hour"].items())[0]
    session.execute(
        "UPDATE retail.sales_by_store_hour SET revenue_cents = %s "
        "WHERE store_id = %s AND day = %s AND hour = %s",
        (cents + 12_345, store, day, hour),
    )
    (s_store, sku), (level,) = sorted(expected["stock_by_store"].items())[0]
    session.execute(
        "UPDATE retail.stock_by_store SET quantity = 999999 WHERE store_id = %s AND sku = %s",
        (s_store, sku),
    )
    session.execute(f"DROP MATERIALIZED VIEW retail.{VIEW.name}", timeout=120)
    wait_for_schema_agreement(cluster, f"dropping {VIEW.name}")
    assert stored_rollups(session) != expected
    corrected = 'retail_rollup_corrected_total{table="%s"}'
    before = {t: exporter_value(topology, corrected % t) for t in expected}

    run = run_dag("materialized_view_rebuild", CONF)

    assert str(run.state) == "success", task_states(run)
    assert task_states(run) == dict.fromkeys(
        ("audit_views", "rebuild_views", "fix_rollups"), "success"
    )
    audit = xcom(run, "audit_views")[VIEW.name]
    assert (audit["exists"], audit["consistent"]) == (False, False)
    rebuilt = xcom(run, "rebuild_views")
    assert (rebuilt["rebuilt"], rebuilt["kept"]) == ([VIEW.name], [])
    after = rebuilt["audits"][VIEW.name]
    assert after["consistent"] is True and after["not_built"] == []

    # Exactly the two corrections made, and the rollups equal the sums of the base rows again.
    tables = xcom(run, "fix_rollups")["tables"]
    assert {t: r["buckets_corrected"] for t, r in tables.items()} == {
        "sales_by_store_hour": 1,
        "sales_by_region_day": 0,
        "product_sales_by_store_day": 0,
        "stock_by_store": 1,
    }
    currency = next(e.currency for e in events if isinstance(e, Order) and e.store_id == store)
    assert tables["sales_by_store_hour"]["examples"] == [
        {
            "key": [store, day.isoformat(), hour],
            "stored": [count, cents + 12_345, currency],
            "expected": [count, cents, currency],
        }
    ]
    assert tables["stock_by_store"]["examples"] == [
        {"key": [s_store, sku], "stored": [999999], "expected": [level]}
    ]
    assert stored_rollups(session) == expected
    wait_exporter(topology, corrected % "sales_by_store_hour", before["sales_by_store_hour"] + 1)
    wait_exporter(topology, corrected % "stock_by_store", before["stock_by_store"] + 1)
    wait_exporter(topology, corrected % "sales_by_region_day", before["sales_by_region_day"])
    wait_exporter(topology, f'retail_view_inconsistent{{view="{VIEW.name}"}}', 0)

    # The view is back, built on every node, and answers for a customer.
    cluster.refresh_schema_metadata()
    assert VIEW.name in cluster.metadata.keyspaces["retail"].views
    assert built_on(cluster, session) == {n.address: "SUCCESS" for n in topology.nodes}
    by_customer: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if isinstance(e, Order):
            by_customer[e.customer_id].add(e.order_id)
    customer = max(by_customer, key=lambda c: len(by_customer[c]))
    rows = session.execute(
        f"SELECT order_id, store_id FROM retail.{VIEW.name} WHERE customer_id = %s", (customer,)
    )
    assert {r.order_id for r in rows} == by_customer[customer]
    assert len(by_customer[customer]) > 1


def view_id(session: Session) -> object:
    return session.execute(
        "SELECT id FROM system_schema.views WHERE keyspace_name = 'retail' AND view_name = %s",
        (VIEW.name,),
    ).one()[0]


def test_a_retried_rebuild_does_not_drop_the_view_its_first_try_recreated(
    db: tuple[Cluster, Session], events: list[Event], topology: Topology
) -> None:
    cluster, session = db
    _ensure_view(cluster, session)
    before = view_id(session)
    # No time for the build: the first try recreates the view, then fails its deadline.
    conf = {"view": VIEW.name, "rebuild": "always", "build_timeout": 0, "fix_rollups": False}

    run = run_dag("materialized_view_rebuild", conf)

    assert str(run.state) == "success", task_states(run)
    tries = {ti.task_id: ti.try_number for ti in run.get_task_instances()}
    assert tries["rebuild_views"] == 2, tries
    recorded = session.execute(
        f"SELECT view_id, try_number FROM {views.REBUILD_TABLE} "
        "WHERE view_name = %s AND run_id = %s",
        (VIEW.name, run.run_id),
    ).one()
    # The view now is the one the first try created: the second try did not drop it again.
    assert recorded.try_number == 1
    assert view_id(session) == recorded.view_id != before
    rebuilt = xcom(run, "rebuild_views")
    assert rebuilt["kept"] == [VIEW.name]
    assert rebuilt["view_ids"] == {VIEW.name: str(recorded.view_id)}
    after = rebuilt["audits"][VIEW.name]
    n_orders = sum(isinstance(e, Order) for e in events)
    assert (after["consistent"], after["base_rows"], after["view_rows"]) == (
        True,
        n_orders,
        n_orders,
    )
    assert built_on(cluster, session) == {n.address: "SUCCESS" for n in topology.nodes}
