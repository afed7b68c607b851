"""Readable tables of a :class:`retail.report.Report` for the terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

from retail.report import Report

out = Console(width=None if sys.stdout.isatty() else 120)


def money(cents: int, currency: str | None) -> str:
    # Yen has no minor unit: its amounts are whole yen already.
    if currency == "JPY":
        return f"{cents:,} JPY"
    return f"{cents / 100:,.2f} {currency or ''}".strip()


ORDER_COLUMNS = ("order", "store", "region", "time", "total", "items")


def order_cells(order: dict) -> tuple[str, ...]:
    """A customer's order as the cells of a row under :data:`ORDER_COLUMNS`."""
    return (
        order["order_id"],
        order["store_id"],
        order["region"],
        str(order["event_time"]),
        money(order["total_cents"], order["currency"]),
        str(order["items"]),
    )


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    return t


def report_tables(report: Report) -> list[Table]:
    """Every table of the report, in reading order."""
    tables = [
        _table(
            f"Sales by region, {report.day} (UTC)",
            ("region", "orders", "revenue", "stores", "busiest store"),
            (
                (
                    r.region,
                    f"{r.orders:,}",
                    ", ".join(money(c, cur) for cur, c in sorted(r.revenue_by_currency.items()))
                    or "-",
                    str(len(r.stores)),
                    f"{r.stores[0].store_id} ({r.stores[0].orders} orders)" if r.stores else "-",
                )
                for r in report.regions
            ),
        )
    ]
    tables += [
        _table(
            f"Top products in {region}",
            ("sku", "units", "revenue"),
            (
                (
                    p.sku,
                    f"{p.units:,}",
                    ", ".join(money(c, cur) for cur, c in sorted(p.revenue_by_currency.items())),
                )
                for p in products
            ),
        )
        for region, products in report.top_products.items()
    ]
    tables += [
        _table(
            f"{store}: sales by hour",
            ("hour", "orders", "revenue"),
            (
                (f"{h['hour']:02d}:00", str(h["orders"]), money(h["revenue_cents"], h["currency"]))
                for h in hours
            ),
        )
        for store, hours in report.store_hours.items()
    ]
    tables += [
        _table(
            f"{store}: lowest stock",
            ("sku", "on hand", "as of"),
            ((s["sku"], str(s["quantity"]), s["as_of"]) for s in levels),
        )
        for store, levels in report.stock.items()
    ]
    tables += [
        _table(f"Orders of {customer}", ORDER_COLUMNS, (order_cells(o) for o in orders))
        for customer, orders in report.customer_orders.items()
    ]
    return tables


def print_report(report: Report) -> None:
    for table in report_tables(report):
        out.print(table)
