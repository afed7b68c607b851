"""The retail event model: what producers put on Kafka and what the consumers accept.

Wire format: one JSON object per Kafka message, tagged by its ``type`` field (``order`` or
``inventory``). Fields a consumer does not know are ignored, so producers can add fields before
the consumers learn about them (the tolerant-reader rule); everything the model does know is
checked.

Validation happens in three layers, cheapest first:

* msgspec checks types and per-field constraints (ranges, lengths, enums, required fields)
  while it parses, in C.
* ``__post_init__`` checks the identifier formats and the rules that are part of what an event
  *is* (the order total equals its lines, a delta movement is non-zero and bounded), and
  normalises ``event_time`` to UTC. These hold for every event, decoded or built in Python.
* :func:`decode` applies the ingestion policy: an ``event_time`` before 2000 or more than a day
  ahead of this machine's clock is refused. That depends on the wall clock, so it is not part of
  the type: building such an event in Python (a replay, a test) stays possible.

Every rejection is an :class:`InvalidEvent` whose ``reason`` names the field, what was expected
and what arrived, so a dead-letter record is readable without the code.

``python -m retail.events --schema`` prints the published JSON Schema (``schemas/``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

import msgspec
from msgspec import Meta

from retail.errors import RetailError
from retail.topology import REGIONS

__all__ = [
    "CURRENCIES",
    "CUSTOMER_ID_PATTERN",
    "EVENT_TYPES",
    "INVENTORY_REASONS",
    "MAX_FUTURE",
    "MIN_EVENT_TIME",
    "SKU_PATTERN",
    "STORE_ID_PATTERN",
    "Event",
    "InvalidEvent",
    "InventoryMovement",
    "LineItem",
    "Order",
    "decode",
    "encode",
    "json_schema",
]

CURRENCIES: tuple[str, ...] = ("EUR", "GBP", "USD", "CAD", "JPY", "SGD", "AUD")
INVENTORY_REASONS: tuple[str, ...] = (
    "sale",
    "restock",
    "return",
    "shrinkage",
    "count",
    "transfer",
)
MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
# Producers' clocks drift, and one that writes local time with a "Z" lands hours ahead; a day of
# slack admits both while still catching the years-off values of a broken clock.
MAX_FUTURE = timedelta(days=1)

MAX_LINES = 200
MAX_LINE_QUANTITY = 1_000
MAX_UNIT_PRICE_CENTS = 10_000_000
# The largest total the line limits allow; it also keeps every amount inside Cassandra's bigint.
MAX_TOTAL_CENTS = MAX_LINES * MAX_LINE_QUANTITY * MAX_UNIT_PRICE_CENTS
MAX_DELTA = 100_000
MAX_ABSOLUTE = 1_000_000

# The region of an event is a data center of the topology: derived from it so that a new DC is
# accepted as soon as topology.py knows it. Static checkers see ``str`` (a Literal built at run
# time is opaque to them); msgspec sees the Literal and rejects any other name.
if TYPE_CHECKING:
    DataCenterName: TypeAlias = str
    CurrencyCode: TypeAlias = str
    InventoryReason: TypeAlias = str
else:
    DataCenterName = Literal[tuple(r.dc for r in REGIONS)]
    CurrencyCode = Literal[CURRENCIES]
    InventoryReason = Literal[INVENTORY_REASONS]

# Identifier formats. msgspec could check these patterns itself (``Meta(pattern=...)``), but it
# spends about 350 ns per check that way, which made decoding an event 50% slower (1.45 against
# 0.97 µs); a compiled ``fullmatch`` in ``__post_init__`` costs about 100 ns. The patterns still
# go into the published schema. ``fullmatch`` matters: Python's ``$`` also matches before a
# trailing newline, so ``search`` would accept ``"store-0001\n"``.
STORE_ID_PATTERN = "^store-[0-9]{4}$"
CUSTOMER_ID_PATTERN = "^cust-[0-9]{6}$"
SKU_PATTERN = "^SKU-[0-9]{6}$"
_is_store_id = re.compile(STORE_ID_PATTERN).fullmatch
_is_customer_id = re.compile(CUSTOMER_ID_PATTERN).fullmatch
_is_sku = re.compile(SKU_PATTERN).fullmatch

EventId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        description="Idempotency key of the event; producers use a UUID string.",
    ),
]
StoreId = Annotated[
    str, Meta(examples=["store-0001"], extra_json_schema={"pattern": STORE_ID_PATTERN})
]
CustomerId = Annotated[
    str, Meta(examples=["cust-000001"], extra_json_schema={"pattern": CUSTOMER_ID_PATTERN})
]
Sku = Annotated[str, Meta(examples=["SKU-000001"], extra_json_schema={"pattern": SKU_PATTERN})]
Region = Annotated[DataCenterName, Meta(description="Data center (region) of the store.")]
Currency = Annotated[
    CurrencyCode,
    Meta(description="ISO 4217 code of the store's currency. JPY amounts are whole yen."),
]
EventTime = Annotated[
    datetime,
    Meta(
        tz=True,
        description=(
            "RFC 3339 time with a UTC offset (naive times are rejected), normalised to UTC. "
            "Consumers refuse times before 2000-01-01 or more than one day in the future."
        ),
        # For schema validators, which rarely assert "format": the offset is required. msgspec
        # also takes +hhmm without the colon, so the schema does too.
        extra_json_schema={"pattern": "(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})$"},
    ),
]
SchemaVersion = Annotated[int, Meta(ge=1, description="Version of this event's schema.")]


class InvalidEvent(RetailError):
    """A message that is not a valid retail event; ``reason`` says which field and why.

    The consumer sends the message to the dead-letter topic with this reason and moves on:
    retrying cannot make it valid.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _mismatch(field: str, value: str, pattern: str) -> str:
    shown = value if len(value) <= 40 else value[:40] + "..."
    return f"{field}: {shown!r} does not match {pattern}"


