"""The Kafka conventions: which topic a producer picks, which topics a group reads, and what
the consumers refuse as misrouted."""

from __future__ import annotations

from pathlib import Path

import pytest

from retail import kafka
from retail.errors import ConfigError
from retail.kafka import (
    Topics,
    dead_letter_headers,
    dead_letter_origin,
    group_name,
    header,
    misrouted,
)

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
    assert TOPICS.group("us-east") == "retail-us-east"


def test_the_catch_all_group_reads_what_no_region_claims() -> None:
    assert TOPICS.catch_all == "eu-west"
    assert TOPICS.reader_of("retail.us-east.orders") == "us-east"
    assert TOPICS.reader_of("retail.unrouted") == "eu-west"
    assert [r for r in TOPICS.regions if TOPICS.unrouted in TOPICS.read_by(r)] == ["eu-west"]


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


def test_the_header_names_on_the_wire() -> None:
    """Producers, consumers, the audit and whoever reads the dead-letter topic by hand rely on
    these names: renaming one is a change of the message format, not a refactoring."""
    assert kafka.REGION_HEADER == "region"
    assert (
        kafka.DLQ_REASON,
        kafka.DLQ_ORIGIN_TOPIC,
        kafka.DLQ_ORIGIN_PARTITION,
        kafka.DLQ_ORIGIN_OFFSET,
        kafka.DLQ_CONSUMER_REGION,
        kafka.DLQ_FAILED_AT,
        kafka.DLQ_PAYLOAD_OMITTED,
        kafka.DLQ_PAYLOAD_SIZE,
    ) == (
        "reason",
        "origin.topic",
        "origin.partition",
        "origin.offset",
        "consumer.region",
        "failed_at",
        "payload.omitted",
        "payload.size",
    )


def test_a_dead_letter_says_why_and_where_it_came_from() -> None:
    got = dead_letter_headers(("retail.eu-west.orders", 3, 41), "bad", "eu-west", "now")
    assert header(got, "reason") == "bad"
    assert dead_letter_origin(got) == ("retail.eu-west.orders", 3, 41)
    assert header(got, "payload.omitted") is None
    by_reference = dead_letter_headers(
        ("retail.eu-west.orders", 3, 42), "bad", "eu-west", "now", omitted_size=20_000
    )
    assert header(by_reference, "payload.size") == "20000"
    assert header(by_reference, "payload.omitted") == "too large for the dead-letter topic"
    assert dead_letter_origin([("origin.topic", b"t"), ("origin.offset", b"1")]) is None
    assert (
        dead_letter_origin(
            [("origin.topic", b"t"), ("origin.partition", b"x"), ("origin.offset", b"1")]
        )
        is None
    )


def test_every_client_connects_with_scram_over_tls_as_its_own_login(tmp_path: Path) -> None:
    from retail.credentials import kafka_consumer
    from retail.topology import profile_topology
    from stack import secrets

    topo = profile_topology("test", brokers=3)
    creds = secrets.ensure(tmp_path, topo)
    config = kafka.client_config(topo, kafka_consumer("eu-west"), creds)
    password = creds.login("kafka", "consumer-eu-west").password.get_secret_value()
    assert config == {
        "bootstrap.servers": "127.0.10.1:9092,127.0.10.2:9092,127.0.10.3:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "consumer-eu-west",
        "sasl.password": password,
        "ssl.ca.location": str(tmp_path / "secrets" / "ca.pem"),
    }
    with pytest.raises(ConfigError, match="no kafka login 'nobody'"):
        kafka.client_config(topo, "nobody", creds)


def test_a_coordinator_that_is_loading_or_moving_is_asked_again_other_errors_are_not() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from retail.kafka import _coordinator_moving

    for code in (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS):
        assert _coordinator_moving(KafkaException(KafkaError(code)))
    assert not _coordinator_moving(
        KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
    )
    assert not _coordinator_moving(KafkaException("no error object"))


def test_a_lag_probe_asks_again_while_a_leader_moves_not_when_refused() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from retail.kafka import _moving

    for code in (
        KafkaError.NOT_COORDINATOR,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
    ):
        assert _moving(KafkaException(KafkaError(code)))
    assert not _moving(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert not _moving(KafkaException("no error object"))
