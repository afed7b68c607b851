from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from retail.errors import ConfigError
from retail.events import Event, InventoryMovement, Order, decode, encode
from retail.generator import DEFAULT_START, REGION_CURRENCIES, StreamGenerator
from retail.topology import REGIONS


@pytest.fixture(scope="module")
def stream() -> list[Event]:
    """20,000 events of the default generator: about 5,000 orders."""
    return list(StreamGenerator(seed=42).events(20_000))


def orders_of(events: list[Event]) -> list[Order]:
    return [e for e in events if isinstance(e, Order)]


def test_the_same_seed_gives_the_same_stream_and_another_seed_another() -> None:
    first = [encode(e) for e in StreamGenerator(seed=1).events(2_000)]
    again = [encode(e) for e in StreamGenerator(seed=1).events(2_000)]
    other = [encode(e) for e in StreamGenerator(seed=2).events(2_000)]
    assert first == again
    assert len(set(first) & set(other)) == 0


def test_successive_calls_continue_one_stream() -> None:
    gen = StreamGenerator(seed=3)
    pieces = list(gen.events(150)) + list(gen.events(250))
    assert pieces == list(StreamGenerator(seed=3).events(400))
    assert len({e.event_id for e in pieces}) == 400


def test_every_generated_event_is_valid_on_the_wire(stream: list[Event]) -> None:
    for event in stream:
        assert decode(encode(event)) == event


def test_stores_span_every_region_with_their_regions_currencies(stream: list[Event]) -> None:
    gen = StreamGenerator(seed=42)
    assert len(gen.stores) == 60
    assert [s.store_id for s in gen.stores[:2]] == ["store-0001", "store-0002"]
    assert {s.region for s in gen.stores} == {r.dc for r in REGIONS}
    for event in stream:
        assert event.region == gen.store_region(event.store_id)
        if isinstance(event, Order):
            assert event.currency in dict(REGION_CURRENCIES[event.region])
    assert {o.region for o in orders_of(stream)} == {r.dc for r in REGIONS}


def test_customers_are_drawn_from_their_stores_region(stream: list[Event]) -> None:
    per_region = 50_000
    for order in orders_of(stream):
        number = int(order.customer_id.removeprefix("cust-"))
        region_index = [r.dc for r in REGIONS].index(order.region)
        assert region_index * per_region < number <= (region_index + 1) * per_region


def test_a_few_hot_stores_take_a_large_share_of_the_orders(stream: list[Event]) -> None:
    orders = orders_of(stream)
    per_store = Counter(o.store_id for o in orders)
    top3 = sum(n for _, n in per_store.most_common(3))
    assert top3 / len(orders) > 0.20
    # ... while the tail is still alive: most stores get orders.
    assert len(per_store) >= 55


def test_observed_store_shares_follow_the_configured_ones(stream: list[Event]) -> None:
    orders = orders_of(stream)
    per_store = Counter(o.store_id for o in orders)
    expected = StreamGenerator(seed=42).order_shares()
    assert sum(expected.values()) == pytest.approx(1.0)
    hottest = max(expected, key=expected.__getitem__)
    assert per_store[hottest] / len(orders) == pytest.approx(expected[hottest], abs=0.03)


def test_product_popularity_is_skewed(stream: list[Event]) -> None:
    lines = [line for o in orders_of(stream) for line in o.lines]
    per_sku = Counter(line.sku for line in lines)
    top_200 = sum(n for _, n in per_sku.most_common(200))  # 10% of the 2000 SKUs
    assert top_200 / len(lines) > 0.5


def test_baskets_are_mostly_small_and_lines_are_distinct_products(stream: list[Event]) -> None:
    sizes = Counter(len(o.lines) for o in orders_of(stream))
    assert set(sizes) <= set(range(1, 9))
    assert sizes[1] > sizes[2] > sizes[3] > sizes[5]
    for order in orders_of(stream):
        assert len({line.sku for line in order.lines}) == len(order.lines)


def test_a_sku_has_one_shelf_price_per_currency(stream: list[Event]) -> None:
    gen = StreamGenerator(seed=42)
    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    for order in orders_of(stream):
        for line in order.lines:
            seen[line.sku, order.currency].add(line.unit_price_cents)
            assert line.unit_price_cents == gen.price(line.sku, order.currency)
            if order.currency == "JPY":
                assert line.unit_price_cents % 10 == 0  # whole yen, rounded like a shelf label
            elif line.unit_price_cents >= 100:
                assert line.unit_price_cents % 100 == 99
    assert all(len(prices) == 1 for prices in seen.values())


