"""The retail questions, answered from the query tables and the materialized view.

Every query reads one partition (a region's day, a store's day, a customer, a store): the
tables were shaped for these questions, so no query scans the cluster. What spans several
stores (a region's top products, its sales per hour) adds up the stores' own partitions, read
concurrently; the stores come from the region's day.

Revenue stays per currency everywhere: a region's stores sell in several currencies, and a sum
of euros and pounds means nothing. What is added across stores of different currencies is a
count (orders, units).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from cassandra.cluster import Session

from retail.cassandra import run_all
from retail.rows import KEYSPACE

HOURS = range(24)

# The single-partition reads done once per store; each is prepared once per call and its
# partitions read concurrently.
QUERIES = {
    "store_hours": (
        f"SELECT hour, order_count, revenue_cents, currency FROM {KEYSPACE}.sales_by_store_hour "
        "WHERE store_id = ? AND day = ?"
    ),
    "store_products": (
        f"SELECT sku, units, revenue_cents FROM {KEYSPACE}.product_sales_by_store_day "
        "WHERE store_id = ? AND day = ?"
    ),
    "store_stock": f"SELECT sku, quantity, as_of FROM {KEYSPACE}.stock_by_store WHERE store_id = ?",
}

# The rollups the report reads, for a reader who wants to know where the numbers come from.
SOURCES = (
    "sales_by_region_day",
    "sales_by_store_hour",
    "product_sales_by_store_day",
    "stock_by_store",
)


@dataclass(frozen=True)
class StoreSales:
    store_id: str
    orders: int
    revenue_cents: int
    currency: str | None


@dataclass(frozen=True)
class RegionSales:
    region: str
    day: str
    orders: int
    revenue_by_currency: dict[str, int]
    stores: list[StoreSales]


@dataclass(frozen=True)
class ProductSales:
    sku: str
    units: int
    revenue_by_currency: dict[str, int]  # minor units; never summed across currencies


@dataclass(frozen=True)
class HourSales:
    hour: int
    orders: int
    revenue_by_currency: dict[str, int]  # minor units; never summed across currencies


@dataclass(frozen=True)
class StockLevel:
    store_id: str
    sku: str
    quantity: int
    as_of: str


@dataclass
class Report:
    day: str
    regions: list[RegionSales] = field(default_factory=list)
    top_products: dict[str, list[ProductSales]] = field(default_factory=dict)
    # Every hour of the day (0 to 23) per region, its stores' hours added up.
    region_hours: dict[str, list[HourSales]] = field(default_factory=dict)
    store_hours: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    customer_orders: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stock: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The lowest levels among the stores in ``stock``, lowest first.
    lowest_stock: list[StockLevel] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def region_sales(session: Session, region: str, day: date) -> RegionSales:
    rows = session.execute(
        "SELECT store_id, order_count, revenue_cents, currency "
        f"FROM {KEYSPACE}.sales_by_region_day WHERE region = %s AND day = %s",
        [region, day],
    )
    stores = sorted(
        (
            StoreSales(r.store_id, r.order_count, r.revenue_cents, r.currency)
            for r in rows
            if r.order_count  # a store whose only order moved to another day holds zero
        ),
        key=lambda s: -s.orders,
    )
    by_currency: dict[str, int] = defaultdict(int)
    for s in stores:
        by_currency[s.currency or "?"] += s.revenue_cents
    return RegionSales(
        region, day.isoformat(), sum(s.orders for s in stores), dict(by_currency), stores
    )


def top_products(
    session: Session, stores: list[StoreSales], day: date, limit: int = 5
) -> list[ProductSales]:
    """The products that sold the most units in ``stores`` on ``day``, with their revenue in
    each currency they sold in."""
    stmt = session.prepare(QUERIES["store_products"])
    results = run_all(session, [(stmt, (s.store_id, day)) for s in stores], concurrency=32)
    return rank_products(zip(stores, results, strict=True), limit)


def rank_products(
    sold: Iterable[tuple[StoreSales, Iterable[Any]]], limit: int
) -> list[ProductSales]:
    """The ``limit`` products with the most units over the stores' product rows (``sku``,
    ``units``, ``revenue_cents``), revenue kept in each store's currency; ties by SKU."""
    units: dict[str, int] = defaultdict(int)
    revenue: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for store, rows in sold:
        for r in rows:
            units[r.sku] += r.units
            revenue[r.sku][store.currency or "?"] += r.revenue_cents
    ranked = sorted(units, key=lambda sku: (-units[sku], sku))[:limit]
    return [ProductSales(sku, units[sku], dict(revenue[sku])) for sku in ranked if units[sku]]


