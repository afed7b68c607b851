"""A :class:`retail.report.Report` as one self-contained HTML page with charts.

plotly.js is embedded in the page (once, with the first chart), so the page opens without a
network: no CDN, no script or style from anywhere else. The charts that add up stores of
several currencies count orders and units; revenue appears only per currency, in the tables.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from retail.render import ORDER_COLUMNS, money, order_cells
from retail.report import (
    HOURS,
    SOURCES,
    HourSales,
    RegionSales,
    Report,
    StockLevel,
    busiest_store,
    sum_hours,
)
from retail.rows import KEYSPACE

# The id of each chart's div, in page order (the browser test looks them up).
REGION_HOURS = "chart-region-hours"
TOP_PRODUCTS = "chart-top-products"
STORE_DAY = "chart-store-day"
LOWEST_STOCK = "chart-lowest-stock"
CHARTS = (REGION_HOURS, TOP_PRODUCTS, STORE_DAY, LOWEST_STOCK)

# No "share" button: it uploads the chart to Plotly Cloud, and this page stays local.
_CONFIG = {"displaylogo": False, "showSendToCloud": False, "responsive": True}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
h1 { margin-bottom: 0.2rem; }
.source, .note { color: #555; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.75rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
"""


def write_html(report: Report, path: Path | str) -> Path:
    """Write ``report`` as one self-contained HTML page to ``path`` (its folder made if
    missing); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(report), encoding="utf-8")
    return out


def page(report: Report) -> str:
    """The whole page: title, where the numbers come from, the four charts and the tables."""
    regions = ", ".join(r.region for r in report.regions)
    title = f"Retail report {report.day} (UTC): {regions}"
    stores = ", ".join(report.store_hours) or "none"
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="source">{_esc(_source_line())}</p>',
        '<p class="note">Revenue is shown per currency and never added across currencies: '
        "where stores of several currencies are added up, the charts count orders or units.</p>",
        "<h2>Sales per region per hour</h2>",
        _chart(region_hours_figure(report), REGION_HOURS, with_library=True),
        _regions_table(report),
        "<h2>Top products</h2>",
        _chart(top_products_figure(report), TOP_PRODUCTS),
        _products_table(report),
        f"<h2>A store's day: {_esc(stores)}</h2>",
        '<p class="note">The store asked for, else the busiest store (most orders) of each '
        "region.</p>",
        _chart(store_day_figure(report), STORE_DAY),
        _store_hours_table(report),
        "<h2>Lowest stock</h2>",
        f'<p class="note">The lowest levels on hand in {_esc(stores)}.</p>',
        _chart(lowest_stock_figure(report), LOWEST_STOCK),
        _stock_table(report.lowest_stock),
        *_customer_sections(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _source_line() -> str:
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    tables = ", ".join(f"{KEYSPACE}.{t}" for t in SOURCES)
    return (
        f"Numbers from the Cassandra rollups {tables}, as the regional consumers had written "
        f"them when this page was made ({written} UTC). Hours and days are UTC."
    )


# -- charts -------------------------------------------------------------------------------------


def region_hours_figure(report: Report) -> go.Figure:
    """Orders per hour of the day, a line per region (its stores' hours added up)."""
    fig = go.Figure(
        [
            go.Scatter(
                x=[h.hour for h in hours],
                y=[h.orders for h in hours],
                customdata=[revenue(h.revenue_by_currency) for h in hours],
                hovertemplate="%{x}:00 UTC: %{y} orders<br>%{customdata}",
                mode="lines+markers",
                name=region,
            )
            for region, hours in report.region_hours.items()
        ]
    )
    fig.update_layout(xaxis_title="hour (UTC)", yaxis_title="orders")
    fig.update_xaxes(range=[-0.5, 23.5], dtick=1)
    return _styled(fig)


def top_products_figure(report: Report) -> go.Figure:
    """Units sold of each region's top products, a panel per region, the best on top."""
    regions = list(report.top_products) or ["no region"]
    fig = make_subplots(rows=1, cols=len(regions), subplot_titles=regions)
    for col, region in enumerate(regions, start=1):
        products = report.top_products.get(region, [])
        fig.add_trace(
            go.Bar(
                x=[p.units for p in products],
                y=[p.sku for p in products],
                customdata=[revenue(p.revenue_by_currency) for p in products],
                hovertemplate="%{y}: %{x} units<br>%{customdata}",
                orientation="h",
                name=region,
            ),
            row=1,
            col=col,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="units")
    return _styled(fig, legend=False)


def store_day_figure(report: Report) -> go.Figure:
    """Orders per hour of the stores shown, a bar for each hour with orders."""
    fig = go.Figure()
    for store, rows in report.store_hours.items():
        hours = _hours_with_orders(rows)
        fig.add_trace(
            go.Bar(
                x=[h.hour for h in hours],
                y=[h.orders for h in hours],
                customdata=[revenue(h.revenue_by_currency) for h in hours],
                hovertemplate="%{x}:00 UTC: %{y} orders<br>%{customdata}",
                name=store,
            )
        )
    fig.update_layout(barmode="group", xaxis_title="hour (UTC)", yaxis_title="orders")
    fig.update_xaxes(range=[HOURS[0] - 0.5, HOURS[-1] + 0.5], dtick=1)
    return _styled(fig)


def lowest_stock_figure(report: Report) -> go.Figure:
    """The lowest stock levels, a bar per SKU and store, the lowest on top."""
    levels = report.lowest_stock
    fig = go.Figure(
        go.Bar(
            x=[s.quantity for s in levels],
            y=[f"{s.sku} @ {s.store_id}" for s in levels],
            customdata=[s.as_of for s in levels],
            hovertemplate="%{y}: %{x} on hand<br>as of %{customdata}",
            orientation="h",
            name="on hand",
        )
    )
    fig.update_layout(xaxis_title="units on hand")
    fig.update_yaxes(autorange="reversed")
    return _styled(fig, legend=False)


def _styled(fig: go.Figure, *, legend: bool = True) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        height=420,
        margin={"l": 60, "r": 20, "t": 40, "b": 50},
        showlegend=legend,
    )
    return fig