def _utc(value: datetime) -> datetime:
    """``value`` in UTC; a ValueError (which msgspec reports as a validation error) otherwise."""
    tz = value.tzinfo
    if tz is UTC:  # the common case: producers write "Z"
        return value
    if tz is None or tz.utcoffset(value) is None:
        raise ValueError(
            f"event_time: {value.isoformat()} has no UTC offset; send RFC 3339 with Z or ±hh:mm"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past datetime.max in UTC
        raise ValueError(f"event_time: {value.isoformat()} is out of range in UTC") from None


class LineItem(msgspec.Struct, frozen=True, gc=False):
    """One line of an order: a product, how many, and the price of one unit."""

    sku: Sku
    quantity: Annotated[int, Meta(ge=1, le=MAX_LINE_QUANTITY)]
    unit_price_cents: Annotated[
        int,
        Meta(
            ge=1,
            le=MAX_UNIT_PRICE_CENTS,
            description="Price of one unit in minor units of the currency (whole yen for JPY).",
        ),
    ]

    def __post_init__(self) -> None:
        if _is_sku(self.sku) is None:
            raise ValueError(_mismatch("sku", self.sku, SKU_PATTERN))


# gc=False: these structs hold only scalars and tuples of LineItems, so they cannot be part of a
# reference cycle; leaving them out of the garbage collector makes allocating them cheaper.
class Order(
    msgspec.Struct,
    frozen=True,
    gc=False,
    tag="order",
    tag_field="type",
    forbid_unknown_fields=False,
):
    """A customer's purchase at a store. ``total_cents`` equals the sum of its lines."""

    event_id: EventId
    order_id: Annotated[str, Meta(min_length=1, max_length=64)]
    store_id: StoreId
    region: Region
    customer_id: CustomerId
    currency: Currency
    lines: Annotated[tuple[LineItem, ...], Meta(min_length=1, max_length=MAX_LINES)]
    total_cents: Annotated[
        int,
        Meta(
            ge=1,
            le=MAX_TOTAL_CENTS,
            description="Sum over the lines of quantity * unit_price_cents; rejected otherwise.",
        ),
    ]
    event_time: EventTime
    schema_version: SchemaVersion = 1

    def __post_init__(self) -> None:
        if _is_store_id(self.store_id) is None:
            raise ValueError(_mismatch("store_id", self.store_id, STORE_ID_PATTERN))
        if _is_customer_id(self.customer_id) is None:
            raise ValueError(_mismatch("customer_id", self.customer_id, CUSTOMER_ID_PATTERN))
        total = 0
        for line in self.lines:
            total += line.quantity * line.unit_price_cents
        if total != self.total_cents:
            raise ValueError(f"total_cents is {self.total_cents} but the lines add up to {total}")
        if self.event_time.tzinfo is not UTC:
            msgspec.structs.force_setattr(self, "event_time", _utc(self.event_time))


class InventoryMovement(
    msgspec.Struct,
    frozen=True,
    gc=False,
    tag="inventory",
    tag_field="type",
    forbid_unknown_fields=False,
):
    """A change of a store's stock of one product.

    ``kind="delta"``: the stock changed by ``quantity`` (non-zero, -100000..100000; sales and
    shrinkage are negative). ``kind="absolute"``: the stock was counted at ``quantity``
    (0..1000000) and replaces whatever the deltas added up to.
    """

    event_id: EventId
    store_id: StoreId
    region: Region
    sku: Sku
    kind: Literal["delta", "absolute"]
    # The bounds common to both kinds; __post_init__ narrows them per kind.
    quantity: Annotated[int, Meta(ge=-MAX_DELTA, le=MAX_ABSOLUTE)]
    reason: Annotated[InventoryReason, Meta(description="Why the stock changed.")]
    event_time: EventTime
    schema_version: SchemaVersion = 1

    def __post_init__(self) -> None:
        if _is_store_id(self.store_id) is None:
            raise ValueError(_mismatch("store_id", self.store_id, STORE_ID_PATTERN))
        if _is_sku(self.sku) is None:
            raise ValueError(_mismatch("sku", self.sku, SKU_PATTERN))
        q = self.quantity
        if self.kind == "delta":
            if q == 0 or not -MAX_DELTA <= q <= MAX_DELTA:
                raise ValueError(
                    f"quantity: a delta movement must be non-zero and within "
                    f"-{MAX_DELTA}..{MAX_DELTA}; got {q}"
                )
        elif not 0 <= q <= MAX_ABSOLUTE:
            raise ValueError(
                f"quantity: an absolute stock level must be within 0..{MAX_ABSOLUTE}; got {q}"
            )
        if self.event_time.tzinfo is not UTC:
            msgspec.structs.force_setattr(self, "event_time", _utc(self.event_time))


Event: TypeAlias = Order | InventoryMovement

EVENT_TYPES: tuple[str, ...] = tuple(
    sorted(str(t.__struct_config__.tag) for t in (Order, InventoryMovement))
)

# Built once: a Decoder compiles its type into a validation plan; msgspec.json.decode(data,
# type=...) would look that plan up in a cache on every call.
_DECODER = msgspec.json.Decoder(Event)
_ENCODER = msgspec.json.Encoder()

# Enum-valued fields by their last path component, to list the allowed values in a reason.
_ALLOWED: dict[str, tuple[str, ...]] = {
    "region": tuple(r.dc for r in REGIONS),
    "currency": CURRENCIES,
    "kind": ("delta", "absolute"),
    "reason": INVENTORY_REASONS,
}
# "Now + MAX_FUTURE" as last computed. The true limit only grows, so an event_time at or below
# this stale value is certainly inside it: the clock is read only for an event beyond it, about
# once per new microsecond of event time at most, and never for a stream of past events. (Reading
# an aware datetime.now() per event cost a fifth of decode's time.) A wall clock stepped back
# leaves the stale limit ahead by the size of the step until it catches up.
_future_limit = MIN_EVENT_TIME


def _validation_reason(message: str) -> str:
    """A reason that starts with the field path, from a msgspec ValidationError message.

    msgspec writes ``"<what> - at `$.lines[2].quantity`"``; root-level messages carry no path.
    """
    what, sep, where = message.rpartition(" - at `")
    if not sep:
        if message == "Object missing required field `type`":
            return f"{message}; expected one of: {', '.join(EVENT_TYPES)}"
        return message
    path = where.rstrip("`")
    if path == "$.type" and what.startswith("Invalid value "):
        got = what.removeprefix("Invalid value ")
        return f"unknown event type {got}; expected one of: {', '.join(EVENT_TYPES)}"
    field = path.removeprefix("$.").removeprefix("$")
    allowed = _ALLOWED.get(field.rpartition(".")[2])
    if allowed and what.startswith("Invalid enum value"):
        message = f"{what} (expected one of: {', '.join(allowed)}) - at `{path}`"
    # A nested __post_init__ (LineItem's) names its own field: "sku: ... - at `$.lines[1]`".
    # msgspec's own messages start with a capital ("Expected", "Object", "Invalid").
    name, colon, rest = message.partition(": ")
    if colon and name.isidentifier() and name.islower():
        return f"{field}.{name}: {rest}" if field else message
    return f"{field}: {message}" if field else message


def decode(data: bytes) -> Event:
    """Decode and validate one Kafka message value.

    Raises :class:`InvalidEvent` with a precise reason for anything that is not a valid event:
    no other exception escapes for ``bytes`` input. ``None`` (a Kafka message without a value)
    is also refused with an InvalidEvent.
    """
    global _future_limit
    try:
        event = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_validation_reason(str(exc))) from None
    except msgspec.DecodeError as exc:
        reason = "empty message" if not data else f"not valid JSON: {exc}"
        raise InvalidEvent(reason) from None
    except UnicodeDecodeError as exc:
        # msgspec validates UTF-8 lazily, when it builds a str from the bytes of a string.
        raise InvalidEvent(f"not valid UTF-8: {exc}") from None
    except RecursionError:
        raise InvalidEvent("not a valid event: JSON nested too deeply") from None
    except TypeError:
        if data is None:
            raise InvalidEvent("message has no value (null)") from None
        raise
    t = event.event_time
    if t > _future_limit:
        _future_limit = datetime.now(UTC) + MAX_FUTURE
        if t > _future_limit:
            raise InvalidEvent(
                f"event_time: {t.isoformat()} is more than {MAX_FUTURE.days} day in the future"
            )
    if t < MIN_EVENT_TIME:
        raise InvalidEvent(f"event_time: {t.isoformat()} is before {MIN_EVENT_TIME.isoformat()}")
    return event