def test_each_order_is_followed_by_a_sale_movement_per_line(stream: list[Event]) -> None:
    """After an order: per line, a sale of it, preceded by an opening count of the product the
    first time that store sells it (and only then)."""
    checked = 0
    opened: set[tuple[str, str]] = set()
    for i, event in enumerate(stream):
        if not isinstance(event, Order) or i + 2 * len(event.lines) >= len(stream):
            continue
        j = i + 1
        for line in event.lines:
            key = (event.store_id, line.sku)
            nxt = stream[j]
            assert isinstance(nxt, InventoryMovement)
            if key not in opened:
                assert (nxt.store_id, nxt.sku, nxt.kind, nxt.reason) == (*key, "absolute", "count")
                assert nxt.quantity > 0
                opened.add(key)
                j += 1
                nxt = stream[j]
                assert isinstance(nxt, InventoryMovement)
            assert (nxt.store_id, nxt.sku, nxt.kind, nxt.reason) == (*key, "delta", "sale")
            assert nxt.quantity == -line.quantity
            assert nxt.event_time > event.event_time
            j += 1
        checked += 1
    assert checked > 4_000


def test_deltas_between_two_stock_counts_add_up_to_the_second_count(
    stream: list[Event],
) -> None:
    """What an inventory consumer relies on: the counts agree with the movements."""
    level: dict[tuple[str, str], int] = {}
    reasons = Counter(e.reason for e in stream if isinstance(e, InventoryMovement))
    verified = 0
    for event in stream:
        if not isinstance(event, InventoryMovement):
            continue
        key = (event.store_id, event.sku)
        if event.kind == "absolute":
            if key in level:
                assert level[key] == event.quantity, key
                verified += 1
            level[key] = event.quantity
        elif key in level:
            level[key] += event.quantity
            assert level[key] >= 0, key
    assert verified > 20  # 32 pairs of counts of the same stock in this stream
    assert {"sale", "restock", "return", "shrinkage", "count"} <= set(reasons)
    assert reasons["sale"] > 10 * reasons["restock"]


def test_times_increase_strictly_from_the_start_at_the_configured_rate() -> None:
    start = datetime(2025, 3, 1, 9, tzinfo=UTC)
    events = list(StreamGenerator(seed=8, start=start, events_per_second=500).events(10_000))
    times = [e.event_time for e in events]
    assert times[0] > start
    assert all(a < b for a, b in itertools.pairwise(times))
    # 10,000 events at 500/s: about 20 s of simulated time.
    assert times[-1] - start == pytest.approx(timedelta(seconds=20), rel=0.05)
    last_per_store: dict[str, datetime] = {}
    for e in events:
        assert e.event_time > last_per_store.get(e.store_id, start)
        last_per_store[e.store_id] = e.event_time


def test_the_default_start_is_fixed_not_the_wall_clock() -> None:
    first = next(iter(StreamGenerator(seed=1)))
    assert DEFAULT_START < first.event_time < DEFAULT_START + timedelta(seconds=1)


def test_an_injected_hot_key_suddenly_takes_its_share_of_the_orders() -> None:
    gen = StreamGenerator(seed=9)
    before = orders_of(list(gen.events(5_000)))
    hot = gen.inject_hot_key(share=0.5)
    after = orders_of(list(gen.events(15_000)))
    assert sum(o.store_id == hot for o in before) / len(before) < 0.02
    assert sum(o.store_id == hot for o in after) / len(after) == pytest.approx(0.5, abs=0.03)
    assert gen.order_shares()[hot] == pytest.approx(0.5, abs=0.01)
    gen.clear_hot_key()
    cooled = orders_of(list(gen.events(5_000)))
    assert sum(o.store_id == hot for o in cooled) / len(cooled) < 0.02


def test_a_named_store_can_be_made_hot() -> None:
    gen = StreamGenerator(seed=9)
    assert gen.inject_hot_key("store-0042", share=1.0) == "store-0042"
    assert {o.store_id for o in orders_of(list(gen.events(500)))} == {"store-0042"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stores_per_region": 0}, "stores_per_region=0"),
        ({"stores_per_region": 3334}, "choose 1 to 3333"),
        ({"skus": 0}, "skus=0"),
        ({"hot_stores": 61}, "choose 0 to 60"),
        ({"events_per_second": 0}, "must be positive"),
        ({"start": datetime(2025, 1, 1)}, "timezone-aware"),
    ],
)
def test_impossible_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StreamGenerator(seed=1, **kwargs)  # type: ignore[arg-type]


def test_unknown_stores_are_refused() -> None:
    gen = StreamGenerator(seed=1, stores_per_region=2)
    assert gen.store_region("store-0003") == "us-east"
    with pytest.raises(ConfigError, match="store-0001 to store-0006"):
        gen.store_region("store-0007")
    with pytest.raises(ConfigError, match="unknown store"):
        gen.inject_hot_key("store-9999")


def test_a_store_has_the_same_currency_whatever_the_seed() -> None:
    # Streams of two seeds into one store-day (the demo's stream, then a chaos run) must agree
    # on the store's currency, or its sales buckets mix currencies.
    def currencies(seed: int) -> dict[str, str]:
        gen = StreamGenerator(seed=seed)
        return {e.store_id: e.currency for e in gen.events(3000) if isinstance(e, Order)}

    one, other = currencies(1), currencies(2)
    shared = one.keys() & other.keys()
    assert len(shared) > 20
    assert {s: one[s] for s in shared} == {s: other[s] for s in shared}