def _chart(fig: go.Figure, div_id: str, *, with_library: bool = False) -> str:
    # The first chart carries plotly.js inline; the others use it (scripts run in page order).
    return pio.to_html(
        fig,
        config=_CONFIG,
        include_plotlyjs=with_library,
        full_html=False,
        div_id=div_id,
        default_height="420px",
    )


# -- tables -------------------------------------------------------------------------------------


def revenue(by_currency: dict[str, int]) -> str:
    """Revenue in each currency, side by side (never a total across currencies)."""
    return ", ".join(money(c, cur) for cur, c in sorted(by_currency.items())) or "-"


def _regions_table(report: Report) -> str:
    return _table(
        ("region", "orders", "revenue", "stores", "busiest store"),
        (
            (
                r.region,
                f"{r.orders:,}",
                revenue(r.revenue_by_currency),
                str(len(r.stores)),
                _busiest(r),
            )
            for r in report.regions
        ),
        numeric={1, 3},
    )


def _busiest(sales: RegionSales) -> str:
    store = busiest_store(sales)
    orders = next((s.orders for s in sales.stores if s.store_id == store), 0)
    return f"{store} ({orders:,} orders)" if store else "-"


def _products_table(report: Report) -> str:
    return _table(
        ("region", "rank", "sku", "units", "revenue"),
        (
            (region, str(rank), p.sku, f"{p.units:,}", revenue(p.revenue_by_currency))
            for region, products in report.top_products.items()
            for rank, p in enumerate(products, start=1)
        ),
        numeric={1, 3},
    )


def _store_hours_table(report: Report) -> str:
    return _table(
        ("store", "hour (UTC)", "orders", "revenue"),
        (
            (store, f"{h.hour:02d}:00", str(h.orders), revenue(h.revenue_by_currency))
            for store, rows in report.store_hours.items()
            for h in _hours_with_orders(rows)
        ),
        numeric={2},
    )


def _hours_with_orders(rows: Iterable[dict]) -> list[HourSales]:
    """A store's hours that had orders (a row of zeros is an order moved to another hour)."""
    return [h for h in sum_hours([rows]) if h.orders]


def _stock_table(levels: Sequence[StockLevel]) -> str:
    return _table(
        ("store", "sku", "on hand", "as of"),
        ((s.store_id, s.sku, str(s.quantity), s.as_of) for s in levels),
        numeric={2},
    )


def _customer_sections(report: Report) -> list[str]:
    return [
        f"<h2>Orders of {_esc(customer)}</h2>\n"
        + _table(ORDER_COLUMNS, (order_cells(o) for o in orders), numeric={5})
        for customer, orders in report.customer_orders.items()
    ]


def _table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], numeric: Collection[int] = ()
) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_esc(v)}</td>' if i in numeric else f"<td>{_esc(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
