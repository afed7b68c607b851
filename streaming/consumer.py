"""The poll loop of a regional consumer: Kafka batches in, Cassandra writes out, offsets
committed only after the writes (and any dead letters) are acknowledged.

One consumer group per region (``retail-<region>``) reads that region's topics
(``retail.<region>.orders`` and ``.inventory``; the first region's group also reads
``retail.unrouted``); any number of processes per group share the partitions. A message that is
not a valid event of this region goes to the dead-letter topic with the reason and its origin:
it does not decode or validate, its ``region`` header or its topic disagrees with its body, it
arrived unrouted, or it tries to change what an id is (:mod:`retail.aggregates`).

A batch: poll up to N messages, route them, hand the events to a writer thread
(:meth:`CassandraSink.write`) and the dead letters to the producer, then commit. While one batch
is written the next one is polled and decoded, so a flush never waits for Kafka and an event
waits at most one flush. A failure before the commit commits nothing: the batch is kept (never
a polled message dropped), the partitions are paused, and it is retried with backoff (writes are
idempotent, rollups skip what they hold).

Where a partition starts: at the group's committed offset, or at the beginning of the log when
the group never committed there. A committed offset the log no longer holds (retention deleted
messages the group never read) is never skipped over: the partition stalls, with an error log
and a metric, until an operator decides (DESIGN.md, Durability).

Rebalances: a revoked partition's batch in flight is finished and committed within
``revoke_timeout`` if it can be, otherwise dropped uncommitted for the next owner; a lost
partition's pending work is dropped unwritten (another member may already own it; the rollup
fences make a write still in flight harmless). Partitions assigned while backing off are paused
with the others, and every assigned partition is resumed when the backoff ends.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from retail import kafka as conv
from retail.aggregates import Applied, Outcome
from retail.errors import RetailError
from retail.events import Event, Order
from retail.kafka import Topics
from retail.metrics import Metrics
from retail.rows import Position
from streaming.sink import CassandraSink, SinkBackpressureError, SinkError

log = logging.getLogger(__name__)

TP = tuple[str, int]


class ConsumerStopped(RetailError):
    """The consumer cannot go on (a failure that retrying does not fix); nothing committed."""


@dataclass
class ConsumerConfig:
    """How a regional consumer polls, writes and backs off."""

    region: str
    batch_size: int = 2000
    # A poll returns as soon as it has messages or after this long: small, so that a quiet
    # stream is written within milliseconds instead of waiting to fill a batch.
    poll_timeout: float = 0.05
    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    drain_timeout: float = 60.0  # on SIGTERM: how long to keep retrying the last batch
    revoke_timeout: float = 20.0  # how long a revoke waits for the batch in flight
    dead_letter_timeout: float = 30.0
    max_sink_errors: int = 5  # non-retriable write failures in a row before stopping
    # Written offsets are committed at most this often (and at once when idle, on a revoke and
    # on stop): the commit is off the write path, and a crash replays at most this much, which
    # the writes make harmless.
    commit_interval: float = 0.5
    lag_interval: float = 5.0
    committed_timeout: float = 30.0  # reading the group's offsets when partitions are assigned
    latency_log: Path | None = None  # every event's end-to-end latency, for benchmarks


@dataclass
class Batch:
    """Messages polled and routed, not committed yet."""

    events: list[tuple[Position, Event]] = field(default_factory=list)
    # The message of each event: what a conflict found while writing dead-letters.
    raw: dict[Position, Message] = field(default_factory=dict)
    dead: list[tuple[Message, str]] = field(default_factory=list)
    # Dead letters already produced and acknowledged: a retry of the batch must not produce
    # them again, but must still commit past them.
    dead_done: list[Position] = field(default_factory=list)
    next_offsets: dict[TP, int] = field(default_factory=dict)  # the commit point per partition
    polled: int = 0
    first_polled: float = 0.0  # monotonic time of its first message
    # Milliseconds its oldest message waited in Kafka (its producer's timestamp to polled).
    kafka_ms: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.next_offsets)

    def mark(self, msg: Message) -> None:
        key = (msg.topic(), msg.partition())
        self.next_offsets[key] = max(self.next_offsets.get(key, 0), msg.offset() + 1)
        if not self.polled:
            self.first_polled = time.monotonic()
            _, ts = msg.timestamp()
            self.kafka_ms = max(0.0, time.time() * 1000 - ts) if ts > 0 else 0.0
        self.polled += 1

    def drop(self, partitions: set[TP]) -> None:
        self.events = [e for e in self.events if (e[0].topic, e[0].partition) not in partitions]
        self.raw = {p: m for p, m in self.raw.items() if (p.topic, p.partition) not in partitions}
        self.dead = [d for d in self.dead if (d[0].topic(), d[0].partition()) not in partitions]
        self.dead_done = [p for p in self.dead_done if (p.topic, p.partition) not in partitions]
        for key in partitions:
            self.next_offsets.pop(key, None)


@dataclass
class InFlight:
    batch: Batch
    future: Future[Applied]
    started: float


class RegionalConsumer:
    """Consumes one region's topics and writes its events into the region's DC."""

    def __init__(
        self,
        config: ConsumerConfig,
        consumer: Consumer,
        producer: Producer,
        sink: CassandraSink,
        metrics: Metrics,
        topics: Topics,
    ) -> None:
        self.cfg = config
        self.consumer = consumer
        self.producer = producer
        self.sink = sink
        self.metrics = metrics
        self.topics = topics
        self.pending = Batch()  # polled, to write next
        self.retry: Batch | None = None  # failed, to write again before anything polled after it
        self.inflight: InFlight | None = None
        self.backoff_until = 0.0  # monotonic; while in the future, partitions stay paused
        self.delay = config.backoff_initial
        self.sink_errors = 0
        self.fatal: ConsumerStopped | None = None
        self.paused = False
        self.lost: set[TP] = set()  # partitions lost or revoked mid-write: not committed
        self.written: dict[TP, int] = {}  # written, not committed yet: the next commit point
        self._last_commit = 0.0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"writer-{config.region}")
        self._last_lag = 0.0
        self.m = f"consumer.{config.region}"

    # -- routing ------------------------------------------------------------------------------

    def route(self, msg: Message, batch: Batch) -> None:
        """Put one message in the batch: an event to write, or a dead letter with its reason."""
        batch.mark(msg)
        topic = msg.topic()
        header = conv.header(msg.headers(), conv.REGION_HEADER)
        event, reason = conv.judge(self.topics, topic, header, msg.value() or b"")
        if event is None:
            batch.dead.append((msg, reason or ""))
            return
        position = Position(topic, msg.partition(), msg.offset())
        batch.events.append((position, event))
        batch.raw[position] = msg

    # -- writing --------------------------------------------------------------------------------

    def _write(self, batch: Batch) -> Applied:
        """The writer thread's work: the events, then the dead letters. Raises if anything is
        not acknowledged (nothing is committed then)."""
        applied = self.sink.write(batch.events)
        done = set(batch.dead_done)
        conflicts = [
            (batch.raw[r.position], r.reason or "")
            for r in applied.conflicts
            if r.position not in done
        ]
        dead = batch.dead + conflicts
        if dead:
            self._dead_letter(dead, batch)
            batch.dead = []
        return applied

    def _dead_letter(self, dead: list[tuple[Message, str]], batch: Batch) -> None:
        """Produce every dead letter and wait for each delivery report: a dead letter lost
        together with its committed offset would be a silent drop. Those acknowledged go to
        ``batch.dead_done``, so that a retry of the batch does not send them again."""
        now = datetime.now(UTC).isoformat()
        reports: dict[int, KafkaError | None] = {}
        for i, (msg, reason) in enumerate(dead):
            self._produce_dead(i, msg, reason, now, reports)
        self.producer.flush(self.cfg.dead_letter_timeout)
        too_large = [i for i, err in reports.items() if _too_large(err)]
        for i in too_large:
            msg, reason = dead[i]
            del reports[i]
            self._produce_dead(i, msg, reason, now, reports, by_reference=True)
        if too_large:
            self.producer.flush(self.cfg.dead_letter_timeout)
        for i, err in sorted(reports.items()):
            if err is None:
                msg, reason = dead[i]
                batch.dead_done.append(Position(msg.topic(), msg.partition(), msg.offset()))
                log.warning(
                    "dead-lettered %s[%d]@%d: %s",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    reason,
                )
        failed = [err for err in reports.values() if err is not None]
        missing = len(dead) - len(reports)
        if failed or missing:
            first = failed[0] if failed else "no delivery report in time"
            raise KafkaException(
                f"{len(failed) + missing} of {len(dead)} dead letters not acknowledged ({first})"
            )

    def _produce_dead(
        self,
        i: int,
        msg: Message,
        reason: str,
        now: str,
        reports: dict[int, KafkaError | None],
        *,
        by_reference: bool = False,
    ) -> None:
        value = msg.value() or b""
        headers = conv.dead_letter_headers(
            (msg.topic(), msg.partition(), msg.offset()),
            reason,
            self.cfg.region,
            now,
            omitted_size=len(value) if by_reference else None,
        )
        if by_reference:
            # Too large for the dead-letter topic: say where it is instead; the payload stays in
            # its origin topic (until retention) and the headers say how to find it.
            value = json.dumps(
                {
                    "origin": f"{msg.topic()}[{msg.partition()}]@{msg.offset()}",
                    "size": len(value),
                    "reason": reason,
                }
            ).encode()

        def report(err: KafkaError | None, _msg: Message) -> None:
            reports[i] = err

        while True:
            try:
                self.producer.produce(
                    self.topics.deadletter,
                    value=value,
                    key=msg.key(),
                    headers=headers,
                    on_delivery=report,
                )
                return
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
            except KafkaException as exc:
                if _too_large(exc.args[0]) and not by_reference:
                    reports[i] = exc.args[0]  # refused before sending: retried by reference
                    return
                raise

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, until: Callable[[], bool] | None = None) -> bool:
        """Poll and write until ``stop`` is set (SIGTERM) or ``until()`` says so; then drain
        what is polled and commit. Returns False if the drain gave up (nothing lost: it was not
        committed). Raises ConsumerStopped when writes fail in a way retrying does not fix."""
        self.consumer.subscribe(
            self.topics.read_by(self.cfg.region),
            on_assign=self.on_assign,
            on_revoke=self.on_revoke,
            on_lost=self.on_lost,
        )
        log.info("consumer for %s started", self.cfg.region)
        try:
            while not stop.is_set() and not (until and until()):
                self._step()
            drained = self._drain(time.monotonic() + self.cfg.drain_timeout)
            if self.fatal is not None:
                raise self.fatal
        finally:
            self._writer.shutdown(wait=True)
            self.consumer.close()
        log.info(
            "consumer for %s stopped (%s)",
            self.cfg.region,
            "drained" if drained else "last batch NOT written; it will be redone",
        )
        return drained

    def _step(self) -> None:
        if self.fatal is not None:
            raise self.fatal
        if self.inflight and self.inflight.future.done():
            self._finish(self.inflight)
        if self.inflight is None and time.monotonic() >= self.backoff_until:
            if self.retry or self.pending:
                self._submit()  # a retry after its backoff, else the next batch
            elif self.paused:
                # The backoff is over and nothing is left to retry (a rebalance took the
                # batch's partitions): fetch again; a write that still fails pauses again.
                log.info("backoff over with nothing to retry; resuming every partition")
                self._set_paused(False)
        room = self.cfg.batch_size - self.pending.polled
        if self.written and (
            self.inflight is None
            or time.monotonic() - self._last_commit >= self.cfg.commit_interval
        ):
            self._commit()
        if self.inflight is None:
            self._poll(max(room, 1), self.cfg.poll_timeout)
        else:
            # A batch is being written: take what Kafka has fetched meanwhile (the next batch),
            # and otherwise wait for the write, briefly, so that its commit and the next batch
            # follow it at once.
            # (A poll can run a rebalance callback that finishes or drops the batch in flight.)
            if (room <= 0 or not self._poll(room, 0)) and self.inflight is not None:
                wait([self.inflight.future], timeout=0.005)
        self._report_lag()

    def _poll(self, room: int, timeout: float) -> int:
        """Poll up to ``room`` messages into the pending batch, waiting at most ``timeout`` for
        the first; returns how many came. Every message polled is kept: even one from a
        partition that arrived unpaused during a backoff."""
        msgs = self.consumer.consume(num_messages=room, timeout=0)
        if not msgs and timeout > 0:
            first = self.consumer.poll(timeout)
            msgs = [] if first is None else [first]
            if msgs and room > 1:
                msgs += self.consumer.consume(num_messages=room - 1, timeout=0)
        for msg in msgs:
            if msg.error():
                self._kafka_error(msg)
                continue
            self.route(msg, self.pending)
        return len(msgs)

    def _kafka_error(self, msg: Message) -> None:
        err = msg.error()
        if err.code() == KafkaError._AUTO_OFFSET_RESET:
            # The group's committed offset is below the log start (or past its end): messages
            # it never read are gone. Jumping to either end would hide the loss; the partition
            # stays stalled (its lag grows) until an operator decides.
            self.metrics.incr(f"{self.m}.{Topics.short(msg.topic())}.offset_out_of_range")
            log.error(
                "%s[%d]: the group's committed offset is no longer in the log (%s): messages "
                "it never read were deleted (retention shorter than the outage?) and are lost "
                "to this group. Not skipping: the partition stays stalled. To accept the loss, "
                "stop the region's consumers, move the group to the log start (kafka-consumer-"
                "groups.sh --reset-offsets --to-earliest), and start them again; replay the "
                "lost range from the producers if they kept it",
                msg.topic(),
                msg.partition(),
                err.str(),
            )
            return
        self.metrics.incr(f"{self.m}.errors.kafka")
        log.warning("Kafka error: %s", err)

    def _submit(self) -> None:
        if self.retry:
            batch, self.retry = self.retry, None
        else:
            batch, self.pending = self.pending, Batch()
        future = self._writer.submit(self._write, batch)
        self.inflight = InFlight(batch, future, time.perf_counter())

    def _finish(self, inflight: InFlight) -> None:
        """Settle a completed write: commit it, or keep it for a retry with backoff."""
        self.inflight = None
        try:
            applied = inflight.future.result()
        except (SinkBackpressureError, KafkaException, SinkError) as exc:
            self._retry_later(inflight.batch, exc)
            return
        for tp, offset in inflight.batch.next_offsets.items():
            if tp not in self.lost:
                self.written[tp] = max(self.written.get(tp, 0), offset)
        seconds = time.perf_counter() - inflight.started
        self._count(inflight.batch, applied, seconds)
        batch = inflight.batch
        log.debug(
            "batch of %d messages: %.0f ms in Kafka, %.0f ms polled before written, "
            "written in %.0f ms (%s)",
            batch.polled,
            batch.kafka_ms,
            (time.monotonic() - batch.first_polled) * 1000 - seconds * 1000,
            seconds * 1000,
            ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in applied.seconds.items()),
        )
        if self.paused:
            log.info("writes succeed again; resuming every partition")
            self._set_paused(False)
        self.delay = self.cfg.backoff_initial
        self.sink_errors = 0

    def _retry_later(self, batch: Batch, exc: BaseException) -> None:
        """Keep the batch to write again (before anything polled since: a retry is never
        larger than the batch that failed), pause, and back off. Partitions lost meanwhile are
        dropped: their new owner writes them."""
        batch.drop(self.lost & set(batch.next_offsets))
        self.retry = batch
        self.metrics.incr(f"{self.m}.retries")
        if isinstance(exc, SinkBackpressureError) and exc.retry_after == 0:
            # Another consumer wrote a bucket meanwhile: apply the batch again at once.
            log.info("batch of %d events: %s", len(batch.events), exc.cause)
            return
        if isinstance(exc, SinkError):
            self.sink_errors += 1
            if self.sink_errors >= self.cfg.max_sink_errors:
                self.fatal = ConsumerStopped(
                    f"{self.cfg.region}: {self.sink_errors} writes in a row failed in a way "
                    f"retrying does not fix; nothing was committed. Last: {exc}. Fix the cause "
                    "and start the consumer again: it resumes from the last commit"
                )
        log.warning(
            "batch of %d events not written, nothing committed; retry in %.1fs: %s",
            len(batch.events),
            self.delay,
            exc,
        )
        self._set_paused(True)
        self.backoff_until = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.cfg.backoff_max)
        self._report_lag(force=True)  # lag grows while we wait: show it

    def _commit(self, *, sync: bool = False) -> None:
        """Commit what is written: asynchronously on the way (a failure is logged by
        :meth:`on_commit`), and waiting for the broker on a revoke and on stop."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.written.items()]
        self.written = {}
        self._last_commit = time.monotonic()
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=not sync)
        except KafkaException as exc:
            # Written but not committed (the partitions moved): the next owner writes it again,
            # which changes nothing.
            log.warning(
                "commit of %d partitions failed (%s); the next owner redoes it", len(offsets), exc
            )

    def _set_paused(self, paused: bool) -> None:
        """Pause or resume the whole assignment (partitions assigned later follow: on_assign)."""
        self.paused = paused
        assigned = self.consumer.assignment()
        if assigned:
            (self.consumer.pause if paused else self.consumer.resume)(assigned)

    def _drain(self, deadline: float) -> bool:
        """Write and commit everything polled, retrying until ``deadline``."""
        while (self.inflight or self.retry or self.pending) and self.fatal is None:
            if self.inflight:
                done, _ = wait([self.inflight.future], timeout=deadline - time.monotonic())
                if not done:
                    return False
                self._finish(self.inflight)
                continue
            if self.backoff_until > deadline:
                return False
            time.sleep(max(0.0, self.backoff_until - time.monotonic()))
            self._submit()
        self._commit(sync=True)
        return self.fatal is None

    # -- rebalances -----------------------------------------------------------------------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(self._starts(consumer, partitions))
        if self.paused:
            consumer.pause(partitions)  # joins the backoff; resumed with the others
        else:
            consumer.resume(partitions)  # librdkafka may remember an earlier pause
        self.lost -= {(tp.topic, tp.partition) for tp in partitions}
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def _starts(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Where each assigned partition starts: its group's committed offset, or its beginning
        when the group never committed there (a new group reads everything there is). Only
        that case is decided here: ``auto.offset.reset`` is ``error``, so a committed offset
        that is no longer in the log is reported (:meth:`_kafka_error`), never skipped.
        Raises if the committed offsets cannot be read, all or one (the process exits and is
        restarted)."""
        committed = consumer.committed(partitions, timeout=self.cfg.committed_timeout)
        failed = [tp for tp in committed if tp.error is not None]
        if failed:
            # Not "never committed": starting those at the beginning would replay them whole.
            raise KafkaException(failed[0].error)
        return [
            TopicPartition(
                tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            )
            for tp in committed
        ]

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Settle work before partitions move: finish and commit the batch in flight if it
        finishes in time, and drop the revoked partitions' uncommitted messages for the next
        owner to redo."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        inflight = self.inflight
        if inflight and revoked & set(inflight.batch.next_offsets):
            done, _ = wait([inflight.future], timeout=self.cfg.revoke_timeout)
            if done:
                self._finish(inflight)
            else:
                log.warning(
                    "batch in flight not written within %.0fs of a revoke; the next owner "
                    "redoes it",
                    self.cfg.revoke_timeout,
                )
                self.lost |= revoked
        for batch in (self.retry, self.pending):
            if batch:
                batch.drop(revoked)
        self._commit(sync=True)  # while they are still ours
        for tp in revoked:
            # A commit that failed meanwhile was put back for the next commit (on_commit): after
            # the revoke these offsets are the next owner's to commit, never ours.
            self.written.pop(tp, None)
        log.info("partitions revoked: %s", sorted(revoked))

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another member may already own these: write nothing more for them, and never commit
        them (a write still in flight is harmless: the rollups are fenced)."""
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self.lost |= lost
        for batch in (self.retry, self.pending):
            if batch:
                batch.drop(lost)
        for tp in lost:
            self.written.pop(tp, None)
        log.warning("partitions lost (session timed out): %s", sorted(lost))

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The commit callback. A failed commit of partitions another member now owns is
        harmless: the next owner redoes the batch, which changes nothing. But a rebalance can
        fail a commit (ILLEGAL_GENERATION) and leave the partitions here (cooperative
        assignment): then nobody else would commit them, and without new messages the group
        would stay behind for ever. Those offsets go back into the next commit."""
        failed = [tp for tp in partitions if tp.error is not None]
        if err is None and not failed:
            return
        held = {(tp.topic, tp.partition) for tp in self.consumer.assignment()} - self.lost
        again = [
            tp
            for tp in (failed or partitions)
            if (tp.topic, tp.partition) in held and tp.offset >= 0
        ]
        for tp in again:
            key = (tp.topic, tp.partition)
            self.written[key] = max(self.written.get(key, 0), tp.offset)
        log.warning(
            "commit failed (%s); %s",
            err or failed[0].error,
            f"committing again the {len(again)} partitions still ours"
            if again
            else "the next owner redoes it",
        )

    # -- metrics --------------------------------------------------------------------------------

    def _count(self, batch: Batch, applied: Applied, seconds: float) -> None:
        # One StatsD packet per (topic, outcome) per batch, not one per message.
        short = Topics.short
        counts: Counter[tuple[str, str]] = Counter()
        for r in applied.resolved:
            if r.outcome is Outcome.CONFLICT:
                continue
            outcome = "written" if r.writes else "duplicate"
            counts[(short(r.position.topic), outcome)] += 1
        for p in batch.dead_done:
            counts[(short(p.topic), "deadlettered")] += 1
        consumed: Counter[str] = Counter()
        for (topic, outcome), n in counts.items():
            self.metrics.incr(f"{self.m}.{topic}.{outcome}", n)
            consumed[topic] += n
        for topic, n in consumed.items():
            self.metrics.incr(f"{self.m}.{topic}.consumed", n)
        revenue: Counter[str] = Counter()
        for r in applied.resolved:
            if r.writes and isinstance(r.event, Order):
                revenue[r.event.currency] += r.event.total_cents
        for currency, cents in revenue.items():
            self.metrics.incr(f"{self.m}.revenue.{currency}", cents)
        self.metrics.gauge(f"{self.m}.batch_size", len(batch.events))
        if not batch.events:
            return
        self.metrics.timing(f"{self.m}.write_latency", seconds * 1000)
        now = datetime.now(UTC)
        latencies = [(now - e.event_time).total_seconds() * 1000 for _, e in batch.events]
        if self.cfg.latency_log:
            with self.cfg.latency_log.open("a") as f:
                f.write(" ".join(f"{ms:.2f}" for ms in latencies) + "\n")
        # A handful of samples per batch: enough for the summary's quantiles without a UDP
        # packet per event.
        for ms in latencies[:: max(1, len(latencies) // 10)]:
            self.metrics.timing(f"{self.m}.e2e_latency", ms)

    def _report_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_lag < self.cfg.lag_interval:
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


def _too_large(err: object) -> bool:
    return isinstance(err, KafkaError) and err.code() in (
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
    )
