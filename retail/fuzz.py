"""Fuzzing the live pipeline: hostile messages among valid events, into the real topics, and a
check from outside that each hostile one reached the dead-letter topic with a reason, each valid
one was written, and no consumer restarted.

Every hostile message is a valid event changed by one mutation that makes it invalid *by
construction*, from the published contract (``schemas/``, :mod:`retail.events`' limits and the
routing rules), never by asking the consumers' own rule (:func:`retail.kafka.judge`), which is
what is under test. The mutations (:data:`KINDS`) cover what reaches a real topic: truncated and
empty messages, documents that are not an object, oversized values, wrong types, missing
fields, line counts over the limit, deep nesting, invalid UTF-8, control characters in ids,
times in the future, the distant past or on no calendar, totals that do not add up, and
headers and topics that lie about the region.

The check reads what the pipeline left, not what the consumers say they did: the dead-letter
topic's ``origin.*`` headers against the offsets Kafka acknowledged for the hostile messages,
and each valid event's row by id in its region's DC at ``LOCAL_QUORUM``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cassandra import ConsistencyLevel
from confluent_kafka import Producer

from retail.cassandra import connect, run_all
from retail.credentials import CASSANDRA_OPS, KAFKA_OPS, KAFKA_PRODUCER
from retail.errors import RetailError
from retail.events import MAX_LINES, Event, Order, encode
from retail.kafka import REGION_HEADER, Topics, client_config, region_lag
from retail.ops.audit import read_dead_letters
from retail.producer import records_from_events
from retail.rows import KEYSPACE, id_column, identity
from retail.topology import Topology

log = logging.getLogger(__name__)

Origin = tuple[str, int, int]  # topic, partition, offset
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Hostile:
    """One hostile message as it goes on the wire, and the mutation that made it."""

    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def _doc(e: Event) -> dict[str, Any]:
    return json.loads(encode(e))


def _dump(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _own(e: Event, topics: Topics, kind: str, value: bytes | None) -> Hostile:
    """A message on the event's own topic, keyed by its store, with its own region header:
    only the value is hostile."""
    # Where the platform's producer puts the event (retail.producer.records_from_events).
    rec = next(records_from_events([e], topics))
    return Hostile(kind, rec.topic, rec.key, value, [(REGION_HEADER, e.region.encode())])


# -- the mutations: each returns a value that no reading of the contract accepts --------------

# Kafka's default limit on a record batch (the broker's message.max.bytes, 1 MiB + 12), less
# room for the batch's own overhead: the largest message a producer may send.
MAX_MESSAGE_BYTES = 1_048_000
STRING_FIELDS = ("event_id", "store_id", "region", "event_time")
ID_FIELDS = ("event_id", "store_id")  # and, on an order, order_id and customer_id
CONTROL = ("\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f")
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xc0\xaf")


def truncated(rng: random.Random, e: Event) -> bytes:
    value = encode(e)
    return value[: rng.randrange(1, len(value))]  # no strict prefix of an object is one


def no_value(rng: random.Random, e: Event) -> bytes | None:
    return rng.choice((b"", None, b" ", b"\n"))


def not_an_object(rng: random.Random, e: Event) -> bytes:
    return rng.choice((b"[]", b"42", b'"order"', b"null", b"true", b"[" + encode(e) + b"]"))


def oversized(rng: random.Random, e: Event) -> bytes:
    """Far larger than any event (200 lines are about 15 KB), up to what the broker takes
    (:data:`MAX_MESSAGE_BYTES`): the consumer must refuse it, and dead-letter it by reference
    when its copy no longer fits its own producer's limit (librdkafka's default, 1,000,000)."""
    doc = _doc(e)
    size = int(math.exp(rng.uniform(math.log(20_000), math.log(MAX_MESSAGE_BYTES - 8_000))))
    doc[rng.choice(("event_id", "store_id"))] = "x" * size
    return _dump(doc)


def wrong_type(rng: random.Random, e: Event) -> bytes:
    doc = _doc(e)
    name = rng.choice(sorted(doc))
    old = doc[name]
    if isinstance(old, str):
        choices: list[object] = [12, 1.5, None, True, [], {}, [old]]
    elif isinstance(old, int):  # 2.0 for 2 is an integer in JSON Schema: never a float here
        choices = [str(old), 2.5, None, True, [], {}, [old]]
    else:  # lines
        choices = ["lines", 3, None, {}, [1, 2], [[]]]
    doc[name] = rng.choice(choices)
    return _dump(doc)


def missing_field(rng: random.Random, e: Event) -> bytes:
    doc = _doc(e)
    del doc[rng.choice(sorted(set(doc) - {"schema_version"}))]  # the one with a default
    return _dump(doc)


def huge_lines(rng: random.Random, e: Order) -> bytes:
    doc = _doc(e)
    # One over the limit to 12,000 (about 700 KB, inside what the broker takes), heavy-tailed:
    # mostly a few over, one in ten over 300, one in a hundred past 10,000.
    n = min(12_000, MAX_LINES + int(rng.paretovariate(0.5)))
    line = doc["lines"][0]
    doc["lines"] = [line] * n
    doc["total_cents"] = n * line["quantity"] * line["unit_price_cents"]  # only the count is off
    return _dump(doc)


def deep_nesting(rng: random.Random, e: Event) -> bytes:
    depth = min(50_000, 1 + int(rng.paretovariate(0.5)))  # heavy-tailed: 3% past 1,000
    nested = b"[" * depth + b"]" * depth
    where = rng.choice(("top", "store_id", "event_time", "region"))  # known fields
    if where == "top":
        return nested
    head, _, tail = _dump({**_doc(e), where: "\0"}).partition(b'"\\u0000"')
    return head + nested + tail


def invalid_utf8(rng: random.Random, e: Event) -> bytes:
    name = rng.choice(STRING_FIELDS)
    head, _, tail = _dump({**_doc(e), name: "\0"}).partition(b'"\\u0000"')
    good = _doc(e)[name].encode()
    at = rng.randint(0, len(good))
    return head + b'"' + good[:at] + rng.choice(BAD_UTF8) + good[at:] + b'"' + tail


def control_in_id(rng: random.Random, e: Event) -> bytes:
    doc = _doc(e)
    ids = ID_FIELDS + (("order_id", "customer_id") if isinstance(e, Order) else ("sku",))
    name = rng.choice(ids)
    at = rng.randint(0, len(doc[name]))
    doc[name] = doc[name][:at] + rng.choice(CONTROL) + doc[name][at:]
    return _dump(doc)


def future_time(rng: random.Random, e: Event, now: datetime) -> bytes:
    later = now + timedelta(days=rng.uniform(2, 3650))
    return _timed(
        rng,
        e,
        later.isoformat().replace("+00:00", "Z"),
        "9999-12-31T23:59:59Z",
        (later + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S+14:00"),
    )


def ancient_time(rng: random.Random, e: Event) -> bytes:
    return _timed(
        rng,
        e,
        "1999-12-31T23:59:59.999999Z",
        "1970-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        f"{rng.randint(1, 1999):04d}-06-15T12:00:00Z",
    )


def no_such_time(rng: random.Random, e: Event) -> bytes:
    return _timed(
        rng,
        e,
        "2026-02-30T10:00:00Z",
        "2026-13-01T10:00:00Z",
        "2026-06-01T24:00:00Z",
        "2026-06-01T10:00:00",  # no offset
        "2026-06-01",
        "yesterday",
        "",
    )


def _timed(rng: random.Random, e: Event, *times: str) -> bytes:
    """The event with one of ``times`` as its ``event_time``."""
    return _dump({**_doc(e), "event_time": rng.choice(times)})


def wrong_numbers(rng: random.Random, e: Event) -> bytes:
    doc = _doc(e)
    if isinstance(e, Order):
        choice = rng.randrange(3)
        if choice == 0:
            doc["total_cents"] += rng.choice((-1, 1, 100))
        else:
            doc["lines"][0]["quantity" if choice == 1 else "unit_price_cents"] = rng.choice(
                (0, -1, -500)
            )
    elif doc["kind"] == "delta":
        doc["quantity"] = rng.choice((0, 100_001, -100_001))
    else:
        doc["quantity"] = rng.choice((-1, 1_000_001))
    return _dump(doc)


def lying_header(rng: random.Random, e: Event, topics: Topics) -> Hostile:
    """A valid event whose ``region`` header names another region, nonsense or nothing."""
    others = [r for r in topics.regions if r != e.region]
    lie = rng.choice((rng.choice(others).encode(), b"", b"\xff\xfe", e.region.upper().encode()))
    h = _own(e, topics, "lying_header", encode(e))
    return Hostile(h.kind, h.topic, h.key, h.value, [(REGION_HEADER, lie)])


def wrong_topic(rng: random.Random, e: Event, topics: Topics) -> Hostile:
    """A valid event, with its true region header, on another region's topic or the unrouted
    one."""
    kind = "order" if isinstance(e, Order) else "inventory"
    other = rng.choice([r for r in topics.regions if r != e.region])
    topic = rng.choice((topics.for_event(kind, other), topics.unrouted))
    return Hostile(
        "wrong_topic", topic, e.store_id.encode(), encode(e), [(REGION_HEADER, e.region.encode())]
    )


ValueMutation = Callable[[random.Random, Any], "bytes | None"]
VALUE_MUTATIONS: dict[str, ValueMutation] = {
    "truncated": truncated,
    "no_value": no_value,
    "not_an_object": not_an_object,
    "oversized": oversized,
    "wrong_type": wrong_type,
    "missing_field": missing_field,
    "huge_lines": huge_lines,
    "deep_nesting": deep_nesting,
    "invalid_utf8": invalid_utf8,
    "control_in_id": control_in_id,
    "ancient_time": ancient_time,
    "no_such_time": no_such_time,
    "wrong_numbers": wrong_numbers,
}
ROUTE_MUTATIONS = {"lying_header": lying_header, "wrong_topic": wrong_topic}
KINDS: tuple[str, ...] = (*VALUE_MUTATIONS, "future_time", *ROUTE_MUTATIONS)
ORDERS_ONLY = frozenset({"huge_lines"})
# Oversized messages are few: each is up to a megabyte through Kafka, the consumer and back.
WEIGHTS = {kind: 0.05 if kind == "oversized" else 1.0 for kind in KINDS}


def hostile_messages(
    events: Sequence[Event], topics: Topics, seed: int, now: datetime
) -> Iterator[Hostile]:
    """One hostile message per event, the mutation drawn by ``seed``; ``now``: what the
    future is after."""
    rng = random.Random(seed)
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    for e in events:
        kind = rng.choices(kinds, weights)[0]
        while kind in ORDERS_ONLY and not isinstance(e, Order):
            kind = rng.choices(kinds, weights)[0]
        if kind in ROUTE_MUTATIONS:
            yield ROUTE_MUTATIONS[kind](rng, e, topics)
        elif kind == "future_time":
            yield _own(e, topics, kind, future_time(rng, e, now))
        else:
            yield _own(e, topics, kind, VALUE_MUTATIONS[kind](rng, e))


# -- the live run -------------------------------------------------------------------------------


@dataclass
class Sent:
    """What Kafka acknowledged: each message's offset, hostile by kind, valid with its event."""

    hostile: dict[Origin, str] = field(default_factory=dict)
    valid: list[tuple[Origin, Event]] = field(default_factory=list)
    started_ms: int = 0
    unacknowledged: int = 0  # messages Kafka never acknowledged (``strict=False`` only)
    first_error: str = ""