def encode(event: Event) -> bytes:
    """The event as compact JSON bytes, ``type`` first, ``event_time`` in UTC with ``Z``."""
    return _ENCODER.encode(event)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an event, as published in ``schemas/``.

    Two rules cannot be expressed in it, and the descriptions state them: an order's total must
    equal its lines, and consumers refuse an ``event_time`` outside their time window.
    """
    generated = msgspec.json.schema(Event)
    # The per-kind quantity bounds of InventoryMovement.__post_init__, which msgspec cannot
    # derive from the type; the total and the time window stay beyond JSON Schema.
    generated["$defs"]["InventoryMovement"]["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": "delta"}}},
            "then": {
                "properties": {
                    "quantity": {"minimum": -MAX_DELTA, "maximum": MAX_DELTA, "not": {"const": 0}}
                }
            },
        },
        {
            "if": {"properties": {"kind": {"const": "absolute"}}},
            "then": {"properties": {"quantity": {"minimum": 0, "maximum": MAX_ABSOLUTE}}},
        },
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Retail event",
        "description": (
            "One event per Kafka message, tagged by `type`. Unknown fields are ignored. "
            "Generated from retail/events.py by `python -m retail.events --schema`."
        ),
        **generated,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m retail.events --schema``: print the JSON Schema."""
    parser = argparse.ArgumentParser(prog="python -m retail.events", description=__doc__)
    parser.add_argument("--schema", action="store_true", help="print the event JSON Schema")
    args = parser.parse_args(argv)
    if not args.schema:
        parser.print_help()
        return 2
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
