"""The Kafka conventions: which topic a producer picks, which topics a group reads, and what
the consumers refuse as misrouted."""

from __future__ import annotations

from retail.kafka import Topics, group_name, header, misrouted

TOPICS = Topics.named("retail")


def test_a_producer_picks_the_topic_of_the_events_region_and_type() -> None:
    assert TOPICS.for_event("order", "eu-west") == "retail.eu-west.orders"
    assert TOPICS.for_event("inventory", "ap-southeast") == "retail.ap-southeast.inventory"
    # A known region with an unknown type: its group dead-letters it from its orders topic.
    assert TOPICS.for_event("refund", "us-east") == "retail.us-east.orders"
    # A region nobody knows, or none: the unrouted topic, read by the catch-all group.
    assert TOPICS.for_event("order", "mars") == TOPICS.unrouted == "retail.unrouted"
    assert TOPICS.for_event(None, None) == "retail.unrouted"


def test_each_group_reads_its_regions_topics_and_only_the_first_the_unrouted_one() -> None:
    assert TOPICS.read_by("us-east") == ["retail.us-east.orders", "retail.us-east.inventory"]
    assert TOPICS.read_by("eu-west") == [
        "retail.eu-west.orders",
        "retail.eu-west.inventory",
        "retail.unrouted",
    ]
    every = [t for r in TOPICS.regions for t in TOPICS.read_by(r)]
    assert sorted(every) == sorted(TOPICS.events)  # every event topic is read by exactly one
    assert len(every) == len(set(every))
    assert group_name("retail", "us-east") == "retail-us-east"


def test_names_for_metrics_and_regions_of_topics() -> None:
    assert TOPICS.region_of("retail.us-east.inventory") == "us-east"
    assert TOPICS.region_of("retail.unrouted") is None
    assert TOPICS.region_of("other.us-east.orders") is None
    assert Topics.short("retail.us-east.inventory") == "inventory"
    assert TOPICS.metric_name("retail.us-east.inventory") == "us-east_inventory"
    assert TOPICS.metric_name("retail.deadletter") == "deadletter"


def test_a_header_or_topic_that_disagrees_with_the_body_is_misrouted() -> None:
    ok = misrouted(TOPICS, "retail.eu-west.orders", "eu-west", "eu-west", "order")
    assert ok is None
    assert misrouted(TOPICS, "retail.eu-west.orders", None, "eu-west", "order") is None
    lie = misrouted(TOPICS, "retail.eu-west.orders", "us-east", "eu-west", "order")
    assert lie == "region header says 'us-east' but the event's region is 'eu-west'"
    wrong = misrouted(TOPICS, "retail.eu-west.orders", None, "us-east", "order")
    assert wrong == (
        "an event of region us-east on retail.eu-west.orders; "
        "producers send it to retail.us-east.orders"
    )
    kind = misrouted(TOPICS, "retail.eu-west.orders", None, "eu-west", "inventory")
    assert kind is not None and "retail.eu-west.inventory" in kind


def test_headers_are_read_by_name() -> None:
    headers = [("origin.topic", b"t"), ("region", b"eu-west"), ("region", b"us-east")]
    assert header(headers, "region") == "eu-west"
    assert header(headers, "reason") is None
    assert header(None, "region") is None
