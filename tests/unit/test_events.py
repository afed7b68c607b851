from __future__ import annotations

import copy
import json
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from retail.events import (
    InvalidEvent,
    InventoryMovement,
    LineItem,
    Order,
    decode,
    encode,
    json_schema,
    main,
)
from retail.generator import StreamGenerator

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = SCHEMAS / "examples"
INVALID = sorted((EXAMPLES / "invalid").glob("*.json"))
# The invalid examples a JSON Schema validator cannot catch (see schemas/README.md).
BEYOND_SCHEMA = {"total-mismatch", "before-2000", "far-future", "no-such-day"}


def order_dict() -> dict[str, Any]:
    return {
        "type": "order",
        "event_id": "6f1c2a0e-4b7d-4c39-9a51-2f0d8e3b7c14",
        "order_id": "store-0007-00000042",
        "store_id": "store-0007",
        "region": "eu-west",
        "customer_id": "cust-001234",
        "currency": "EUR",
        "lines": [
            {"sku": "SKU-000101", "quantity": 2, "unit_price_cents": 500},
            {"sku": "SKU-002310", "quantity": 1, "unit_price_cents": 250},
            {"sku": "SKU-000777", "quantity": 1, "unit_price_cents": 0},
        ],
        "total_cents": 1250,
        "event_time": "2025-06-02T09:15:30.250+02:00",
        "schema_version": 1,
    }


def valid_order_dict() -> dict[str, Any]:
    d = order_dict()
    del d["lines"][2]
    return d


def inventory_dict() -> dict[str, Any]:
    return {
        "type": "inventory",
        "event_id": "0b8e9d3a-7f21-4e6c-8d4b-5a9c1e2f3d70",
        "store_id": "store-0045",
        "region": "ap-southeast",
        "sku": "SKU-000101",
        "kind": "delta",
        "quantity": -2,
        "reason": "sale",
        "event_time": "2025-06-02T07:15:30Z",
    }


def raw(d: Any) -> bytes:
    return json.dumps(d).encode()


def reason_of(data: bytes) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode(data)
    return info.value.reason


# -- valid events ------------------------------------------------------------------------------


def test_an_order_decodes_with_its_time_normalised_to_utc() -> None:
    event = decode(raw(valid_order_dict()))
    assert isinstance(event, Order)
    assert event.store_id == "store-0007"
    assert event.lines == (
        LineItem(sku="SKU-000101", quantity=2, unit_price_cents=500),
        LineItem(sku="SKU-002310", quantity=1, unit_price_cents=250),
    )
    assert event.total_cents == 1250
    assert event.event_time == datetime(2025, 6, 2, 7, 15, 30, 250_000, tzinfo=UTC)
    assert event.event_time.tzinfo is UTC
    assert event.schema_version == 1


def test_an_inventory_movement_decodes() -> None:
    event = decode(raw(inventory_dict()))
    assert event == InventoryMovement(
        event_id="0b8e9d3a-7f21-4e6c-8d4b-5a9c1e2f3d70",
        store_id="store-0045",
        region="ap-southeast",
        sku="SKU-000101",
        kind="delta",
        quantity=-2,
        reason="sale",
        event_time=datetime(2025, 6, 2, 7, 15, 30, tzinfo=UTC),
    )


def test_unknown_fields_are_ignored_at_every_level() -> None:
    d = valid_order_dict()
    d["loyalty"] = {"tier": "gold", "points": [1, 2, {"x": None}]}
    d["lines"][0]["discount_code"] = "SUMMER"
    assert decode(raw(d)) == decode(raw(valid_order_dict()))


def test_encode_then_decode_gives_the_same_event() -> None:
    for d in (valid_order_dict(), inventory_dict()):
        event = decode(raw(d))
        data = encode(event)
        assert data.startswith(b'{"type":"' + d["type"].encode() + b'"')
        assert decode(data) == event


def test_an_offset_of_hhmm_without_colon_is_accepted_as_rfc3339_leniency() -> None:
    d = inventory_dict()
    d["event_time"] = "2025-06-02T09:15:30+0200"
    assert decode(raw(d)).event_time == datetime(2025, 6, 2, 7, 15, 30, tzinfo=UTC)