def produce(
    topology: Topology,
    valid: Sequence[Event],
    hostile: Sequence[Hostile],
    topics: Topics,
    *,
    seed: int,
    on_sent: Callable[[int], None] | None = None,
    rate: float | None = None,
    strict: bool = True,
) -> Sent:
    """Send the valid events and the hostile messages, shuffled together, as the producer login;
    returns where Kafka put each. ``rate``: messages per second (else as fast as Kafka takes
    them). Raises if any was not acknowledged, unless not ``strict`` (the chaos run, whose
    producer lives through broker faults): then the count and the first error are in the
    result."""
    items: list[Event | Hostile] = [*valid, *hostile]
    random.Random(seed).shuffle(items)
    producer = Producer(
        {
            **client_config(topology, KAFKA_PRODUCER),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 10,
            "message.max.bytes": 1_048_576,  # the broker takes batches up to 1 MiB + 12
            "logger": logging.getLogger("retail.kafka"),
        }
    )
    sent = Sent(started_ms=int(time.time() * 1000))
    failed: list[str] = []

    def delivered(item: Event | Hostile) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))
                return
            origin = (msg.topic(), msg.partition(), msg.offset())
            if isinstance(item, Hostile):
                sent.hostile[origin] = item.kind
            else:
                sent.valid.append((origin, item))

        return report

    started = time.monotonic()
    for n, item in enumerate(items, 1):
        if rate:
            # Paced: message n leaves at n / rate seconds, serving delivery reports meanwhile.
            while (ahead := started + n / rate - time.monotonic()) > 0:
                producer.poll(min(ahead, 0.1))
        msg = item if isinstance(item, Hostile) else _own(item, topics, "valid", encode(item))
        topic, key, value, headers = msg.topic, msg.key, msg.value, msg.headers
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=delivered(item)
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if on_sent and n % 1000 == 0:
            on_sent(n)
    left = producer.flush(120)
    sent.unacknowledged = left + len(failed)
    sent.first_error = failed[0] if failed else ("no report in time" if left else "")
    if sent.unacknowledged and strict:
        raise RetailError(
            f"{left + len(failed)} of {len(items)} fuzz messages not acknowledged by Kafka "
            f"({failed[0] if failed else 'no report in time'}); is it up? (`retail stack status`)"
        )
    return sent


