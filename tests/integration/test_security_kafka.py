"""Kafka is secure by default: every refusal below is seen from outside, by a real client on the
real stack, next to the same request made by the login that may make it (so that on an open,
PLAINTEXT broker each of these tests fails)."""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient

from retail.credentials import KAFKA_OPS, KAFKA_PRODUCER, kafka_consumer, stack_credentials
from retail.kafka import Topics, client_config, ensure_topics
from retail.topology import Topology
from stack import secrets
from stack.local import LocalStack
from tests.integration.tls import foreign_ca

Config = dict[str, Any]


@pytest.fixture(scope="module")
def topics(topology: Topology) -> Iterator[Topics]:
    """Topics of their own (created, with their ACLs, by the admin), one message on each
    event topic of the first two regions, written by the producer."""
    t = Topics.named(f"sec{uuid.uuid4().hex[:8]}", partitions=1)
    ensure_topics(topology, t)
    producer = Producer(client_config(topology, KAFKA_PRODUCER))
    for region in t.regions[:2]:
        producer.produce(t.orders(region), key=b"store-0001", value=b"{}")
    assert producer.flush(30) == 0
    yield t


def _quiet(config: Config) -> Config:
    # Fail fast and keep librdkafka's expected connection errors out of the test output.
    return {**config, "socket.timeout.ms": 5000, "log_level": 0}


def can_list_topics(config: Config) -> bool:
    try:
        AdminClient(_quiet(config)).list_topics(timeout=8)
    except KafkaException:
        return False
    return True


def can_produce(config: Config, topic: str) -> bool:
    failed: list[KafkaError] = []
    producer = Producer({**_quiet(config), "message.timeout.ms": 8000})
    producer.produce(topic, value=b"{}", on_delivery=lambda err, _msg: err and failed.append(err))
    return producer.flush(15) == 0 and not failed


def read(config: Config, topic: str, group: str, seconds: float = 10) -> tuple[int, set[int]]:
    """Messages read from ``topic``'s partition 0 from its start (``assign()``, no group
    join), and the error codes seen meanwhile."""
    errors: set[int] = set()
    consumer = Consumer(
        {
            **_quiet(config),
            "group.id": group,
            "enable.auto.commit": False,
            "error_cb": lambda err: errors.add(err.code()),
        }
    )
    consumer.assign([TP(topic, 0, OFFSET_BEGINNING)])
    got = 0
    deadline = time.monotonic() + seconds
    try:
        while not got and time.monotonic() < deadline:
            for msg in consumer.consume(10, 1.0):
                if msg.error() is None:
                    got += 1
                else:
                    errors.add(msg.error().code())
            if KafkaError.TOPIC_AUTHORIZATION_FAILED in errors:
                break
    finally:
        consumer.close()
    return got, errors


def commit(config: Config, group: str, topic: str, offset: int = 1) -> KafkaError | None:
    """Commit ``offset`` of ``topic``[0] for ``group``; the error, or None if it was taken."""
    consumer = Consumer({**_quiet(config), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TP(topic, 0, offset)], asynchronous=False)
    except KafkaException as exc:
        return exc.args[0]
    finally:
        consumer.close()
    return None


def committed(config: Config, group: str, topic: str) -> int:
    """``group``'s committed offset on ``topic``[0] (negative: none)."""
    consumer = Consumer({**_quiet(config), "group.id": group})
    try:
        [tp] = consumer.committed([TP(topic, 0)], timeout=10)
    finally:
        consumer.close()
    assert tp.error is None, tp.error
    return tp.offset


def test_a_client_without_credentials_can_neither_list_topics_nor_produce(
    topology: Topology, topics: Topics
) -> None:
    anonymous = {"bootstrap.servers": topology.bootstrap_servers}
    assert not can_list_topics(anonymous)
    assert not can_produce(anonymous, topics.orders(topics.regions[0]))
    # TLS without a login, and a login with a wrong password, are refused too.
    producer = client_config(topology, KAFKA_PRODUCER)
    tls_only = {k: v for k, v in producer.items() if not k.startswith("sasl.")}
    assert not can_list_topics({**tls_only, "security.protocol": "SSL"})
    assert not can_produce({**producer, "sasl.password": "not-the-password"}, topics.unrouted)
    # The same requests with the producer's login go through.
    assert can_list_topics(producer)
    assert can_produce(producer, topics.orders(topics.regions[0]))