def stores_hours(
    session: Session, store_ids: Sequence[str], day: date
) -> dict[str, list[dict[str, Any]]]:
    """Each store's sales by hour on ``day`` (one partition per store, read concurrently)."""
    stmt = session.prepare(QUERIES["store_hours"])
    results = run_all(session, [(stmt, (s, day)) for s in store_ids], concurrency=32)
    return {
        store_id: [
            {
                "hour": r.hour,
                "orders": r.order_count,
                "revenue_cents": r.revenue_cents,
                "currency": r.currency,
            }
            for r in rows
        ]
        for store_id, rows in zip(store_ids, results, strict=True)
    }


def sum_hours(stores: Iterable[Iterable[dict[str, Any]]]) -> list[HourSales]:
    """Every hour of the day with the orders of ``stores`` (their hour rows) added up and the
    revenue added per currency; an hour without sales holds zero orders."""
    orders = dict.fromkeys(HOURS, 0)
    revenue: dict[int, dict[str, int]] = {h: defaultdict(int) for h in HOURS}
    for rows in stores:
        for r in rows:
            orders[r["hour"]] += r["orders"]
            revenue[r["hour"]][r["currency"] or "?"] += r["revenue_cents"]
    return [HourSales(h, orders[h], {c: v for c, v in revenue[h].items() if v}) for h in HOURS]


def busiest_store(sales: RegionSales) -> str | None:
    """The store with the most orders of the region's day (revenue cannot rank stores that
    sell in different currencies); ties go to the lowest store id."""
    if not sales.stores:
        return None
    return min(sales.stores, key=lambda s: (-s.orders, s.store_id)).store_id


def customer_orders(session: Session, customer_id: str) -> list[dict[str, Any]]:
    rows = session.execute(
        "SELECT order_id, store_id, region, event_time, total_cents, currency, item_count "
        f"FROM {KEYSPACE}.orders_by_customer WHERE customer_id = %s",
        [customer_id],
    )
    orders = [
        {
            "order_id": r.order_id,
            "store_id": r.store_id,
            "region": r.region,
            "event_time": r.event_time.isoformat(),
            "total_cents": r.total_cents,
            "currency": r.currency,
            "items": r.item_count,
        }
        for r in rows
    ]
    return sorted(orders, key=lambda o: o["event_time"], reverse=True)


def stock(
    session: Session, store_ids: Sequence[str], lowest: int = 10
) -> dict[str, list[dict[str, Any]]]:
    """The ``lowest`` stock levels of each store, lowest first (one partition per store, read
    concurrently)."""
    stmt = session.prepare(QUERIES["store_stock"])
    results = run_all(session, [(stmt, (s,)) for s in store_ids], concurrency=32)
    return {
        store_id: sorted(
            ({"sku": r.sku, "quantity": r.quantity, "as_of": r.as_of.isoformat()} for r in rows),
            key=lambda s: (s["quantity"], s["sku"]),
        )[:lowest]
        for store_id, rows in zip(store_ids, results, strict=True)
    }


def lowest_stock(levels: dict[str, list[dict[str, Any]]], n: int = 10) -> list[StockLevel]:
    """The ``n`` lowest SKU/store levels among the stores of ``levels``, lowest first; ties
    by store, then SKU."""
    every = [
        StockLevel(store_id, s["sku"], s["quantity"], s["as_of"])
        for store_id, store_levels in levels.items()
        for s in store_levels
    ]
    return sorted(every, key=lambda s: (s.quantity, s.store_id, s.sku))[:n]


def build(
    session: Session,
    regions: list[str],
    day: date,
    *,
    store: str | None = None,
    customer: str | None = None,
    top: int = 5,
    lowest: int = 10,
) -> Report:
    """The full report: sales by region, store and hour, top products, a store's hours and
    stock (each region's busiest store's if none is named, so there is always one), the
    ``lowest`` stock levels among those stores, and a customer's orders if one is named."""
    report = Report(day=day.isoformat())
    for region in regions:
        sales = region_sales(session, region, day)
        report.regions.append(sales)
        report.top_products[region] = top_products(session, sales.stores, day, top)
    shown = [store] if store else [s for r in report.regions if (s := busiest_store(r))]
    sold_in = {r.region: [s.store_id for s in r.stores] for r in report.regions}
    every_store = list(dict.fromkeys([*(s for ids in sold_in.values() for s in ids), *shown]))
    hours = stores_hours(session, every_store, day)
    for region, ids in sold_in.items():
        report.region_hours[region] = sum_hours(hours[s] for s in ids)
    report.store_hours = {s: hours[s] for s in shown}
    report.stock = stock(session, shown, lowest)
    report.lowest_stock = lowest_stock(report.stock, lowest)
    if customer:
        report.customer_orders[customer] = customer_orders(session, customer)
    return report