def wait_consumed(
    topology: Topology,
    topics: Topics,
    timeout: float,
    on_wait: Callable[[int], None] | None = None,
) -> None:
    """Until every region's group has committed everything on its topics."""
    deadline = time.monotonic() + timeout
    while (lag := sum(region_lag(topology, topics, r) for r in topics.regions)) > 0:
        if time.monotonic() > deadline:
            raise RetailError(
                f"the consumers left {lag} messages unconsumed after {timeout:.0f}s; are they "
                "running? (`retail stack status`)"
            )
        if on_wait:
            on_wait(lag)
        time.sleep(1.0)


@dataclass
class FuzzResult:
    messages: int
    hostile: int
    valid: int
    dead_lettered: int  # hostile messages found in the dead-letter topic with a reason
    dead_letters_missing: int
    without_reason: int
    valid_written: int
    valid_missing: int
    valid_dead_lettered: int  # a valid event refused: written or not, a wrong verdict
    by_kind: dict[str, int]
    consumer_restarts: int | None = None
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.dead_letters_missing == 0
            and self.without_reason == 0
            and self.valid_missing == 0
            and self.valid_dead_lettered == 0
            and not self.consumer_restarts
        )

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        restarts = "?" if self.consumer_restarts is None else self.consumer_restarts
        return (
            f"messages {self.messages}: hostile {self.hostile}, dead-lettered "
            f"{self.dead_lettered}, missing {self.dead_letters_missing}, without a reason "
            f"{self.without_reason}; valid {self.valid}, written {self.valid_written}, missing "
            f"{self.valid_missing}, wrongly dead-lettered {self.valid_dead_lettered}; consumer "
            f"restarts {restarts}"
        )


