"""A realistic, seeded stream of retail events, for load tests, demos and skew tests (no Kafka).

What makes it realistic enough to find problems a uniform stream hides:

* Stores live in every region of the topology, numbered ``store-0001`` upwards region by region,
  each with a fixed currency of its region. A few *hot* stores take a large share of the orders
  and the rest follow a Zipf law, so partitions keyed by store are unevenly loaded, as in
  production. :meth:`StreamGenerator.inject_hot_key` makes one store suddenly very hot.
* Products follow a Zipf law too, with a fixed price per SKU and currency (``*.99`` endings; JPY
  has no minor unit, so its "cents" are whole yen rounded to 10).
* Baskets have 1 to 8 lines, mostly one or two (geometric), quantities mostly 1.
* Inventory follows sales: an order is immediately followed by one ``sale`` delta per line
  (negative, same store and SKU), and the generator keeps a book of every store's stock, so
  ``restock`` (when the stock falls to the reorder point), ``return``, ``shrinkage`` and periodic
  ``count`` (absolute) movements agree with the sales: replaying the deltas after a count gives
  the next count, and no stock goes negative.
* Event times advance from ``start`` with exponential gaps averaging ``1/events_per_second``
  (simulated time, not the wall clock), so they increase strictly, globally and per store.

Everything, event ids included, comes from one ``random.Random(seed)``: the same arguments give
the same stream. Order ids carry a tag of the seed (``store-0007-1f3a9c2e-00000042``), so streams
of different seeds never share an order id: a second run with another seed adds orders instead
of re-sending (and so replacing) the first run's.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import logging
import random
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from retail.errors import ConfigError
from retail.events import Event, InventoryMovement, LineItem, Order
from retail.topology import REGIONS

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_START", "REGION_CURRENCIES", "Store", "StreamGenerator"]

DEFAULT_START = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)

# Currencies of each region's stores, with the share of stores using each.
REGION_CURRENCIES: dict[str, tuple[tuple[str, float], ...]] = {
    "eu-west": (("EUR", 0.75), ("GBP", 0.25)),
    "us-east": (("USD", 0.8), ("CAD", 0.2)),
    "ap-southeast": (("JPY", 0.4), ("SGD", 0.3), ("AUD", 0.3)),
}
# Minor units of each currency per euro cent (rough 2025 rates; JPY: whole yen per euro cent).
_RATES: dict[str, float] = {
    "EUR": 1.0,
    "GBP": 0.85,
    "USD": 1.08,
    "CAD": 1.47,
    "JPY": 1.6,
    "SGD": 1.45,
    "AUD": 1.65,
}

_STORE_ZIPF_S = 0.8  # the non-hot stores: a long tail, but no store is idle
_SKU_ZIPF_S = 1.0  # products: the classic "20% of the products make 80% of the sales" shape
_MAX_BASKET = 8
_BASKET_P = 0.5  # P(1 line) = 0.5, P(2) = 0.25, ...
_MAX_QUANTITY = 12
_QUANTITY_P = 0.75
_REORDER_POINT = 20
_TARGET_STOCK = 200
# A single sale line takes at most _MAX_QUANTITY and the stock is topped up as soon as it falls
# to the reorder point, so the book never goes negative.
assert _MAX_QUANTITY <= _REORDER_POINT
_RETURN_P = 0.03
_SHRINKAGE_P = 0.01
_COUNT_EVERY = 25  # orders at a store between two stock counts
_RECENT_SALES = 1_000  # what a return can refer to


@dataclass(frozen=True)
class Store:
    """A store: its id, the data center (region) it belongs to, and its fixed currency."""

    store_id: str
    region: str
    currency: str


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


def _geometric_cum_weights(p: float, maximum: int) -> list[float]:
    return list(itertools.accumulate(p * (1 - p) ** (k - 1) for k in range(1, maximum + 1)))


def _shelf_price(euro_cents: float, currency: str) -> int:
    """A price as a shop would print it: ``12.99``, or ``1,390`` yen."""
    amount = euro_cents * _RATES[currency]
    if currency == "JPY":
        return max(10, round(amount / 10) * 10)
    if amount < 100:
        return max(1, round(amount))
    return round(amount / 100) * 100 - 1


class StreamGenerator:
    """A deterministic stream of :class:`~retail.events.Order` and inventory events.

    ``events(n)`` and iteration continue one shared stream: two calls of ``events(100)`` give
    the first and the second hundred events of the same stream.
    """

    def __init__(
        self,
        seed: int,
        stores_per_region: int = 20,
        skus: int = 2000,
        hot_stores: int = 3,
        *,
        hot_share: float = 0.4,
        customers_per_region: int = 50_000,
        start: datetime = DEFAULT_START,
        events_per_second: float = 1_000.0,
    ) -> None:
        """Build the stores, products and prices for ``seed``.

        ``hot_stores`` stores (chosen by the seed, in any region) together take about
        ``hot_share`` of the orders; the others share the rest by a Zipf law.
        """
        n_stores = stores_per_region * len(REGIONS)
        if stores_per_region < 1 or n_stores > 9999:
            raise ConfigError(
                f"stores_per_region={stores_per_region}: store ids have four digits, so choose "
                f"1 to {9999 // len(REGIONS)}"
            )
        if not 1 <= skus <= 999_999:
            raise ConfigError(f"skus={skus}: SKU ids have six digits, so choose 1 to 999999")
        if not 0 <= hot_stores <= n_stores:
            raise ConfigError(f"hot_stores={hot_stores}: choose 0 to {n_stores} (all stores)")
        if not 0.0 <= hot_share < 1.0:
            raise ConfigError(f"hot_share={hot_share}: choose a fraction in [0, 1)")
        if not 1 <= customers_per_region <= 999_999 // len(REGIONS):
            raise ConfigError(
                f"customers_per_region={customers_per_region}: customer ids have six digits, "
                f"so choose 1 to {999_999 // len(REGIONS)}"
            )
        if start.tzinfo is None:
            raise ConfigError(f"start={start.isoformat()}: give a timezone-aware time")
        if events_per_second <= 0:
            raise ConfigError(f"events_per_second={events_per_second}: must be positive")
        missing = [r.dc for r in REGIONS if r.dc not in REGION_CURRENCIES]
        if missing:
            raise ConfigError(f"no currencies known for region(s) {missing}: add them above")

        self.seed = seed
        self.tag = hashlib.blake2b(str(seed).encode(), digest_size=4).hexdigest()
        self._rng = rng = random.Random(seed)
        self._start = start.astimezone(UTC)
        self._rate = events_per_second
        self._customers = customers_per_region

        # The stores are the same whatever the seed: a store's currency is its own (drawn from
        # its number), so streams of different seeds into one store-day agree on it, as two
        # days of a real store do. The seed decides everything else.
        stores = []
        for i, region in enumerate(REGIONS):
            codes, shares = zip(*REGION_CURRENCIES[region.dc], strict=True)
            for j in range(stores_per_region):
                number = i * stores_per_region + j + 1
                currency = random.Random(f"store-{number}").choices(codes, weights=shares)[0]
                stores.append(Store(f"store-{number:04d}", region.dc, currency))
        self._stores: tuple[Store, ...] = tuple(stores)
        self._by_id = {s.store_id: s for s in stores}
        self._region_index = {r.dc: i for i, r in enumerate(REGIONS)}

        # Popularity: a random order of the stores; the first hot_stores share hot_share.
        ranked = list(self._stores)
        rng.shuffle(ranked)
        hot, rest = ranked[:hot_stores], ranked[hot_stores:]
        weights: dict[str, float] = {}
        for group, share in ((hot, hot_share), (rest, 1.0 - hot_share if hot else 1.0)):
            zipf = _zipf_weights(len(group), _STORE_ZIPF_S)
            for store, w in zip(group, zipf, strict=True):
                weights[store.store_id] = share * w / sum(zipf)
        self._weights = weights
        self._store_ids = [s.store_id for s in self._stores]
        self._store_cum = list(itertools.accumulate(weights[s] for s in self._store_ids))
        self._hot_key: tuple[str, float] | None = None

        # Products: a Zipf law over a random order of the SKUs, a base price in euro cents drawn
        # from a log-normal (median 8 EUR, a long tail of expensive items), one price per
        # currency derived from it.
        self._skus = [f"SKU-{k:06d}" for k in range(1, skus + 1)]
        rng.shuffle(self._skus)
        self._sku_cum = list(itertools.accumulate(_zipf_weights(skus, _SKU_ZIPF_S)))
        self._prices: dict[tuple[str, str], int] = {}
        for sku in sorted(self._skus):
            base = min(max(rng.lognormvariate(6.7, 1.0), 50.0), 200_000.0)
            for currency in _RATES:
                self._prices[sku, currency] = _shelf_price(base, currency)

        self._basket_cum = _geometric_cum_weights(_BASKET_P, _MAX_BASKET)
        self._quantity_cum = _geometric_cum_weights(_QUANTITY_P, _MAX_QUANTITY)
        self._stream = self._produce()

    # -- the catalogue -------------------------------------------------------------------------

    @property
    def stores(self) -> tuple[Store, ...]:
        """Every store, in id order."""
        return self._stores

    def store_region(self, store_id: str) -> str:
        """The data center (region) of ``store_id``."""
        try:
            return self._by_id[store_id].region
        except KeyError:
            raise ConfigError(
                f"unknown store {store_id!r}: this generator has store-0001 to "
                f"{self._stores[-1].store_id}"
            ) from None

    def price(self, sku: str, currency: str) -> int:
        """The fixed unit price of ``sku`` in ``currency``'s minor unit (whole yen for JPY)."""
        return self._prices[sku, currency]

    def order_shares(self) -> dict[str, float]:
        """The probability that the next order goes to each store (sums to 1)."""
        if self._hot_key is None:
            return dict(self._weights)
        key, share = self._hot_key
        shares = {s: (1.0 - share) * w for s, w in self._weights.items()}
        shares[key] += share
        return shares

    # -- skew ----------------------------------------------------------------------------------

    def inject_hot_key(self, store_id: str | None = None, share: float = 0.5) -> str:
        """From the next order on, send ``share`` of all orders to one store; return its id.

        By default the least popular store is chosen: the sudden hot key of a skew test, a
        partition that was idle and now takes half of the traffic.
        """
        if not 0.0 < share <= 1.0:
            raise ConfigError(f"share={share}: choose a fraction in (0, 1]")
        key = store_id or min(self._weights, key=self._weights.__getitem__)
        self.store_region(key)  # refuses an unknown store
        self._hot_key = (key, share)
        log.debug("hot key injected: %s now takes %.0f%% of the orders", key, 100 * share)
        return key

    def clear_hot_key(self) -> None:
        """Go back to the configured store popularity."""
        self._hot_key = None

    # -- the stream ----------------------------------------------------------------------------

    def events(self, n: int) -> Iterator[Event]:
        """The next ``n`` events of the stream."""
        return itertools.islice(self._stream, n)

    def __iter__(self) -> Iterator[Event]:
        """The rest of the stream (endless)."""
        return self._stream

    def _produce(self) -> Iterator[Event]:
        rng = self._rng
        start = self._start
        elapsed_us = 0
        stock: dict[tuple[str, str], int] = {}
        order_seq: dict[str, int] = dict.fromkeys(self._store_ids, 0)
        recent_sales: deque[tuple[Store, str, int]] = deque(maxlen=_RECENT_SALES)

        def next_time() -> datetime:
            nonlocal elapsed_us
            # Exponential gaps: Poisson arrivals at the configured rate; at least 1 µs apart so
            # that times increase strictly.
            elapsed_us += max(1, int(rng.expovariate(self._rate) * 1_000_000))
            return start + timedelta(microseconds=elapsed_us)

        def event_id() -> str:
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))

        def movement(
            store: Store, sku: str, kind: Literal["delta", "absolute"], quantity: int, reason: str
        ) -> Event:
            return InventoryMovement(
                event_id=event_id(),
                store_id=store.store_id,
                region=store.region,
                sku=sku,
                kind=kind,
                quantity=quantity,
                reason=reason,
                event_time=next_time(),
            )

        while True:
            store = self._pick_store()
            order_seq[store.store_id] += 1
            seq = order_seq[store.store_id]
            lines = self._basket(store.currency)
            region_base = self._region_index[store.region] * self._customers
            yield Order(
                event_id=event_id(),
                order_id=f"{store.store_id}-{self.tag}-{seq:08d}",
                store_id=store.store_id,
                region=store.region,
                customer_id=f"cust-{region_base + rng.randint(1, self._customers):06d}",
                currency=store.currency,
                lines=lines,
                total_cents=sum(line.quantity * line.unit_price_cents for line in lines),
                event_time=next_time(),
            )
            restocks = []
            for line in lines:
                key = (store.store_id, line.sku)
                # The first time a store sells a product, the stream opens with a count of it
                # (any level above the reorder point), so that every stock level consumers
                # compute starts from a known number instead of from zero.
                level = stock.get(key)
                if level is None:
                    level = rng.randint(_REORDER_POINT + 1, _TARGET_STOCK)
                    yield movement(store, line.sku, "absolute", level, "count")
                stock[key] = level - line.quantity
                recent_sales.append((store, line.sku, line.quantity))
                yield movement(store, line.sku, "delta", -line.quantity, "sale")
                if stock[key] <= _REORDER_POINT:
                    restocks.append(key)
            for key in restocks:
                fill = _TARGET_STOCK - stock[key]
                stock[key] = _TARGET_STOCK
                yield movement(store, key[1], "delta", fill, "restock")
            if rng.random() < _RETURN_P:
                r_store, r_sku, sold = rng.choice(recent_sales)
                back = rng.randint(1, sold)
                stock[r_store.store_id, r_sku] += back
                yield movement(r_store, r_sku, "delta", back, "return")
            if rng.random() < _SHRINKAGE_P:
                sku = rng.choice(lines).sku
                if stock[store.store_id, sku] > 0:
                    stock[store.store_id, sku] -= 1
                    yield movement(store, sku, "delta", -1, "shrinkage")
            if seq % _COUNT_EVERY == 0:
                sku = lines[0].sku
                yield movement(store, sku, "absolute", stock[store.store_id, sku], "count")

    def _pick_store(self) -> Store:
        rng = self._rng
        if self._hot_key is not None and rng.random() < self._hot_key[1]:
            return self._by_id[self._hot_key[0]]
        i = bisect.bisect_left(self._store_cum, rng.random() * self._store_cum[-1])
        return self._stores[min(i, len(self._stores) - 1)]

    def _basket(self, currency: str) -> tuple[LineItem, ...]:
        rng = self._rng
        size = bisect.bisect_left(self._basket_cum, rng.random() * self._basket_cum[-1]) + 1
        skus: dict[str, None] = {}  # ordered, distinct: one line per product
        total_w = self._sku_cum[-1]
        for _ in range(size * 4):  # a popular SKU drawn twice is drawn again, a few times at most
            i = bisect.bisect_left(self._sku_cum, rng.random() * total_w)
            skus[self._skus[min(i, len(self._skus) - 1)]] = None
            if len(skus) == size:
                break
        return tuple(
            LineItem(
                sku=sku,
                quantity=bisect.bisect_left(
                    self._quantity_cum, rng.random() * self._quantity_cum[-1]
                )
                + 1,
                unit_price_cents=self._prices[sku, currency],
            )
            for sku in skus
        )
