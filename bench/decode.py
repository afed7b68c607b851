"""Decode and validate the same events with msgspec (``retail.events.decode``) and pydantic v2.

The question it answers: which library should the consumers decode with? Both sides do the same
work on the same bytes: parse the JSON, pick the type by its ``type`` tag, check every field
constraint, the identifier patterns, the order total, the per-kind inventory quantity, and the
time window, and normalise ``event_time`` to UTC. Before timing, the script checks that both
accept all the generated events with the same values and refuse every invalid example of
``schemas/examples/invalid``, so the numbers compare equal work.

    .venv/bin/python bench/decode.py            # a table
    .venv/bin/python bench/decode.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

from retail.events import (
    CURRENCIES,
    CUSTOMER_ID_PATTERN,
    INVENTORY_REASONS,
    MAX_ABSOLUTE,
    MAX_DELTA,
    MAX_FUTURE,
    MAX_LINE_QUANTITY,
    MAX_LINES,
    MAX_TOTAL_CENTS,
    MAX_UNIT_PRICE_CENTS,
    MIN_EVENT_TIME,
    SKU_PATTERN,
    STORE_ID_PATTERN,
    InvalidEvent,
    decode,
    encode,
)
from retail.generator import StreamGenerator
from retail.topology import REGIONS

INVALID_EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples" / "invalid"

# -- the same model in pydantic v2 ---------------------------------------------------------------
# strict: no "5" -> 5 coercion, as msgspec; extra="ignore": unknown fields tolerated. pydantic's
# regex engine (Rust) anchors ``$`` at the very end, like the fullmatch the msgspec side uses.

StoreId = Annotated[str, StringConstraints(pattern=STORE_ID_PATTERN)]
CustomerId = Annotated[str, StringConstraints(pattern=CUSTOMER_ID_PATTERN)]
Sku = Annotated[str, StringConstraints(pattern=SKU_PATTERN)]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Region = Literal[tuple(r.dc for r in REGIONS)]  # type: ignore[valid-type]
Currency = Literal[CURRENCIES]  # type: ignore[valid-type]
Reason = Literal[INVENTORY_REASONS]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


_limit = MIN_EVENT_TIME


class _Timed(_Strict):
    event_time: AwareDatetime

    @field_validator("event_time")
    @classmethod
    def _utc_and_plausible(cls, value: datetime) -> datetime:
        global _limit
        value = value.astimezone(UTC)
        # The same lazily refreshed "now + 1 day" as retail.events.decode: equal work.
        if value > _limit:
            _limit = datetime.now(UTC) + MAX_FUTURE
        if value > _limit:
            raise ValueError(f"{value.isoformat()} is more than 1 day in the future")
        if value < MIN_EVENT_TIME:
            raise ValueError(f"{value.isoformat()} is before {MIN_EVENT_TIME.isoformat()}")
        return value


class PLineItem(_Strict):
    sku: Sku
    quantity: int = Field(ge=1, le=MAX_LINE_QUANTITY)
    unit_price_cents: int = Field(ge=1, le=MAX_UNIT_PRICE_CENTS)


class POrder(_Timed):
    type: Literal["order"]
    event_id: EventId
    order_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    store_id: StoreId
    region: Region
    customer_id: CustomerId
    currency: Currency
    lines: tuple[PLineItem, ...] = Field(min_length=1, max_length=MAX_LINES)
    total_cents: int = Field(ge=1, le=MAX_TOTAL_CENTS)
    schema_version: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _total(self) -> POrder:
        total = sum(line.quantity * line.unit_price_cents for line in self.lines)
        if total != self.total_cents:
            raise ValueError(f"total_cents is {self.total_cents} but the lines add up to {total}")
        return self


class PInventoryMovement(_Timed):
    type: Literal["inventory"]
    event_id: EventId
    store_id: StoreId
    region: Region
    sku: Sku
    kind: Literal["delta", "absolute"]
    quantity: int = Field(ge=-MAX_DELTA, le=MAX_ABSOLUTE)
    reason: Reason
    schema_version: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _per_kind(self) -> PInventoryMovement:
        q = self.quantity
        if self.kind == "delta" and (q == 0 or not -MAX_DELTA <= q <= MAX_DELTA):
            raise ValueError(f"a delta movement must be non-zero; got {q}")
        if self.kind == "absolute" and q < 0:
            raise ValueError(f"an absolute stock level must be >= 0; got {q}")
        return self


PEvent = Annotated[POrder | PInventoryMovement, Field(discriminator="type")]
_ADAPTER: TypeAdapter[POrder | PInventoryMovement] = TypeAdapter(PEvent)


def pydantic_decode(data: bytes) -> POrder | PInventoryMovement:
    """Decode and validate one message with pydantic (raises pydantic.ValidationError)."""
    return _ADAPTER.validate_json(data)


# -- the measurement ---------------------------------------------------------------------------


def summary(event: Any) -> tuple[Any, ...]:
    """What both decoders must agree on for one event."""
    if hasattr(event, "lines"):
        lines = tuple((li.sku, li.quantity, li.unit_price_cents) for li in event.lines)
        return (event.event_id, event.store_id, event.event_time, event.total_cents, lines)
    return (event.event_id, event.store_id, event.event_time, event.kind, event.quantity)


def check_equivalent(messages: list[bytes]) -> None:
    """Both decoders accept the same events with the same values, and refuse the same junk."""
    for data in messages:
        if summary(decode(data)) != summary(pydantic_decode(data)):
            raise SystemExit(f"the decoders disagree on {data!r}")
    for path in sorted(INVALID_EXAMPLES.glob("*.json")):
        data = path.read_bytes()
        try:
            decode(data)
        except InvalidEvent:
            pass
        else:
            raise SystemExit(f"msgspec accepted {path.name}")
        try:
            pydantic_decode(data)
        except pydantic.ValidationError:
            pass
        else:
            raise SystemExit(f"pydantic accepted {path.name}")


def time_decoder(fn: Callable[[bytes], object], messages: list[bytes], reps: int) -> list[float]:
    """Seconds per pass over ``messages``, one per repetition."""
    fn(messages[0])  # warm any lazy set-up
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for data in messages:
            fn(data)
        runs.append(time.perf_counter() - t0)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events to decode per pass")
    parser.add_argument("--reps", type=int, default=3, help="passes per library")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    # Event times end about now: realistic, and inside the window both sides check.
    start = datetime.now(UTC) - timedelta(hours=1)
    events = list(StreamGenerator(seed=args.seed, start=start).events(args.events))
    messages = [encode(e) for e in events]
    orders = sum(1 for m in messages if m.startswith(b'{"type":"order"'))
    check_equivalent(messages)

    libraries = {
        "msgspec": (f"msgspec {version('msgspec')}", decode),
        "pydantic": (f"pydantic {pydantic.VERSION}", pydantic_decode),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, (label, fn) in libraries.items():
        runs = time_decoder(fn, messages, args.reps)
        best = min(runs)
        results[name] = {
            "label": label,
            "runs_s": [round(r, 4) for r in runs],
            "best_events_per_s": round(len(messages) / best),
            "median_events_per_s": round(len(messages) / statistics.median(runs)),
            "best_us_per_event": round(best / len(messages) * 1e6, 3),
        }
    for r in results.values():
        r["slower_than_msgspec"] = round(
            r["best_us_per_event"] / results["msgspec"]["best_us_per_event"], 2
        )

    if args.json:
        report = {
            "events": len(messages),
            "orders": orders,
            "inventory_movements": len(messages) - orders,
            "mean_bytes": round(sum(map(len, messages)) / len(messages), 1),
            "repetitions": args.reps,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "results": results,
        }
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"decode + validate {len(messages):,} events ({orders:,} orders, "
        f"{len(messages) - orders:,} inventory movements, "
        f"{sum(map(len, messages)) / len(messages):.0f} B each on average), "
        f"{args.reps} passes each, Python {platform.python_version()}"
    )
    header = f"{'library':<18} {'best ev/s':>12} {'median ev/s':>12} {'µs/event':>9} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for r in results.values():
        print(
            f"{r['label']:<18} {r['best_events_per_s']:>12,} {r['median_events_per_s']:>12,} "
            f"{r['best_us_per_event']:>9.2f} {r['slower_than_msgspec']:>6.2f}x"
        )
    print("ratio: time per event relative to msgspec (higher is slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