# -- invalid events: each category with its precise reason ---------------------------------------


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``base`` with the value at ``a.b.0.c`` replaced (or deleted when value is ``...``)."""
    d = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = d
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return d


INVALID_MESSAGES = [
    pytest.param(b"", "empty message", id="empty"),
    pytest.param(
        b'{"type": "order", "event_id": ',
        "not valid JSON: Input data was truncated",
        id="truncated-json",
    ),
    pytest.param(
        b"{'type': 'order'}",
        "not valid JSON: JSON is malformed: object keys must be strings (byte 1)",
        id="single-quoted",
    ),
    pytest.param(
        raw(inventory_dict()) + b"{}",
        # msgspec reports the offset just past the first trailing byte
        f"not valid JSON: JSON is malformed: trailing characters (byte "
        f"{len(raw(inventory_dict())) + 1})",
        id="two-documents",
    ),
    pytest.param(
        b"\xff\xfe{\x00}\x00",
        "not valid JSON: JSON is malformed: invalid character (byte 0)",
        id="utf16-bom",
    ),
    pytest.param(
        raw(inventory_dict()).replace(b"0b8e9d3a", b"0b8e\xe9d3a"),
        "not valid UTF-8: 'utf-8' codec can't decode byte 0xe9 in position 4: "
        "invalid continuation byte",
        id="latin1-in-string",
    ),
    pytest.param(raw([inventory_dict()]), "Expected `object`, got `array`", id="array"),
    pytest.param(b"null", "Expected `object`, got `null`", id="null"),
    pytest.param(
        raw(with_(inventory_dict(), "type", "refund")),
        "unknown event type 'refund'; expected one of: inventory, order",
        id="unknown-type",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "type", ...)),
        "Object missing required field `type`; expected one of: inventory, order",
        id="missing-type",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "sku", ...)),
        "Object missing required field `sku`",
        id="missing-field",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "lines.1.unit_price_cents", ...)),
        "lines[1]: Object missing required field `unit_price_cents` - at `$.lines[1]`",
        id="missing-nested-field",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "quantity", "-2")),
        "quantity: Expected `int`, got `str` - at `$.quantity`",
        id="string-for-int",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "quantity", -2.5)),
        "quantity: Expected `int`, got `float` - at `$.quantity`",
        id="fractional-float-for-int",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "lines.1.quantity", 1.5)),
        "lines[1].quantity: Expected `int`, got `float` - at `$.lines[1].quantity`",
        id="fractional-float-for-nested-int",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "quantity", True)),
        "quantity: Expected `int`, got `bool` - at `$.quantity`",
        id="bool-for-int",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "lines", {"sku": "SKU-000101"})),
        "lines: Expected `array`, got `object` - at `$.lines`",
        id="object-for-array",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "lines.1.quantity", -1)),
        "lines[1].quantity: Expected `int` >= 1 - at `$.lines[1].quantity`",
        id="negative-quantity",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "lines.0.unit_price_cents", 10**12)),
        "lines[0].unit_price_cents: Expected `int` <= 10000000 - at `$.lines[0].unit_price_cents`",
        id="huge-price",
    ),
    pytest.param(
        raw(order_dict()),
        "lines[2].unit_price_cents: Expected `int` >= 1 - at `$.lines[2].unit_price_cents`",
        id="zero-price",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "lines", [])),
        "lines: Expected `array` of length >= 1 - at `$.lines`",
        id="no-lines",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "total_cents", 1200)),
        "total_cents is 1200 but the lines add up to 1250",
        id="total-mismatch",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "store_id", "store-12")),
        "store_id: 'store-12' does not match ^store-[0-9]{4}$",
        id="bad-store-id",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "store_id", "store-0007\n")),
        "store_id: 'store-0007\\n' does not match ^store-[0-9]{4}$",
        id="store-id-with-newline",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "store_id", "store-٠٠٠٧")),
        "store_id: 'store-٠٠٠٧' does not match ^store-[0-9]{4}$",
        id="store-id-with-arabic-digits",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "customer_id", "cust-1")),
        "customer_id: 'cust-1' does not match ^cust-[0-9]{6}$",
        id="bad-customer-id",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "lines.1.sku", "sku-002310")),
        "lines[1].sku: 'sku-002310' does not match ^SKU-[0-9]{6}$ - at `$.lines[1]`",
        id="bad-sku",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "store_id", "x" * 100)),
        f"store_id: '{'x' * 40}...' does not match ^store-[0-9]{{4}}$",
        id="long-bad-value-is-shortened",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "region", "eu-central")),
        "region: Invalid enum value 'eu-central' (expected one of: eu-west, us-east, "
        "ap-southeast) - at `$.region`",
        id="unknown-region",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "currency", "CHF")),
        "currency: Invalid enum value 'CHF' (expected one of: EUR, GBP, USD, CAD, JPY, SGD, "
        "AUD) - at `$.currency`",
        id="unknown-currency",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "event_id", "")),
        "event_id: Expected `str` of length >= 1 - at `$.event_id`",
        id="empty-event-id",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "event_id", "e" * 65)),
        "event_id: Expected `str` of length <= 64 - at `$.event_id`",
        id="long-event-id",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "quantity", 0)),
        "quantity: a delta movement must be non-zero and within -100000..100000; got 0",
        id="zero-delta",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "quantity", 500_000)),
        "quantity: a delta movement must be non-zero and within -100000..100000; got 500000",
        id="huge-delta",
    ),
    pytest.param(
        raw(with_(with_(inventory_dict(), "kind", "absolute"), "quantity", -1)),
        "quantity: an absolute stock level must be within 0..1000000; got -1",
        id="negative-absolute",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "reason", "theft")),
        "reason: Invalid enum value 'theft' (expected one of: sale, restock, return, "
        "shrinkage, count, transfer) - at `$.reason`",
        id="unknown-reason",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "event_time", "2025-06-02T07:15:30")),
        "event_time: Expected `datetime` with a timezone component - at `$.event_time`",
        id="naive-time",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "event_time", "2025-02-29T07:15:30Z")),
        "event_time: Invalid RFC3339 encoded datetime - at `$.event_time`",
        id="no-such-day",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "event_time", 1748848530)),
        "event_time: Expected `datetime`, got `int` - at `$.event_time`",
        id="epoch-number-time",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "event_time", "2999-01-01T00:00:00Z")),
        "event_time: 2999-01-01T00:00:00+00:00 is more than 1 day in the future",
        id="far-future",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "event_time", "1999-12-31T23:59:59+00:00")),
        "event_time: 1999-12-31T23:59:59+00:00 is before 2000-01-01T00:00:00+00:00",
        id="before-2000",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "event_time", "9999-12-31T23:59:59-01:00")),
        "event_time: 9999-12-31T23:59:59-01:00 is out of range in UTC",
        id="beyond-datetime-max-in-utc",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "event_id", "6f1c2a0e\u00004b7d")),
        "event_id: '6f1c2a0e\\x004b7d' contains a control character",
        id="nul-in-event-id",
    ),
    pytest.param(
        raw(with_(valid_order_dict(), "order_id", "store-0007-42\n")),
        "order_id: 'store-0007-42\\n' contains a control character",
        id="newline-in-order-id",
    ),
    pytest.param(
        raw(with_(inventory_dict(), "event_id", "mv-\u009b1")),
        "event_id: 'mv-\\x9b1' contains a control character",
        id="c1-control-in-event-id",
    ),
]


@pytest.mark.parametrize(("data", "reason"), INVALID_MESSAGES)
def test_an_invalid_message_is_refused_with_a_precise_reason(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_invalid_event_is_a_retail_error_whose_message_is_the_reason() -> None:
    from retail.errors import RetailError

    with pytest.raises(RetailError) as info:
        decode(raw(with_(valid_order_dict(), "total_cents", 1200)))
    assert str(info.value) == "total_cents is 1200 but the lines add up to 1250"


def test_the_future_bound_is_one_day_from_now() -> None:
    now = datetime.now(UTC)
    for offset, accepted in ((timedelta(hours=23), True), (timedelta(hours=25), False)):
        d = with_(inventory_dict(), "event_time", (now + offset).isoformat())
        if accepted:
            assert decode(raw(d)).event_time == now + offset
        else:
            assert "is more than 1 day in the future" in reason_of(raw(d))


def test_a_message_without_a_value_is_refused() -> None:
    # A Kafka message with a null value (a tombstone) reaches decode as None.
    assert reason_of(None) == "message has no value (null)"  # type: ignore[arg-type]


def test_deeply_nested_json_is_refused_not_a_crash() -> None:
    depth = 100_000
    data = b'{"type": "inventory", "x": ' + b"[" * depth + b"]" * depth + b"}"
    assert reason_of(data) == "not a valid event: JSON nested too deeply"


def test_no_bytes_make_decode_raise_anything_but_invalid_event() -> None:
    """Mutations of real messages: cut, spliced with JSON tokens, bytes flipped."""
    rng = random.Random(7)
    messages = [encode(e) for e in StreamGenerator(seed=11).events(300)]
    # Half of them with every integer written as a float: those take decode's slow path.
    messages += [re.sub(rb'(":-?[0-9]+)([,}])', rb"\1.0\2", m) for m in messages[::2]]
    tokens = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"-", b"0", b"1e999", b"null"]
    tokens += [b"\\u", b"\\ud800", b"\xff", b"\xc3", b"9" * 30, b"+99:00", b"\x00", b"\n"]
    tokens += [b"2.0", b"-1e2", b"1e400", b".5"]
    outcomes = {"valid": 0, "invalid": 0}
    for _ in range(20_000):
        data = bytearray(rng.choice(messages))
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.3:
                del data[pos : pos + rng.randint(1, 8)]
            elif op < 0.6:
                data[pos:pos] = rng.choice(tokens)
            elif op < 0.9 and pos < len(data):
                data[pos] = rng.randrange(256)
            else:
                del data[pos:]
        try:
            decode(bytes(data))
            outcomes["valid"] += 1
        except InvalidEvent:
            outcomes["invalid"] += 1
    # Both outcomes occur: the mutations are neither all harmless nor all fatal.
    assert outcomes["valid"] > 100
    assert outcomes["invalid"] > 10_000


# -- events built in Python keep the same invariants ---------------------------------------------


def test_building_an_order_checks_its_total_and_ids() -> None:
    event = decode(raw(valid_order_dict()))
    assert isinstance(event, Order)
    fields = {f: getattr(event, f) for f in event.__struct_fields__}
    with pytest.raises(ValueError, match="total_cents is 1 but the lines add up to 1250"):
        Order(**{**fields, "total_cents": 1})
    with pytest.raises(ValueError, match="does not match"):
        Order(**{**fields, "store_id": "shop-0007"})


def test_building_an_event_normalises_its_time_and_refuses_a_naive_one() -> None:
    fields = {
        "event_id": "e1",
        "store_id": "store-0001",
        "region": "eu-west",
        "sku": "SKU-000001",
        "kind": "delta",
        "quantity": 3,
        "reason": "restock",
    }
    cet = timezone(timedelta(hours=1))
    event = InventoryMovement(**fields, event_time=datetime(2025, 1, 1, 12, tzinfo=cet))
    assert event.event_time == datetime(2025, 1, 1, 11, tzinfo=UTC)
    assert event.event_time.tzinfo is UTC
    with pytest.raises(ValueError, match="has no UTC offset"):
        InventoryMovement(**fields, event_time=datetime(2025, 1, 1, 12))


# -- the published schema and its examples -------------------------------------------------------


def test_the_committed_schema_is_what_the_types_generate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--schema"]) == 0
    generated = capsys.readouterr().out
    committed = (SCHEMAS / "retail-event.schema.json").read_text()
    assert committed == generated, (
        "schemas/retail-event.schema.json is stale: run "
        "`.venv/bin/python -m retail.events --schema > schemas/retail-event.schema.json`"
    )


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_every_valid_example_decodes_and_round_trips(path: Path) -> None:
    event = decode(path.read_bytes())
    assert decode(encode(event)) == event


def test_there_are_invalid_examples_with_reasons() -> None:
    assert len(INVALID) >= 10
    missing = [p.name for p in INVALID if not p.with_suffix(".reason").exists()]
    assert not missing, f"invalid examples without a .reason sidecar: {missing}"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_every_invalid_example_is_refused_with_its_documented_reason(path: Path) -> None:
    expected = path.with_suffix(".reason").read_text().strip()
    assert reason_of(path.read_bytes()) == expected


def test_the_schema_agrees_with_the_decoder_on_examples_and_generated_events() -> None:
    import jsonschema  # in the lock (Airflow needs it): always there in .venv

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    valid = [json.loads(p.read_bytes()) for p in EXAMPLES.glob("*.json")]
    valid += [json.loads(encode(e)) for e in StreamGenerator(seed=5).events(500)]
    for doc in valid:
        assert not list(validator.iter_errors(doc)), doc
    for path in INVALID:
        schema_accepts = validator.is_valid(json.loads(path.read_bytes()))
        assert schema_accepts == (path.stem in BEYOND_SCHEMA), path.name


# -- the schema states what the consumers accept: a differential test ----------------------------
# A corpus of documents goes through a JSON Schema validator and through decode(): both accept or
# both refuse each one, except where a rule is beyond what JSON Schema can express; those cases
# carry the reason, and the test checks that the schema accepts them and the consumer refuses.

OK = "accepted"
REFUSED = "refused"
NO_SUCH_DAY = "the day does not exist in its month: the pattern does not count days per month"
WINDOW = "outside 2000-01-01 .. now + 1 day: the consumers' clock is not in the schema"
PYTHON_DOLLAR = (
    "Python's re (jsonschema's) lets `$` match before a final newline; ECMA-262's `$`, which "
    "JSON Schema specifies, does not"
)
DUPLICATE_NAME = (
    "a duplicate member name (not I-JSON): the validator sees the last value only, the "
    "consumer checks each"
)
LONE_SURROGATE = "a lone surrogate escape (not I-JSON): msgspec refuses it as malformed JSON"

# What msgspec 0.22 accepts as an aware datetime, measured. The schema's pattern matches the OK
# rows and the NO_SUCH_DAY and WINDOW ones, which the descriptions state; no other row.
EVENT_TIMES: list[tuple[str, str]] = [
    # separator: T, t or a space
    ("2025-06-02T07:15:30Z", OK),
    ("2025-06-02t07:15:30z", OK),
    ("2025-06-02 07:15:30Z", OK),
    ("2025-06-02  07:15:30Z", REFUSED),
    ("2025-06-02\t07:15:30Z", REFUSED),
    ("2025-06-02_07:15:30Z", REFUSED),
    ("20250602T071530Z", REFUSED),
    # offset: Z, z, ±hh:mm or ±hhmm with hh 00-23 and mm 00-59; -00:00 is UTC
    ("2025-06-02T07:15:30+02:00", OK),
    ("2025-06-02T07:15:30+0200", OK),
    ("2025-06-02T07:15:30-00:00", OK),
    ("2025-06-02T07:15:30-0000", OK),
    ("2025-06-02T07:15:30+23:59", OK),
    ("2025-06-02T07:15:30-2359", OK),
    ("2025-06-02T07:15:30", REFUSED),
    ("2025-06-02T07:15:30+24:00", REFUSED),
    ("2025-06-02T07:15:30+12:60", REFUSED),
    ("2025-06-02T07:15:30+02", REFUSED),
    ("2025-06-02T07:15:30+2:00", REFUSED),
    ("2025-06-02T07:15:30+02:0", REFUSED),
    ("2025-06-02T07:15:30+020", REFUSED),
    ("2025-06-02T07:15:30+02:000", REFUSED),
    ("2025-06-02T07:15:30+02::00", REFUSED),
    ("2025-06-02T07:15:30+02:00:00", REFUSED),
    ("2025-06-02T07:15:30+02:00Z", REFUSED),
    ("2025-06-02T07:15:30Z+02:00", REFUSED),
    ("2025-06-02T07:15:30 Z", REFUSED),
    ("2025-06-02T07:15:30UTC", REFUSED),
    # fraction: a dot and any number of digits, rounded to the microsecond
    ("2025-06-02T07:15:30.1Z", OK),
    ("2025-06-02T07:15:30.123456Z", OK),
    ("2025-06-02T07:15:30.123456789012345678901234567890Z", OK),
    ("2025-06-02T23:59:59.9999995+02:00", OK),
    ("2025-06-02T07:15:30.Z", REFUSED),
    ("2025-06-02T07:15:30,5Z", REFUSED),
    ("2025-06-02T07:15:30.5.5Z", REFUSED),
    # field widths and ranges: no leap second, no 24:00, seconds required, year 0001-9999
    ("2025-06-02T23:59:59Z", OK),
    ("2025-06-02T24:00:00Z", REFUSED),
    ("2025-06-02T23:60:00Z", REFUSED),
    ("2025-06-30T23:59:60Z", REFUSED),
    ("2025-06-02T07:15Z", REFUSED),
    ("2025-06-02T7:15:30Z", REFUSED),
    ("2025-6-02T07:15:30Z", REFUSED),
    ("2025-00-02T07:15:30Z", REFUSED),
    ("2025-13-02T07:15:30Z", REFUSED),
    ("2025-06-00T07:15:30Z", REFUSED),
    ("2025-06-32T07:15:30Z", REFUSED),
    ("0000-01-01T00:00:00Z", REFUSED),
    ("10000-01-01T00:00:00Z", REFUSED),
    ("+2025-06-02T07:15:30Z", REFUSED),
    ("2025-06-02", REFUSED),
    # nothing else around it
    (" 2025-06-02T07:15:30Z", REFUSED),
    ("2025-06-02T07:15:30Z ", REFUSED),
    ("2025-06-02T07:15:30Z\x00", REFUSED),
    ("2025-06-02T07:15:30\x00Z", REFUSED),
    ("2025-06-02T07:15:3\u0660Z", REFUSED),  # ARABIC-INDIC DIGIT ZERO
    ("2025-06-02T07:15:30Z\n", PYTHON_DOLLAR),
    # days per month
    ("2025-01-31T07:15:30Z", OK),
    ("2024-02-29T07:15:30Z", OK),
    ("2000-02-29T07:15:30Z", OK),
    ("2025-02-29T07:15:30Z", NO_SUCH_DAY),
    ("2025-02-30T07:15:30Z", NO_SUCH_DAY),
    ("2025-04-31T07:15:30Z", NO_SUCH_DAY),
    # the consumers' window, in UTC
    ("1999-12-31T23:30:00-01:00", OK),
    ("2000-01-01T00:30:00+01:00", WINDOW),
    ("1999-12-31T23:59:59Z", WINDOW),
    ("0001-01-01T00:00:00Z", WINDOW),
    ("9999-12-31T23:59:59Z", WINDOW),
    ("9999-12-31T23:59:59-01:00", WINDOW),  # past datetime.max in UTC
    ("9999-12-31T23:59:59.9999995Z", WINDOW),  # rounds up past year 9999
]

# A number as JSON text, from the valid value n of an integer field. JSON Schema's "integer" is
# any number with a zero fractional part: 2.0 and 2e0 are integers, 2.5 is not.
INTEGRAL_FORMS = ["{n}.0", "{n}e0", "{n}E+0", "{n}.000", "{n}00e-2"]
NUMBER_FORMS = [
    "{n}",
    *INTEGRAL_FORMS,
    "{n}.5",
    "{n}.0000001",
    "{n}.00000000000000001",  # the nearest double is n: an integer to the validator and msgspec
    '"{n}"',
    "[{n}]",
]
OTHER_VALUES = [
    "true",
    "false",
    "null",
    "{}",
    "0",
    "-0",
    "0.0",
    "-0.0",
    "1e300",
    "1" + "0" * 30,
    "9007199254740993",
    "1e400",  # beyond a double: Python reads inf, msgspec says "Number out of range"
    "-1e400",
]


def absolute_dict() -> dict[str, Any]:
    return {**inventory_dict(), "kind": "absolute", "quantity": 118, "reason": "count"}


def with_number(base: dict[str, Any], path: str, text: str) -> bytes:
    """``base`` as JSON with the value at ``path`` written as the JSON text ``text``."""
    return raw(with_(base, path, "@number@")).replace(b'"@number@"', text.encode())


def value_at(base: dict[str, Any], path: str) -> Any:
    """The value at ``a.0.b`` in ``base``, None if there is none."""
    node: Any = base
    for p in path.split("."):
        if isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        elif isinstance(node, dict):
            node = node.get(p)
        else:
            return None
    return node


def integer_fields() -> dict[str, list[str]]:
    """The integer properties of each definition of the published schema."""
    return {
        name: [p for p, s in d["properties"].items() if s.get("type") == "integer"]
        for name, d in json_schema()["$defs"].items()
    }


def integer_paths(base: dict[str, Any]) -> dict[str, int]:
    """Path of every integer field of ``base`` (its first line for an order), with its value."""
    fields = integer_fields()
    if base["type"] == "order":
        paths = {p: base.get(p, 1) for p in fields["Order"]}
        paths |= {f"lines.0.{p}": base["lines"][0][p] for p in fields["LineItem"]}
    else:
        paths = {p: base.get(p, 1) for p in fields["InventoryMovement"]}
    return paths


def corpus() -> list[tuple[str, bytes, str | None]]:
    """(name, JSON document, why schema and consumer may disagree on it or None)."""
    docs: list[tuple[str, bytes, str | None]] = []
    bases = {"order": valid_order_dict(), "delta": inventory_dict(), "absolute": absolute_dict()}
    for name, base in bases.items():
        docs.append((name, raw(base), None))
        for text, verdict in EVENT_TIMES:
            beyond = None if verdict in (OK, REFUSED) else verdict
            docs.append((f"{name} time {text!r}", raw(with_(base, "event_time", text)), beyond))
        for path, n in integer_paths(base).items():
            for text in [form.format(n=n) for form in NUMBER_FORMS] + OTHER_VALUES:
                docs.append((f"{name} {path}={text}", with_number(base, path, text), None))
        for path in ("store_id", "sku", "customer_id", "lines.0.sku"):
            if (value := value_at(base, path)) is not None:
                data = raw(with_(base, path, value + "\n"))
                docs.append((f"{name} {path} with a newline", data, PYTHON_DOLLAR))
        for text in ("1748848530", "1748848530.0", "null"):
            docs.append((f"{name} time {text}", with_number(base, "event_time", text), None))
        for text in ("\U0001f600" * 64, "\U0001f600" * 65, "", "e\u0301" * 32, "e\u0301" * 33):
            docs.append((f"{name} event_id {text!r}", raw(with_(base, "event_id", text)), None))
        # Unknown fields are ignored, whatever they hold, also on decode's slow path.
        path, n = next(iter(integer_paths(base).items()))
        floated = with_number(base, path, f"{n}.0")
        for text in ("1e400", '"\\u0000"', "[[[{}]]]", "2.0"):
            extra = b', "extra": ' + text.encode() + b"}"
            docs.append((f"{name} extra {text}", raw(base)[:-1] + extra, None))
            docs.append((f"{name} {path}={n}.0 extra {text}", floated[:-1] + extra, None))
        data = raw(base)[:-1] + b', "extra": "\\ud800"}'
        docs.append((f"{name} extra lone surrogate", data, LONE_SURROGATE))
    lines = [{"sku": "SKU-000001", "quantity": 1, "unit_price_cents": 1}]
    for count in (1, 200, 201):
        order = {**valid_order_dict(), "lines": lines * count, "total_cents": count}
        docs.append((f"order with {count} lines", raw(order), None))
    order = {**valid_order_dict(), "lines": [], "total_cents": 1}
    docs.append(("order without lines", raw(order), None))
    text = raw(inventory_dict())
    for first, last, beyond in (
        (b'"x"', b"-3", DUPLICATE_NAME),
        (b"-3", b'"x"', None),
        (b"-3", b"-2", None),
        (b"-3.0", b"-2", None),
    ):
        data = text.replace(b'"quantity": -2', b'"quantity": ' + first + b', "quantity": ' + last)
        docs.append((f"inventory quantity {first!r} then {last!r}", data, beyond))
    return docs


def outcome(data: bytes) -> tuple[str, Any]:
    try:
        return OK, encode(decode(data))  # encoded: 2.0 would show, not compare equal to 2
    except InvalidEvent as exc:
        return REFUSED, exc.reason


@pytest.mark.parametrize(("text", "verdict"), EVENT_TIMES, ids=[repr(t) for t, _ in EVENT_TIMES])
def test_the_event_time_formats_the_consumer_accepts(text: str, verdict: str) -> None:
    for base in (valid_order_dict(), inventory_dict()):
        accepted, reason = outcome(raw(with_(base, "event_time", text)))
        assert (accepted == OK) == (verdict == OK), reason
        if verdict == NO_SUCH_DAY:
            assert reason == "event_time: Invalid RFC3339 encoded datetime - at `$.event_time`"
        elif verdict != OK:
            assert reason.startswith("event_time: "), reason


@pytest.mark.parametrize("form", INTEGRAL_FORMS)
def test_an_integral_float_is_accepted_for_every_integer_field(form: str) -> None:
    for base in (valid_order_dict(), inventory_dict(), absolute_dict()):
        expected = outcome(raw(base))
        assert expected[0] == OK
        for path, n in integer_paths(base).items():
            assert outcome(with_number(base, path, form.format(n=n))) == expected, path
    data = with_number(inventory_dict(), "quantity", "1.0e2")
    assert decode(data) == decode(raw(with_(inventory_dict(), "quantity", 100)))


def test_integral_floats_give_the_outcome_and_reason_of_integers() -> None:
    """The slow path of decode (a float in an integer field) decides as the fast path does."""
    fields = integer_fields()

    def floated(doc: Any) -> bool:
        """Write every integer of an integer field of ``doc`` as a float; False if none."""
        changed = False
        if not isinstance(doc, dict) or doc.get("type") not in ("order", "inventory"):
            return False
        items = [(doc, fields["Order" if doc["type"] == "order" else "InventoryMovement"])]
        if isinstance(doc.get("lines"), list):
            items += [(line, fields["LineItem"]) for line in doc["lines"] if type(line) is dict]
        for obj, names in items:
            for name in names:
                value = obj.get(name)
                if type(value) is int and float(value) == value:
                    obj[name] = float(value)
                    changed = True
        return changed

    documents = [p.values[0] for p in INVALID_MESSAGES] + [data for _, data, _ in corpus()]
    compared = 0
    for data in documents:
        try:
            doc = json.loads(data)
        except (ValueError, TypeError):
            continue  # not JSON: nothing to write as a float
        if "Infinity" in json.dumps(doc):
            # 1e400: msgspec's fast path says "Number out of range", the slow path (which must
            # read it as inf to skip it in an unknown field) says "Expected `int`, got `float`".
            continue
        original = raw(doc)
        if floated(doc):
            assert outcome(raw(doc)) == outcome(original), raw(doc)
            compared += 1
    assert compared > 300


def test_the_schema_and_the_decoder_agree_on_a_corpus_of_documents() -> None:
    import jsonschema

    schema = json_schema()
    # No "format": a validator that asserts formats would refuse times the consumer accepts
    # (the space separator, +hhmm), and one that does not would accept leap seconds.
    assert '"format"' not in json.dumps(schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    docs = corpus()
    disagreements = []
    outcomes = {OK: 0, REFUSED: 0}
    for name, data, beyond in docs:
        schema_accepts = validator.is_valid(json.loads(data))
        consumer_accepts, reason = outcome(data)
        outcomes[consumer_accepts] += 1
        if beyond is None and schema_accepts != (consumer_accepts == OK):
            verdict = "accepts" if schema_accepts else "refuses"
            disagreements.append(f"{name}: schema {verdict}, consumer: {reason}")
        elif beyond is not None and not (schema_accepts and consumer_accepts == REFUSED):
            disagreements.append(f"{name}: listed as beyond the schema ({beyond}), but is not")
    assert not disagreements, "\n".join(disagreements)
    assert outcomes[OK] > 100
    assert outcomes[REFUSED] > 100


def test_the_event_time_pattern_matches_what_msgspec_parses() -> None:
    """Mutated timestamps: the pattern matches exactly those the consumer can parse."""
    import calendar

    schema = json_schema()
    pattern = schema["$defs"]["Order"]["properties"]["event_time"]["pattern"]
    assert pattern.endswith("$") and pattern.count("$") == 1
    matches = re.compile(pattern[:-1] + r"\Z").search  # ECMA-262's "$": the very end
    window = ("is before 2000", "is more than 1 day in the future", "is out of range in UTC")
    rng = random.Random(3)
    seeds = [t for t, verdict in EVENT_TIMES if verdict == OK]
    alphabet = "0123456789" * 3 + "-:.+TtZz ,\x00"
    counts = {OK: 0, REFUSED: 0}
    for _ in range(5_000):
        text = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(text) + 1)
            op = rng.random()
            if op < 0.6 and pos < len(text):
                text[pos] = rng.choice(alphabet)
            elif op < 0.8:
                text.insert(pos, rng.choice(alphabet))
            else:
                del text[pos : pos + 1]
        value = "".join(text)
        verdict, reason = outcome(raw(with_(inventory_dict(), "event_time", value)))
        counts[verdict] += 1
        if matches(value) and verdict == REFUSED:
            year, month, day = int(value[:4]), int(value[5:7]), int(value[8:10])
            no_such_day = day > calendar.monthrange(year or 2000, month)[1]
            assert no_such_day or any(w in reason for w in window) or year == 9999, value
        else:
            assert bool(matches(value)) == (verdict == OK), (value, reason)
    assert counts[OK] > 500
    assert counts[REFUSED] > 2_000
