from __future__ import annotations

import copy
import json
import random
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
BEYOND_SCHEMA = {"total-mismatch", "before-2000", "far-future"}


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


@pytest.mark.parametrize(
    ("data", "reason"),
    [
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
            raw(with_(inventory_dict(), "quantity", -2.0)),
            "quantity: Expected `int`, got `float` - at `$.quantity`",
            id="float-for-int",
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
            "lines[0].unit_price_cents: Expected `int` <= 10000000 - at "
            "`$.lines[0].unit_price_cents`",
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
    ],
)
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
    tokens = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"-", b"0", b"1e999", b"null"]
    tokens += [b"\\u", b"\\ud800", b"\xff", b"\xc3", b"9" * 30, b"+99:00", b"\x00", b"\n"]
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
