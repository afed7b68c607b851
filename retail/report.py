"""The retail questions, answered from the query tables and the materialized view.

Every query reads one partition (a region's day, a store's day, a customer, a store): the
tables were shaped for these questions, so no query scans the cluster. The top products of a
region's day add up its stores' days (the stores come from the region's day).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

from retail.rows import KEYSPACE


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


@dataclass
class Report:
    day: str
    regions: list[RegionSales] = field(default_factory=list)
    top_products: dict[str, list[ProductSales]] = field(default_factory=dict)
    store_hours: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    customer_orders: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stock: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

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
    units: dict[str, int] = defaultdict(int)
    revenue: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    stmt = session.prepare(
        f"SELECT sku, units, revenue_cents FROM {KEYSPACE}.product_sales_by_store_day "
        "WHERE store_id = ? AND day = ?"
    )
    results = execute_concurrent_with_args(
        session, stmt, [(s.store_id, day) for s in stores], concurrency=32
    )
    for (ok, rows), store in zip(results, stores, strict=True):
        if not ok:
            raise rows
        for r in rows:
            units[r.sku] += r.units
            revenue[r.sku][store.currency or "?"] += r.revenue_cents
    ranked = sorted(units, key=lambda sku: (-units[sku], sku))[:limit]
    return [ProductSales(sku, units[sku], dict(revenue[sku])) for sku in ranked if units[sku]]


def store_hours(session: Session, store_id: str, day: date) -> list[dict[str, Any]]:
    rows = session.execute(
        f"SELECT hour, order_count, revenue_cents, currency FROM {KEYSPACE}.sales_by_store_hour "
        "WHERE store_id = %s AND day = %s",
        [store_id, day],
    )
    return [
        {
            "hour": r.hour,
            "orders": r.order_count,
            "revenue_cents": r.revenue_cents,
            "currency": r.currency,
        }
        for r in rows
    ]


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


def stock(session: Session, store_id: str, lowest: int = 10) -> list[dict[str, Any]]:
    rows = session.execute(
        f"SELECT sku, quantity, as_of FROM {KEYSPACE}.stock_by_store WHERE store_id = %s",
        [store_id],
    )
    levels = [{"sku": r.sku, "quantity": r.quantity, "as_of": r.as_of.isoformat()} for r in rows]
    return sorted(levels, key=lambda s: (s["quantity"], s["sku"]))[:lowest]


def build(
    session: Session,
    regions: list[str],
    day: date,
    *,
    store: str | None = None,
    customer: str | None = None,
    top: int = 5,
) -> Report:
    """The full report: sales by region and store, top products, a store's hours and stock
    (the busiest store's if none is named), and a customer's orders if one is named."""
    report = Report(day=day.isoformat())
    for region in regions:
        sales = region_sales(session, region, day)
        report.regions.append(sales)
        report.top_products[region] = top_products(session, sales.stores, day, top)
    stores = [store] if store else [r.stores[0].store_id for r in report.regions if r.stores]
    for s in stores:
        report.store_hours[s] = store_hours(session, s, day)
        report.stock[s] = stock(session, s)
    if customer:
        report.customer_orders[customer] = customer_orders(session, customer)
    return report
