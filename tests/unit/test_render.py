from __future__ import annotations

from rich.console import Console

from retail.render import money, report_tables
from retail.report import ProductSales, RegionSales, Report, StoreSales


def test_money_keeps_yen_whole_and_others_in_minor_units() -> None:
    assert money(123456, "EUR") == "1,234.56 EUR"
    assert money(1200, "JPY") == "1,200 JPY"


def test_the_report_renders_every_section_a_user_asked_for() -> None:
    report = Report(
        day="2026-03-01",
        regions=[
            RegionSales(
                "eu-west",
                "2026-03-01",
                3,
                {"EUR": 4500, "GBP": 1000},
                [
                    StoreSales("store-0001", 2, 4500, "EUR"),
                    StoreSales("store-0002", 1, 1000, "GBP"),
                ],
            )
        ],
        top_products={"eu-west": [ProductSales("SKU-000042", 7, {"EUR": 2100})]},
        store_hours={
            "store-0001": [{"hour": 9, "orders": 2, "revenue_cents": 4500, "currency": "EUR"}]
        },
        stock={"store-0001": [{"sku": "SKU-000042", "quantity": 3, "as_of": "2026-03-01T09:00"}]},
        customer_orders={
            "cust-000001": [
                {
                    "order_id": "o-1",
                    "store_id": "store-0001",
                    "region": "eu-west",
                    "event_time": "2026-03-01T09:00",
                    "total_cents": 4500,
                    "currency": "EUR",
                    "items": 2,
                }
            ]
        },
    )
    console = Console(width=200, record=True)
    for table in report_tables(report):
        console.print(table)
    text = console.export_text()
    for expected in (
        "Sales by region, 2026-03-01",
        "45.00 EUR, 10.00 GBP",
        "store-0001 (2 orders)",
        "Top products in eu-west",
        "SKU-000042",
        "store-0001: sales by hour",
        "09:00",
        "store-0001: lowest stock",
        "Orders of cust-000001",
        "o-1",
    ):
        assert expected in text, expected