EXAMPLES = 10


def reconcile(topology: Topology, topics: Topics, sent: Sent) -> FuzzResult:
    """Check what the pipeline left against what was sent (after :func:`wait_consumed`)."""
    dead = read_dead_letters(
        client_config(topology, KAFKA_OPS), topics.deadletter, sent.started_ms - 60_000
    )
    examples: list[str] = []
    missing = [o for o in sent.hostile if o not in dead]
    for o in missing[:EXAMPLES]:
        examples.append(f"not dead-lettered: {sent.hostile[o]} at {o[0]}[{o[1]}]@{o[2]}")
    no_reason = [o for o in sent.hostile if o in dead and not dead[o].strip()]
    refused = [(o, e) for o, e in sent.valid if o in dead]
    for o, e in refused[:EXAMPLES]:
        examples.append(f"valid event {e.event_id} dead-lettered: {dead[o]}")
    absent = _not_written([e for _, e in sent.valid], topology)
    examples += [f"valid event {e.event_id} ({e.region}) not written" for e in absent[:EXAMPLES]]
    return FuzzResult(
        messages=len(sent.hostile) + len(sent.valid),
        hostile=len(sent.hostile),
        valid=len(sent.valid),
        dead_lettered=len(sent.hostile) - len(missing) - len(no_reason),
        dead_letters_missing=len(missing),
        without_reason=len(no_reason),
        valid_written=len(sent.valid) - len(absent),
        valid_missing=len(absent),
        valid_dead_lettered=len(refused),
        by_kind=dict(sorted(Counter(sent.hostile.values()).items())),
        examples=examples,
    )


def _not_written(events: Sequence[Event], topology: Topology) -> list[Event]:
    """The events whose id has no row holding their version, read in their region's DC at
    LOCAL_QUORUM (which overlaps the consumer's write quorum)."""
    absent: list[Event] = []
    for dc in topology.datacenters:
        mine = [e for e in events if e.region == dc.name]
        if not mine:
            continue
        cluster, session = connect(topology, dc.name, role=CASSANDRA_OPS)
        try:
            queries = {}
            for table in ("orders", "inventory_movements"):
                q = session.prepare(
                    f"SELECT event_id FROM {KEYSPACE}.{table} WHERE {id_column(table)} = ?"
                )
                q.consistency_level = ConsistencyLevel.LOCAL_QUORUM
                queries[table] = q
            statements = []
            for e in mine:
                table, key = identity(e)
                statements.append((queries[table], (key,)))
            rows = run_all(session, statements)
            absent += [
                e
                for e, got in zip(mine, rows, strict=True)
                if not got or got[0].event_id != e.event_id
            ]
        finally:
            cluster.shutdown()
    return absent
