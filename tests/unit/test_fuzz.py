"""The fuzzer's hostile messages: every kind is made, each is refused by the consumers' rule with
a reason, and the same seed makes the same messages. (The live run is
tests/integration/test_fuzz.py.)"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from retail.events import Order, encode
from retail.fuzz import KINDS, hostile_messages
from retail.generator import StreamGenerator
from retail.kafka import REGION_HEADER, Topics, header, judge

TOPICS = Topics.named("fz", partitions=3)
NOW = datetime.now(UTC)


def events(n: int, seed: int = 3) -> list:
    return list(StreamGenerator(seed=seed).events(n))


def test_every_hostile_message_is_refused_by_the_consumers_rule_with_a_reason() -> None:
    accepted = []
    for h in hostile_messages(events(3000), TOPICS, seed=11, now=NOW):
        region = header(h.headers, REGION_HEADER)
        event, reason = judge(TOPICS, h.topic, region, h.value or b"")
        if event is not None or not reason:
            accepted.append((h.kind, (h.value or b"")[:200], h.topic, region))
    assert not accepted, f"{len(accepted)} hostile messages accepted, e.g. {accepted[:5]}"


def test_every_kind_is_made_and_the_seed_decides_them() -> None:
    base = events(3000)
    made = list(hostile_messages(base, TOPICS, seed=11, now=NOW))
    counts = Counter(h.kind for h in made)
    assert set(counts) == set(KINDS), set(KINDS) - set(counts)
    assert counts["oversized"] < counts["truncated"] / 5  # a megabyte each: kept rare
    assert made == list(hostile_messages(base, TOPICS, seed=11, now=NOW))
    assert made != list(hostile_messages(base, TOPICS, seed=12, now=NOW))


def test_the_events_they_start_from_are_valid_on_their_own_topic() -> None:
    # Otherwise a message could be refused for what it started as, not for its mutation.
    for e in events(500):
        kind = "order" if isinstance(e, Order) else "inventory"
        topic = TOPICS.for_event(kind, e.region)
        assert judge(TOPICS, topic, e.region, encode(e)) == (e, None)
