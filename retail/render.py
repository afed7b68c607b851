"""Readable tables of a :class:`retail.report.Report` for the terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from retail.report import Report

out = Console(width=None if sys.stdout.isatty() else 120)


def money(cents: int, currency: str | None) -> str:
    # Yen has no minor unit: its amounts are whole yen already.
    if currency == "JPY":
        return f"{cents:,} JPY"
    return f"{cents / 100:,.2f} {currency or ''}".strip()


def print_report(report: Report) -> None:
    t = Table(title=f"Sales by region, {report.day} (UTC)", title_justify="left")
    for col in ("region", "orders", "revenue", "stores", "busiest store"):
        t.add_column(col)
    for r in report.regions:
        revenue = ", ".join(money(c, cur) for cur, c in sorted(r.revenue_by_currency.items()))
        busiest = f"{r.stores[0].store_id} ({r.stores[0].orders} orders)" if r.stores else "-"
        t.add_row(r.region, f"{r.orders:,}", revenue or "-", str(len(r.stores)), busiest)
    out.print(t)
    for region, products in report.top_products.items():
        t = Table(title=f"Top products in {region}", title_justify="left")
        for col in ("sku", "units", "revenue (minor units)"):
            t.add_column(col)
        for p in products:
            t.add_row(p.sku, f"{p.units:,}", f"{p.revenue_cents:,}")
        out.print(t)
    for store, hours in report.store_hours.items():
        t = Table(title=f"{store}: sales by hour", title_justify="left")
        for col in ("hour", "orders", "revenue"):
            t.add_column(col)
        for h in hours:
            t.add_row(
                f"{h['hour']:02d}:00", str(h["orders"]), money(h["revenue_cents"], h["currency"])
            )
        out.print(t)
    for store, levels in report.stock.items():
        t = Table(title=f"{store}: lowest stock", title_justify="left")
        for col in ("sku", "on hand", "as of"):
            t.add_column(col)
        for s in levels:
            t.add_row(s["sku"], str(s["quantity"]), s["as_of"])
        out.print(t)
    for customer, orders in report.customer_orders.items():
        t = Table(title=f"Orders of {customer}", title_justify="left")
        for col in ("order", "store", "region", "time", "total", "items"):
            t.add_column(col)
        for o in orders:
            t.add_row(
                o["order_id"],
                o["store_id"],
                o["region"],
                o["event_time"],
                money(o["total_cents"], o["currency"]),
                str(o["items"]),
            )
        out.print(t)