def test_the_producer_cannot_read_an_event_topic(topology: Topology, topics: Topics) -> None:
    eu = topics.regions[0]
    got, errors = read(client_config(topology, KAFKA_PRODUCER), topics.orders(eu), topics.group(eu))
    assert got == 0
    assert KafkaError.TOPIC_AUTHORIZATION_FAILED in errors
    # The region's consumers read it.
    got, _ = read(client_config(topology, kafka_consumer(eu)), topics.orders(eu), topics.group(eu))
    assert got > 0


def test_a_regional_login_cannot_read_another_regions_topic_nor_commit_its_group(
    topology: Topology, topics: Topics
) -> None:
    eu, us = topics.regions[:2]
    us_login = client_config(topology, kafka_consumer(us))
    # Not even its metadata: the topic is not the login's to describe.
    meta = AdminClient(_quiet(us_login)).list_topics(topics.orders(eu), timeout=10)
    refused = meta.topics[topics.orders(eu)].error
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    got, _ = read(us_login, topics.orders(eu), topics.group(us))
    assert got == 0
    # Nor commit in the other region's group (it may not even find its coordinator): refused,
    # and the group's offset, as ops reads it, has not moved.
    assert commit(us_login, topics.group(eu), topics.orders(us)) is not None
    assert committed(client_config(topology, KAFKA_OPS), topics.group(eu), topics.orders(us)) < 0
    # Its own region's topic and group it may.
    assert read(us_login, topics.orders(us), topics.group(us))[0] > 0
    assert commit(us_login, topics.group(us), topics.orders(us)) is None


def test_ops_reads_a_groups_offsets_but_cannot_move_them(
    topology: Topology, topics: Topics
) -> None:
    us = topics.regions[1]
    ops = client_config(topology, KAFKA_OPS)
    before = committed(ops, topics.group(us), topics.orders(us))  # it reads the offsets
    refused = commit(ops, topics.group(us), topics.orders(us), offset=max(before, 0) + 7)
    assert refused is not None and refused.code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    assert committed(ops, topics.group(us), topics.orders(us)) == before


def test_a_client_that_does_not_trust_the_stacks_ca_cannot_connect(
    topology: Topology, tmp_path: Path
) -> None:
    ops = client_config(topology, KAFKA_OPS)
    assert not can_list_topics({**ops, "ssl.ca.location": str(foreign_ca(tmp_path / "ca.pem"))})
    assert not can_list_topics({**ops, "ssl.ca.location": "probe"})  # the system's CAs
    assert can_list_topics(ops)


def test_the_controller_listener_takes_only_the_brokers_certificates(
    topology: Topology, local_stack: LocalStack
) -> None:
    broker = topology.brokers[0]

    def exchange(certificate: Path | None) -> bytes:
        """An ApiVersions request over TLS (trusting the stack's CA), with ``certificate`` as
        the client's or none; the first bytes of the answer (empty: closed without one)."""
        context = ssl.create_default_context(cafile=str(stack_credentials().ca_file))
        if certificate is not None:
            context.load_cert_chain(certificate)
        with (
            socket.create_connection((broker.address, broker.controller_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=broker.address) as tls,
        ):
            tls.sendall(b"\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x01\xff\xff")
            return tls.recv(4)

    # Without a certificate the TLS session fails (TLS 1.3 reports the refusal on the first
    # read) and the request never reaches Kafka.
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        if exchange(None) == b"":
            raise ConnectionResetError("closed without an answer")
    # A broker's certificate gets an answer.
    assert len(exchange(secrets.server_pem(local_stack.dir, broker.name))) == 4
