"""`retail report --html` on the real stack: real events through the consumers, the page opened
in a real headless Chromium, every chart drawn with what the report's data says."""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path
from typing import Any

from selenium.webdriver.remote.webdriver import WebDriver

from retail.events import Order
from retail.report_html import CHARTS, LOWEST_STOCK, REGION_HOURS, STORE_DAY, TOP_PRODUCTS
from tests.browser import chromium
from tests.integration.conftest import retail
from tests.integration.pipeline import PipelineRun, stream

N = 1_500
TOP = 5

# What each chart drew, read from its SVG (what a person sees), and what it was given to plot.
DRAWN = """
const drawn = {};
for (const id of arguments[0]) {
  const gd = document.getElementById(id);
  const svg = gd && gd.querySelector("svg.main-svg");
  const traces = Array.from(gd ? gd.querySelectorAll("g.trace") : []);
  if (!svg || !traces.length) { drawn[id] = null; continue; }
  drawn[id] = {
    marks: traces.map(t => t.querySelectorAll("g.point path, path.point").length),
    visible_bars: Array.from(gd.querySelectorAll("g.trace.bars g.point path"))
      .filter(p => { const r = p.getBoundingClientRect(); return r.width > 0 && r.height > 0; })
      .length,
    data: (gd.data || []).map(t => ({name: t.name, x: t.x, y: t.y})),
  };
}
return drawn;
"""


def test_the_html_report_draws_its_four_charts_in_headless_chromium(
    run: PipelineRun, tmp_path: Path
) -> None:
    events, orders, moves = stream(N, seed=21)
    assert run.produce(events) == N
    run.start_all()
    run.wait_consumed()
    assert run.stop_consumers() == dict.fromkeys(run.regions, 0)
    run.assert_exact(orders, moves)  # every DC has every row the report will read

    day = Counter(o.event_time.date() for o in orders).most_common(1)[0][0]
    path = tmp_path / "report.html"
    done = retail("report", "--day", day.isoformat(), "--top", str(TOP), "--html", str(path))
    assert f"wrote {path}" in done.stderr
    data = json.loads(
        retail("report", "--day", day.isoformat(), "--top", str(TOP), "--json").stdout
    )
    assert_data_matches_the_events(data, [o for o in orders if o.event_time.date() == day], day)

    text = path.read_text(encoding="utf-8")
    assert f"Retail report {day} (UTC): {', '.join(run.regions)}" in text
    # Nothing to fetch: no tag loads anything, plotly.js is in the page.
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=", text, re.I)

    with chromium() as driver:
        driver.get(path.as_uri())
        drawn = wait_drawn(driver)
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert fetched == [], f"the page fetched {fetched}"
    assert errors == [], errors

    regions = [r["region"] for r in data["regions"]]
    hours = drawn[REGION_HOURS]
    assert [t["name"] for t in hours["data"]] == regions
    assert hours["marks"] == [24] * len(regions)  # a marker per hour, per region
    assert [t["y"] for t in hours["data"]] == [
        [h["orders"] for h in data["region_hours"][r]] for r in regions
    ]

    products = drawn[TOP_PRODUCTS]
    top = {r: p for r, p in data["top_products"].items() if p}
    assert [t["name"] for t in products["data"]] == regions
    assert products["marks"] == [len(p) for p in top.values()]
    assert products["visible_bars"] == sum(len(p) for p in top.values())
    assert {t["name"]: t["x"] for t in products["data"] if t["x"]} == {
        r: [p["units"] for p in ps] for r, ps in top.items()
    }

    store_day = drawn[STORE_DAY]
    with_orders = {
        s: [h["orders"] for h in sorted(rows, key=lambda h: h["hour"]) if h["orders"]]
        for s, rows in data["store_hours"].items()
    }
    assert [t["name"] for t in store_day["data"]] == list(with_orders)
    assert store_day["marks"] == [len(v) for v in with_orders.values()]
    assert store_day["visible_bars"] == sum(len(v) for v in with_orders.values())
    assert [t["y"] for t in store_day["data"]] == list(with_orders.values())

    lowest = drawn[LOWEST_STOCK]
    assert lowest["marks"] == [len(data["lowest_stock"])]
    assert lowest["data"][0]["x"] == [s["quantity"] for s in data["lowest_stock"]]


def wait_drawn(driver: WebDriver, timeout: float = 30) -> dict[str, Any]:
    """What each chart drew, once every one has its SVG; fails with the browser's log if a
    chart never draws (plotly.js missing or broken, a script error)."""
    deadline = time.monotonic() + timeout
    while True:
        drawn = driver.execute_script(DRAWN, list(CHARTS))
        if all(drawn[c] for c in CHARTS):
            return drawn
        if time.monotonic() > deadline:
            missing = [c for c in CHARTS if not drawn[c]]
            raise AssertionError(f"charts never drew: {missing}; {driver.get_log('browser')}")
        time.sleep(0.2)


def assert_data_matches_the_events(data: dict[str, Any], orders: list[Order], day: date) -> None:
    """The report's numbers, recomputed here from the events of ``day``: orders per region
    and hour, each region's top products and busiest store; lowest stock lowest first."""
    assert data["day"] == day.isoformat()
    per_hour: dict[str, Counter[int]] = defaultdict(Counter)
    per_store: dict[str, Counter[str]] = defaultdict(Counter)
    units: dict[str, Counter[str]] = defaultdict(Counter)
    for o in orders:
        per_hour[o.region][o.event_time.hour] += 1
        per_store[o.region][o.store_id] += 1
        for line in o.lines:
            units[o.region][line.sku] += line.quantity
    for region, hours in data["region_hours"].items():
        assert [h["orders"] for h in hours] == [per_hour[region][h] for h in range(24)], region
    for region, products in data["top_products"].items():
        ranked = sorted(units[region].items(), key=lambda su: (-su[1], su[0]))[:TOP]
        assert [(p["sku"], p["units"]) for p in products] == ranked, region
    busiest = [
        min(per_store[r["region"]].items(), key=lambda sc: (-sc[1], sc[0]))[0]
        for r in data["regions"]
        if per_store[r["region"]]
    ]
    assert list(data["store_hours"]) == busiest
    levels = [s["quantity"] for s in data["lowest_stock"]]
    assert 0 < len(levels) <= 10 and levels == sorted(levels)
