"""The retail event model: what producers put on Kafka and what the consumers accept.

Wire format: one JSON object per Kafka message, tagged by its ``type`` field (``order`` or
``inventory``). Fields a consumer does not know are ignored, so producers can add fields before
the consumers learn about them (the tolerant-reader rule); everything the model does know is
checked.

Validation happens in three layers, cheapest first:

* msgspec checks types and per-field constraints (ranges, lengths, enums, required fields)
  while it parses, in C. An integer may be written as a float with a zero fraction (``2.0``,
  ``2e0``), as JSON Schema's ``integer`` allows; msgspec refuses that, so :func:`decode` then
  takes a slower second path for that message (see ``_decode_integral_floats``).
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
    "CONTROL_CHARACTER",
    "CURRENCIES",
    "CUSTOMER_ID_PATTERN",
    "EVENT_TIME_PATTERN",
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
# An event or order id is the producer's own string, but never with control characters (C0,
# DEL, C1): a NUL or a newline in an id breaks logs, CQL tooling and exports downstream.
# In the schema as "not: pattern": an anchored "^[^...]+$" would pass "id\n" in validators
# whose "$" also matches before a final newline (Python's).
CONTROL_CHARACTER = "[\\u0000-\\u001f\\u007f-\\u009f]"
NO_CONTROL_CHARACTER = {"not": {"pattern": CONTROL_CHARACTER}}
_is_store_id = re.compile(STORE_ID_PATTERN).fullmatch
_control_character = re.compile(CONTROL_CHARACTER).search
_is_customer_id = re.compile(CUSTOMER_ID_PATTERN).fullmatch
_is_sku = re.compile(SKU_PATTERN).fullmatch

EventId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        description="Idempotency key of the event; producers use a UUID string.",
        extra_json_schema=NO_CONTROL_CHARACTER,
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
# What msgspec 0.22 parses as a datetime with an offset (measured: the table is in
# tests/unit/test_events.py): RFC 3339 with "T", "t" or a space between date and time, "Z", "z",
# ±hh:mm or ±hhmm, any number of fraction digits; no leap second, no 24:00:00, no year 0000, no
# offset hour above 23. It also checks the day against the month, which this pattern does not.
_DATE = (
    "(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
    "-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
)
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
_OFFSET = "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])"
EVENT_TIME_PATTERN = f"^{_DATE}[Tt ]{_TIME}{_OFFSET}$"
EventTime = Annotated[
    datetime,
    Meta(
        tz=True,
        description=(
            "Date and time with a UTC offset, as in RFC 3339 but without leap seconds; a space "
            "or t may also separate date and time, and the offset may omit its colon (+0200). "
            "Normalised to UTC, fractions rounded to the microsecond. Consumers refuse a day "
            "its month does not have (2025-02-30) and times before 2000-01-01 or more than one "
            "day ahead of their clock."
        ),
        extra_json_schema={"pattern": EVENT_TIME_PATTERN},
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


def _check_ids(event_id: str, order_id: str | None = None) -> None:
    if _control_character(event_id):
        raise ValueError(f"event_id: {event_id!r} contains a control character")
    if order_id is not None and _control_character(order_id):
        raise ValueError(f"order_id: {order_id!r} contains a control character")


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
    order_id: Annotated[
        str, Meta(min_length=1, max_length=64, extra_json_schema=NO_CONTROL_CHARACTER)
    ]
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
        _check_ids(self.event_id, self.order_id)
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
        _check_ids(self.event_id)
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


def _unreadable(data: bytes, exc: Exception) -> str:
    """The reason for a message that is not JSON (or too deep to read)."""
    if isinstance(exc, UnicodeDecodeError):
        # msgspec validates UTF-8 lazily, when it builds a str from the bytes of a string.
        return f"not valid UTF-8: {exc}"
    if isinstance(exc, RecursionError):
        return "not a valid event: JSON nested too deeply"
    return "empty message" if not data else f"not valid JSON: {exc}"


# decode's slow path. JSON Schema's "integer" is any number with a zero fractional part, so the
# schema accepts 2.0 and 2e0, which msgspec's strict int refuses; its lax mode would also turn
# "2" into 2, which the schema refuses. Such messages are rare, so decode only comes here after
# the strict decoder failed with this message, and reads the message a second time.
_INT_GOT_FLOAT = "Expected `int`, got `float`"
# float_hook=float: a number beyond a double (1e400) reads as inf instead of failing, as the
# strict decoder skips an unknown field without converting its numbers.
_JSON_DECODER = msgspec.json.Decoder(float_hook=float)
# Per struct, its integer fields (None) and its fields of structs, or sequences of structs, with
# integer fields of their own (the nested table).
_IntFields: TypeAlias = "dict[str, _IntFields | None]"


def _bare(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    while isinstance(t, msgspec.inspect.Metadata):  # descriptions, examples
        t = t.type
    return t


def _int_fields(struct: msgspec.inspect.StructType) -> _IntFields:
    """The integer fields of ``struct``, from its type: a new one is covered without a change."""
    fields: _IntFields = {}
    for field in struct.fields:
        t = _bare(field.type)
        if isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType)):
            t = _bare(t.item_type)
        if isinstance(t, msgspec.inspect.IntType):
            fields[field.encode_name] = None
        elif isinstance(t, msgspec.inspect.StructType):
            fields[field.encode_name] = _int_fields(t)
        elif "IntType(" in repr(t):  # int | None, dict[str, int], ...: not handled below
            raise TypeError(f"decode's slow path does not handle the type of {field.name}")
    return fields


_INT_FIELDS: dict[str, _IntFields] = {
    str(t.tag): _int_fields(t) for t in msgspec.inspect.type_info(Event).types
}


def _ints_for_integral_floats(obj: dict[str, Any], fields: _IntFields) -> None:
    # Only the integer fields: 5.0 for event_id must still read "Expected `str`, got `float`".
    for name, nested in fields.items():
        value = obj.get(name)
        if nested is None:
            if type(value) is float and value.is_integer():
                obj[name] = int(value)
        elif type(value) is dict:
            _ints_for_integral_floats(value, nested)
        elif type(value) is list:
            for item in value:
                if type(item) is dict:
                    _ints_for_integral_floats(item, nested)


def _decode_integral_floats(data: bytes) -> Event:
    """decode's slow path, for a message with a float where the model has an int.

    The message is read as plain JSON, integral floats of integer fields become ints, and
    ``msgspec.convert`` validates the result with the same types, constraints and
    ``__post_init__`` checks, in document order: the reason for a message that is still invalid
    reads as the strict decoder's would (2.5 gives "Expected `int`, got `float`"). It differs
    only on messages that are not I-JSON or that both paths refuse: a duplicate member name
    counts once, with its last value (the strict decoder checks each); invalid UTF-8 in an
    unknown field is refused (the strict decoder skips it unread); a number beyond a double
    (1e400) in a field reads "Expected `int`, got `float`", not "Number out of range".
    """
    try:
        doc = _JSON_DECODER.decode(data)
        if type(doc) is dict and type(tag := doc.get("type")) is str and tag in _INT_FIELDS:
            _ints_for_integral_floats(doc, _INT_FIELDS[tag])
        return msgspec.convert(doc, Event, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_validation_reason(str(exc))) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEvent(_unreadable(data, exc)) from None


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
        message = str(exc)
        if not message.startswith(_INT_GOT_FLOAT):
            raise InvalidEvent(_validation_reason(message)) from None
        event = _decode_integral_floats(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEvent(_unreadable(data, exc)) from None
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

    Three rules cannot be expressed in it, and the descriptions state them: an order's total
    must equal its lines, and consumers refuse an ``event_time`` on a day that its month does not
    have or outside their time window.
    """
    generated = msgspec.json.schema(Event)
    # msgspec adds "format": "date-time" (RFC 3339) to event_time. A validator that asserts
    # formats would then refuse the space separator and ±hhmm, which the consumers accept; the
    # pattern states exactly what they accept.
    for name in ("Order", "InventoryMovement"):
        del generated["$defs"][name]["properties"]["event_time"]["format"]
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
            "One event per Kafka message, tagged by `type`: an I-JSON object (RFC 7493: UTF-8, "
            "unique member names, no lone surrogates). Unknown fields are ignored. An integer "
            "may have a zero fraction (2.0, 2e0). "
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
