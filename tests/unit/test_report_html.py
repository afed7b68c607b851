from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from retail.report import (
    HourSales,
    ProductSales,
    RegionSales,
    Report,
    StockLevel,
    StoreSales,
    busiest_store,
    lowest_stock,
    rank_products,
    sum_hours,
)
from retail.report_html import (
    CHARTS,
    region_hours_figure,
    store_day_figure,
    top_products_figure,
    write_html,
)

DAY = "2026-03-01"


def hour(h: int, orders: int, cents: int, currency: str | None) -> dict:
    return {"hour": h, "orders": orders, "revenue_cents": cents, "currency": currency}


def test_hours_are_added_across_stores_and_every_hour_is_there() -> None:
    hours = sum_hours(
        [[hour(9, 2, 2000, "EUR"), hour(10, 1, 500, "EUR")], [hour(9, 3, 900, "EUR")]]
    )
    assert [h.hour for h in hours] == list(range(24))
    assert hours[9] == HourSales(9, 5, {"EUR": 2900})
    assert hours[10] == HourSales(10, 1, {"EUR": 500})
    assert hours[0] == HourSales(0, 0, {})
    assert sum(h.orders for h in hours) == 6


def test_an_hours_revenue_stays_per_currency() -> None:
    hours = sum_hours([[hour(9, 2, 2000, "EUR")], [hour(9, 1, 700, "GBP")], [hour(9, 1, 5, None)]])
    assert hours[9] == HourSales(9, 4, {"EUR": 2000, "GBP": 700, "?": 5})


def test_top_products_add_units_across_stores_and_keep_each_stores_currency() -> None:
    def rows(*items: tuple[str, int, int]) -> list[SimpleNamespace]:
        return [SimpleNamespace(sku=s, units=u, revenue_cents=c) for s, u, c in items]

    eur, gbp = StoreSales("store-0001", 3, 0, "EUR"), StoreSales("store-0002", 1, 0, "GBP")
    sold = [
        (eur, rows(("SKU-A", 2, 200), ("SKU-B", 3, 900), ("SKU-Z", 0, 0))),
        (gbp, rows(("SKU-A", 2, 170), ("SKU-C", 1, 50))),
    ]
    ranked = rank_products(sold, limit=3)
    assert ranked == [
        ProductSales("SKU-A", 4, {"EUR": 200, "GBP": 170}),  # 4 units; ties go by SKU
        ProductSales("SKU-B", 3, {"EUR": 900}),
        ProductSales("SKU-C", 1, {"GBP": 50}),
    ]
    assert [p.sku for p in rank_products(sold, limit=1)] == ["SKU-A"]


def test_lowest_stock_is_the_n_lowest_pairs_across_stores() -> None:
    levels = {
        "store-0002": [
            {"sku": "SKU-A", "quantity": 0, "as_of": "t"},
            {"sku": "SKU-B", "quantity": 7, "as_of": "t"},
        ],
        "store-0001": [
            {"sku": "SKU-C", "quantity": -2, "as_of": "t"},
            {"sku": "SKU-D", "quantity": 0, "as_of": "t"},
            {"sku": "SKU-A", "quantity": 3, "as_of": "t"},
        ],
    }
    assert lowest_stock(levels, 4) == [
        StockLevel("store-0001", "SKU-C", -2, "t"),
        StockLevel("store-0001", "SKU-D", 0, "t"),  # equal levels: by store, then SKU
        StockLevel("store-0002", "SKU-A", 0, "t"),
        StockLevel("store-0001", "SKU-A", 3, "t"),
    ]
    assert lowest_stock({}, 4) == []


def test_the_busiest_store_has_the_most_orders_whatever_its_currency() -> None:
    stores = [
        StoreSales("store-0003", 5, 100, "JPY"),  # few yen are many orders all the same
        StoreSales("store-0001", 5, 99_999, "SGD"),
        StoreSales("store-0002", 2, 999_999, "AUD"),
    ]
    sales = RegionSales("ap-southeast", DAY, 12, {}, stores)
    assert busiest_store(sales) == "store-0001"  # a tie goes to the lowest id
    assert busiest_store(RegionSales("ap-southeast", DAY, 0, {}, [])) is None


def sample() -> Report:
    eur = [hour(9, 2, 4500, "EUR"), hour(11, 1, 0, "EUR"), hour(12, 0, 0, "EUR")]
    gbp = [hour(9, 1, 1000, "GBP")]
    report = Report(
        day=DAY,
        regions=[
            RegionSales(
                "eu-west",
                DAY,
                4,
                {"EUR": 4500, "GBP": 1000},
                [
                    StoreSales("store-0001", 3, 4500, "EUR"),
                    StoreSales("store-0002", 1, 1000, "GBP"),
                ],
            ),
            RegionSales("us-east", DAY, 0, {}, []),
        ],
        top_products={
            "eu-west": [
                ProductSales("SKU-000042", 7, {"EUR": 2100, "GBP": 300}),
                ProductSales("SKU-000007", 2, {"EUR": 20}),
            ],
            "us-east": [],
        },
        region_hours={"eu-west": sum_hours([eur, gbp]), "us-east": sum_hours([])},
        store_hours={"store-0001": eur},
        stock={"store-0001": [{"sku": "SKU-000042", "quantity": 3, "as_of": "2026-03-01T09:00"}]},
    )
    report.lowest_stock = lowest_stock(report.stock)
    return report


def test_the_region_chart_counts_orders_a_line_per_region_over_the_whole_day() -> None:
    fig = region_hours_figure(sample())
    assert [t.name for t in fig.data] == ["eu-west", "us-east"]
    assert [len(t.y) for t in fig.data] == [24, 24]
    assert fig.data[0].y[9] == 3  # EUR and GBP orders counted together; revenue never added
    assert "45.00 EUR, 10.00 GBP" in fig.data[0].customdata[9]


def test_the_store_chart_has_a_bar_per_hour_with_orders() -> None:
    (trace,) = store_day_figure(sample()).data
    assert (trace.name, list(trace.x), list(trace.y)) == ("store-0001", [9, 11], [2, 1])


def test_the_top_products_chart_has_a_panel_per_region() -> None:
    fig = top_products_figure(sample())
    assert [(t.name, list(t.y)) for t in fig.data] == [
        ("eu-west", ["SKU-000042", "SKU-000007"]),
        ("us-east", []),
    ]


def test_the_page_is_self_contained_and_never_adds_currencies(tmp_path: Path) -> None:
    path = write_html(sample(), tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert f"<title>Retail report {DAY} (UTC): eu-west, us-east</title>" in text
    for div in CHARTS:
        assert f'id="{div}"' in text
    # plotly.js inline, once; nothing fetched from anywhere.
    assert text.count("plotly.js v") == 1 and text.count("Plotly.newPlot(") == len(CHARTS)
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=", text)
    assert '"showSendToCloud": false' in text or '"showSendToCloud":false' in text
    assert "<td>45.00 EUR, 10.00 GBP</td>" in text  # the region's revenue, per currency
    assert not re.search(r"55\.00 [A-Z]{3}", text)  # ... never 45 EUR + 10 GBP
    assert "21.00 EUR, 3.00 GBP" in text  # a product sold in both
    assert "Numbers from the Cassandra rollups retail.sales_by_region_day" in text
