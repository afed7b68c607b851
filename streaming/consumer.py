"""The poll loop of a regional consumer: Kafka batches in, Cassandra writes out, offsets
committed only after the writes are acknowledged.

One consumer group per region (``retail-<region>``); any number of processes per group share
the partitions. Every group reads the event topics; a process writes the events of its own
region's stores (the producer's ``region`` header says which, without decoding) into its local
DC, and moves its commit point past the others. An event that cannot be decoded or validated
goes to the dead-letter topic with the reason and its origin, from the group of the region named
in its header (or from the first region's group if it has none), so it is dead-lettered once.

Order of a batch: consume up to N messages -> decode -> sink.add -> sink.flush (all writes
acknowledged) -> produce and flush the dead letters -> commit. A failure before the commit
commits nothing: the batch is retried (writes are idempotent) and never lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from retail.events import Event, InvalidEvent, Order, decode
from retail.kafka import Topics
from retail.metrics import Metrics
from streaming.sink import CassandraSink, SinkBackpressureError

log = logging.getLogger(__name__)

REGION_HEADER = "region"


@dataclass
class ConsumerConfig:
    """How a regional consumer polls, writes and backs off."""

    region: str
    catch_all: bool = False  # dead-letters events that name no known region
    batch_size: int = 2000
    # A poll returns as soon as it has messages or after this long: small, so that a quiet
    # stream is written within milliseconds instead of waiting to fill a batch.
    poll_timeout: float = 0.05
    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    drain_timeout: float = 60.0  # on SIGTERM: how long to keep retrying the last batch
    lag_interval: float = 5.0
    latency_log: Path | None = None  # every event's end-to-end latency, for benchmarks


@dataclass
class Batch:
    """The messages of one poll that still need writing, dead-lettering or skipping."""

    events: list[tuple[str, int, int, Event]] = field(default_factory=list)
    dead: list[tuple[Message, str]] = field(default_factory=list)
    skipped: list[tuple[str, int, int]] = field(default_factory=list)
    # Dead letters already produced and acknowledged (a retry of the batch must not produce
    # them again, but must still commit past them).
    dead_done: list[tuple[str, int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.dead or self.skipped or self.dead_done)

    def drop_partitions(self, revoked: set[tuple[str, int]]) -> None:
        self.events = [e for e in self.events if (e[0], e[1]) not in revoked]
        self.dead = [d for d in self.dead if (d[0].topic(), d[0].partition()) not in revoked]
        self.skipped = [s for s in self.skipped if (s[0], s[1]) not in revoked]
        self.dead_done = [d for d in self.dead_done if (d[0], d[1]) not in revoked]


def _header(msg: Message, name: str) -> str | None:
    for key, value in msg.headers() or []:
        if key == name and value is not None:
            return value.decode(errors="replace")
    return None


class RegionalConsumer:
    """Consumes the event topics for one region and writes that region's events."""

    def __init__(
        self,
        config: ConsumerConfig,
        consumer: Consumer,
        producer: Producer,
        sink: CassandraSink,
        metrics: Metrics,
        topics: Topics,
        regions: set[str],
    ) -> None:
        self.cfg = config
        self.consumer = consumer
        self.producer = producer
        self.sink = sink
        self.metrics = metrics
        self.topics = topics
        self.regions = regions
        self.pending = Batch()
        self._last_lag = 0.0
        self.m = f"consumer.{config.region}"

    # -- routing ------------------------------------------------------------------------------

    def _handle(self, msg: Message, batch: Batch) -> None:
        topic, part, offset = msg.topic(), msg.partition(), msg.offset()
        region = _header(msg, REGION_HEADER)
        if region in self.regions and region != self.cfg.region:
            batch.skipped.append((topic, part, offset))  # another region's group writes it
            return
        try:
            event = decode(msg.value() or b"")
        except InvalidEvent as exc:
            mine = region == self.cfg.region or (region not in self.regions and self.cfg.catch_all)
            if mine:
                batch.dead.append((msg, exc.reason))
            else:
                batch.skipped.append((topic, part, offset))
            return
        if event.region != self.cfg.region:
            batch.skipped.append((topic, part, offset))
            return
        batch.events.append((topic, part, offset, event))

    # -- writing and committing ---------------------------------------------------------------

    def _deliver(self, batch: Batch) -> None:
        """Write, dead-letter and commit one batch; raises if any step fails (nothing committed)."""
        for topic, part, offset, event in batch.events:
            self.sink.add(topic, part, offset, event)
        for topic, part, offset in batch.skipped:
            self.sink.mark_done(topic, part, offset)
        for msg, _ in batch.dead:
            self.sink.mark_done(msg.topic(), msg.partition(), msg.offset())
        for topic, part, offset in batch.dead_done:
            self.sink.mark_done(topic, part, offset)
        started = time.perf_counter()
        result = self.sink.flush()
        write_ms = (time.perf_counter() - started) * 1000
        if batch.dead:
            self._dead_letter(batch.dead)
            # Produced and acknowledged: if the commit below fails and the batch is retried,
            # these must not be dead-lettered a second time; their offsets still get committed.
            batch.dead_done += [(m.topic(), m.partition(), m.offset()) for m, _ in batch.dead]
            batch.dead = []
        offsets = [TopicPartition(t, p, o) for (t, p), o in result.next_offsets.items()]
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        self._count(batch, result.event_times, result.written_at, write_ms)

    def _dead_letter(self, dead: list[tuple[Message, str]]) -> None:
        now = datetime.now(UTC).isoformat()
        for msg, reason in dead:
            headers = [
                ("reason", reason.encode()),
                ("origin.topic", msg.topic().encode()),
                ("origin.partition", str(msg.partition()).encode()),
                ("origin.offset", str(msg.offset()).encode()),
                ("consumer.region", self.cfg.region.encode()),
                ("failed_at", now.encode()),
            ]
            self.producer.produce(
                self.topics.deadletter, value=msg.value(), key=msg.key(), headers=headers
            )
            log.warning(
                "dead-lettered %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason
            )
        # Durable before the commit: a dead letter lost together with its offset is a silent drop.
        if self.producer.flush(30) > 0:
            raise KafkaException("dead letters not acknowledged within 30s")

    def _count(
        self,
        batch: Batch,
        event_times: list[datetime],
        written_at: datetime | None,
        write_ms: float,
    ) -> None:
        # One StatsD packet per (topic, outcome) per batch, not one per message: per-message
        # sends cost ~6% of the consumer's CPU in a profile.
        counts: Counter[tuple[str, str]] = Counter()
        for topic, _, _, _ in batch.events:
            counts[(topic, "written")] += 1
        for topic, _, _ in batch.dead_done:
            counts[(topic, "deadlettered")] += 1
        for topic, _, _ in batch.skipped:
            counts[(topic, "skipped")] += 1
        consumed: Counter[str] = Counter()
        for (topic, outcome), n in counts.items():
            self.metrics.incr(f"{self.m}.{Topics.short(topic)}.{outcome}", n)
            consumed[topic] += n
        for topic, n in consumed.items():
            self.metrics.incr(f"{self.m}.{Topics.short(topic)}.consumed", n)
        revenue: Counter[str] = Counter()
        for _, _, _, event in batch.events:
            if isinstance(event, Order):
                revenue[event.currency] += event.total_cents
        for currency, cents in revenue.items():
            self.metrics.incr(f"{self.m}.revenue.{currency}", cents)
        self.metrics.gauge(f"{self.m}.batch_size", len(batch.events))
        if event_times:
            self.metrics.timing(f"{self.m}.write_latency", write_ms)
            now = written_at or datetime.now(UTC)
            if self.cfg.latency_log:
                with self.cfg.latency_log.open("a") as f:
                    f.write(
                        " ".join(f"{(now - t).total_seconds() * 1000:.2f}" for t in event_times)
                        + "\n"
                    )
            # A handful of samples per batch: enough for the summary's quantiles without a
            # UDP packet per event.
            step = max(1, len(event_times) // 10)
            for t in event_times[::step]:
                self.metrics.timing(f"{self.m}.e2e_latency", (now - t).total_seconds() * 1000)

    def _deliver_with_backoff(self, stop: threading.Event, deadline: float | None) -> bool:
        """Deliver the pending batch, pausing the partitions and backing off while Cassandra
        (or Kafka, for dead letters) refuses. Returns False if it gave up at ``deadline``."""
        delay = self.cfg.backoff_initial
        paused: list[TopicPartition] = []
        try:
            while self.pending:
                try:
                    self._deliver(self.pending)
                    self.pending = Batch()
                    return True
                except (SinkBackpressureError, KafkaException) as exc:
                    self.metrics.incr(f"{self.m}.retries")
                    if not paused:
                        paused = self.consumer.assignment()
                        self.consumer.pause(paused)
                    log.warning(
                        "batch of %d events not written, nothing committed; retry in %.1fs: %s",
                        len(self.pending.events),
                        delay,
                        exc,
                    )
                    if deadline is not None and time.monotonic() + delay > deadline:
                        return False
                    if deadline is None and stop.is_set():
                        return False  # the caller drains with a deadline
                    self._report_lag()  # lag keeps growing while we wait: show it
                    self._wait(delay, stop if deadline is None else None)
                    delay = min(delay * 2, self.cfg.backoff_max)
            return True
        finally:
            if paused:
                self.consumer.resume([tp for tp in paused if tp in self.consumer.assignment()])

    def _wait(self, seconds: float, stop: threading.Event | None) -> None:
        """Sleep while serving the consumer's callbacks (rebalances) on paused partitions."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (stop and stop.is_set()):
            self.consumer.poll(min(0.2, max(0.0, end - time.monotonic())))

    # -- rebalances ---------------------------------------------------------------------------

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Settle in-flight work before partitions move: deliver what is pending if Cassandra
        lets us, otherwise drop it uncommitted for the next owner to redo."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if self.pending:
            try:
                self._deliver(self.pending)
                self.pending = Batch()
            except (SinkBackpressureError, KafkaException) as exc:
                log.warning(
                    "revoked %d partitions with an unwritten batch (%s); the next owner "
                    "redoes it from the last commit",
                    len(revoked),
                    exc,
                )
                self.pending.drop_partitions(revoked)
        log.info("partitions revoked: %s", sorted(revoked))

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in partitions))

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, until: Callable[[], bool] | None = None) -> bool:
        """Poll and write until ``stop`` is set (SIGTERM) or ``until()`` says so; then drain the
        last batch and commit. Returns False if the drain gave up (nothing lost: it was not
        committed)."""
        self.consumer.subscribe(
            self.topics.events,
            on_assign=self.on_assign,
            on_revoke=self.on_revoke,
            on_lost=self.on_revoke,
        )
        log.info("consumer for %s started (group %s)", self.cfg.region, self.consumer)
        while not stop.is_set() and not (until and until()):
            for msg in self._poll():
                if msg.error():
                    self.metrics.incr(f"{self.m}.errors.kafka")
                    log.warning("Kafka error: %s", msg.error())
                    continue
                self._handle(msg, self.pending)
            if self.pending:
                self._deliver_with_backoff(stop, None)
            self._report_lag()
        drained = True
        if self.pending:
            drained = self._deliver_with_backoff(stop, time.monotonic() + self.cfg.drain_timeout)
        self.consumer.close()
        log.info(
            "consumer for %s stopped (%s)",
            self.cfg.region,
            "drained" if drained else "last batch NOT written; it will be redone",
        )
        return drained

    def _poll(self) -> list[Message]:
        """Up to ``batch_size`` messages, returned as soon as any is there.

        ``consume(n, timeout)`` waits until it has n messages or the timeout passes, so a quiet
        stream would wait the full timeout every time. Instead: take what is already fetched;
        if nothing, wait for one message, then take whatever arrived with it. Under a backlog
        the batches fill up; in a trickle each event is written within milliseconds.
        """
        msgs = self.consumer.consume(num_messages=self.cfg.batch_size, timeout=0)
        if msgs:
            return msgs
        first = self.consumer.poll(self.cfg.poll_timeout)
        if first is None:
            return []
        return [first, *self.consumer.consume(num_messages=self.cfg.batch_size - 1, timeout=0)]

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < self.cfg.lag_interval:
            return
        self._last_lag = now
        assigned = self.consumer.assignment()
        if not assigned:
            return
        for tp in self.consumer.position(assigned):
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0 and tp.offset >= 0:
                self.metrics.gauge(
                    f"{self.m}.{Topics.short(tp.topic)}.{tp.partition}.lag", high - tp.offset
                )
