"""Publishing retail events to Kafka: keyed by store (a store's events stay in order, in one
partition), routed by region and type to its topic (:class:`retail.kafka.Topics`), with the
store's region in the ``region`` header as well."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer

from retail.credentials import KAFKA_PRODUCER
from retail.errors import RetailError
from retail.events import Event, Order, encode
from retail.kafka import REGION_HEADER, Topics, client_config
from retail.topology import Topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One message as it goes on the wire."""

    topic: str
    key: bytes | None
    value: bytes
    region: str | None


def records_from_events(events: Iterable[Event], topics: Topics) -> Iterator[Record]:
    for e in events:
        kind = "order" if isinstance(e, Order) else "inventory"
        yield Record(topics.for_event(kind, e.region), e.store_id.encode(), encode(e), e.region)


def records_from_jsonl(path: Path, topics: Topics) -> Iterator[Record]:
    """Replay a JSON-lines file as it is, valid or not: bad lines are the consumers' to reject
    (they reach the dead-letter topic), so they are sent unchanged. The topic, key and region
    come from the line when it parses far enough to tell them; a line whose region cannot be
    told goes to the unrouted topic."""
    with path.open("rb") as f:
        for raw in f:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            fields = obj if isinstance(obj, dict) else {}
            kind = fields.get("type")
            store = fields.get("store_id")
            region = fields.get("region")
            region = region if isinstance(region, str) else None
            yield Record(
                topics.for_event(kind if isinstance(kind, str) else None, region),
                str(store).encode() if store else None,
                line,
                region,
            )


class EventProducer:
    """An idempotent producer (acks=all): a retried send is never written twice by Kafka. It
    sends as the ``producer`` login, which may write the event topics and nothing else."""

    def __init__(self, topology: Topology, **overrides: object) -> None:
        conf: dict[str, object] = {
            **client_config(topology, KAFKA_PRODUCER),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 10,
            "compression.type": "lz4",
            "logger": logging.getLogger("retail.kafka"),
        }
        conf.update(overrides)
        self.producer = Producer(conf)
        self.failed = 0

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failed += 1
            log.error("delivery failed: %s", err)

    def send(
        self,
        records: Iterable[Record],
        *,
        rate: float | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> int:
        """Send records, at most ``rate`` per second if given; returns how many were sent.

        Raises if any was not acknowledged by Kafka.
        """
        started = time.monotonic()
        sent = 0
        for rec in records:
            headers = [(REGION_HEADER, rec.region.encode())] if rec.region else None
            while True:
                try:
                    self.producer.produce(
                        rec.topic,
                        value=rec.value,
                        key=rec.key,
                        headers=headers,
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.producer.poll(0.05)
            sent += 1
            self.producer.poll(0)
            if on_sent and sent % 500 == 0:
                on_sent(500)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if on_sent:
            on_sent(sent % 500)
        remaining = self.producer.flush(60)
        if remaining or self.failed:
            raise RetailError(
                f"{remaining + self.failed} of {sent} events were not acknowledged "
                "by Kafka; is it up? (`retail stack status`)"
            )
        return sent
