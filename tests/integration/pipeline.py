"""A pipeline run for the integration tests: its own topics and consumer groups, clean tables,
real ``python -m streaming`` processes, and checks that recompute everything from the base rows."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cassandra import OperationTimedOut
from cassandra.cluster import NoHostAvailable, Session
from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from retail.cassandra import connect
from retail.credentials import CASSANDRA_OPS, KAFKA_ADMIN, KAFKA_OPS
from retail.events import Event, InventoryMovement, Order
from retail.generator import StreamGenerator
from retail.kafka import (
    AUDIT_GROUP,
    Topics,
    client_config,
    ensure_topics,
    group_lag,
    group_name,
    region_lag,
)
from retail.producer import EventProducer, Record, records_from_events
from retail.rows import TABLES, stock_level
from retail.settings import get_settings
from retail.topology import Topology
from stack.cassandra import node_home
from stack.process import ManagedProcess
from stack.services import consumer_process

log = logging.getLogger(__name__)
RETAIL = str(Path(sys.executable).with_name("retail"))


@dataclass
class PipelineRun:
    topology: Topology
    session: Session
    home: Path
    prefix: str = field(default_factory=lambda: f"it{uuid.uuid4().hex[:8]}")
    consumers: dict[str, ManagedProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topics = Topics.named(self.prefix, partitions=6)
        ensure_topics(self.topology, self.topics)
        self.regions = [dc.name for dc in self.topology.datacenters]

    # -- Kafka side ---------------------------------------------------------------------------

    def produce(self, events: Iterable[Event], rate: float | None = None) -> int:
        return EventProducer(self.topology).send(
            records_from_events(events, self.topics), rate=rate
        )

    def produce_records(self, records: Iterable[Record]) -> int:
        return EventProducer(self.topology).send(records)

    def group(self, region: str) -> str:
        return group_name(self.prefix, region)

    def start_consumer(self, region: str, *extra: str, name: str | None = None) -> ManagedProcess:
        """A ``python -m streaming`` process for ``region``; ``name`` tells apart several
        members of one group (default: the region)."""
        env = {
            "RETAIL_TOPIC_PREFIX": self.prefix,
            "RETAIL_TOPIC_PARTITIONS": str(self.topics.partitions),
        }
        name = name or region
        proc = consumer_process(region, self.home / "consumers" / name, *extra, env=env)
        proc.start()
        self.consumers[name] = proc
        return proc

    @staticmethod
    def wait_assigned(proc: ManagedProcess, timeout: float = 60) -> None:
        """Wait until the consumer has joined its group and holds partitions."""
        deadline = time.monotonic() + timeout
        while "partitions assigned" not in proc.tail(400):
            assert proc.alive(), proc.tail(60)
            assert time.monotonic() < deadline, "consumer never got partitions"
            time.sleep(0.3)

    def start_all(self) -> None:
        for region in self.regions:
            self.start_consumer(region)

    def lag(self, region: str, group: str | None = None) -> int:
        """Messages on the region's topics not yet committed by its group (or ``group``)."""
        if group is None:
            return region_lag(self.topology, self.topics, region)
        return group_lag(self.topology, self.topics.read_by(region), group, self.topics.partitions)

    def wait_consumed(self, regions: list[str] | None = None, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for region in regions or self.regions:
            while (lag := self.lag(region)) > 0:
                proc = self.consumers.get(region)
                assert proc is None or proc.alive(), (
                    f"consumer {region} died:\n{proc.tail(60) if proc else ''}"
                )
                assert time.monotonic() < deadline, f"{region}: {lag} messages not consumed"
                time.sleep(0.5)

    def stop_consumers(self) -> dict[str, int | None]:
        """SIGTERM every consumer, wait for it, and return the exit codes."""
        codes = {}
        for region, proc in self.consumers.items():
            proc.stop(timeout=90)
            codes[region] = proc.returncode
        self.consumers.clear()
        return codes

    def rewind(self, region: str) -> None:
        """Move the region's group back to offset 0 on every topic it reads, as an operator
        replays: the admin alters the offsets of the group (stopped: no member may be in it)."""
        admin = AdminClient(client_config(self.topology, KAFKA_ADMIN))
        parts = [
            TopicPartition(t, p, 0)
            for t in self.topics.read_by(region)
            for p in range(self.topics.partitions)
        ]
        request = ConsumerGroupTopicPartitions(self.group(region), parts)
        for future in admin.alter_consumer_group_offsets([request]).values():
            future.result(timeout=30)

    def dead_letters(self, expected: int, timeout: float = 30) -> list:
        """The dead letters, read as the audit reads them (the ops login, assign() only)."""
        c = Consumer(
            {
                **client_config(self.topology, KAFKA_OPS),
                "group.id": AUDIT_GROUP,
                "enable.auto.commit": False,
            }
        )
        c.assign(
            [
                TopicPartition(self.topics.deadletter, p, OFFSET_BEGINNING)
                for p in range(self.topics.partitions)
            ]
        )
        got: list = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                got += [m for m in c.consume(500, 1.0) if m.error() is None]
                if len(got) >= expected:
                    # keep reading briefly: more than expected would be a duplicate
                    got += [m for m in c.consume(500, 2.0) if m.error() is None]
                    break
        finally:
            c.close()
        return got

    # -- Cassandra side -----------------------------------------------------------------------

    def truncate(self, hints_timeout: float = 300) -> None:
        """Empty every table, once the cluster has delivered every hint of the tests before.

        A hint written before a TRUNCATE is dropped on delivery, but it still takes its turn: a
        node delivers each peer's hints in order, throttled (hinted_handoff_throttle), so a
        backlog left by a heavy test would hold back this test's own hints, and with them its
        DCs' convergence. So each test starts from a cluster that has none pending.
        """
        started = time.monotonic()
        while pending := self.pending_hints():
            waited = time.monotonic() - started
            assert waited < hints_timeout, f"hints still pending after {waited:.0f} s: {pending}"
            time.sleep(1)
        if (waited := time.monotonic() - started) > 1:
            log.warning("waited %.0f s for the hints of earlier tests to be delivered", waited)
        for attempt in range(3):
            for table in TABLES:
                self.session.execute(f"TRUNCATE retail.{table}", timeout=60)
            # A node that cannot stop a table's compactions in time skips the TRUNCATE and still
            # answers success (ColumnFamilyStore.runWithCompactionsDisabled: "Unable to cancel
            # in-progress compactions"), leaving the rows of the tests before in its DC alone.
            if not (left := self.rows_left()):
                return
            log.warning("TRUNCATE left rows (attempt %d): %s", attempt + 1, left)
            time.sleep(5)
        raise AssertionError(f"tables not empty after three TRUNCATEs: {left}")

    def rows_left(self) -> list[str]:
        """``dc/table`` of every table that still holds a row as one DC's replicas see it."""
        left = []
        for dc in self.regions:
            with self.pinned(dc) as session:
                left += [
                    f"{dc}/{t}"
                    for t in TABLES
                    if session.execute(f"SELECT * FROM retail.{t} LIMIT 1").one() is not None
                ]
        return left

    @contextlib.contextmanager
    def pinned(self, dc: str) -> Iterator[Session]:
        """A session that reads one DC's replicas only (pinned there, LOCAL_ONE)."""
        cluster, session = connect(
            self.topology, dc, consistency_level="LOCAL_ONE", pin_to_dc=True, role=CASSANDRA_OPS
        )
        try:
            yield session
        finally:
            cluster.shutdown()

    def pending_hints(self) -> dict[str, int]:
        """Bytes of undelivered hints each node holds (its hints directory; a file goes once
        every hint in it is delivered)."""
        stack_dir = get_settings().stack_dir
        held = {
            node.name: sum(
                f.stat().st_size for f in (node_home(stack_dir, node) / "hints").glob("*.hints")
            )
            for node in self.topology.nodes
        }
        return {name: size for name, size in held.items() if size}

    def wait_session_up(self, timeout: float = 60.0) -> None:
        """Wait until this run's session reaches its DC again after a test restarted the DC's
        nodes (the driver reconnects on its own schedule: at most 10 s apart)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.session.execute("SELECT key FROM system.local")
                return
            except NoHostAvailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def snapshot(self) -> dict[str, set[str]]:
        """Every row of every table (as text: the order lines are lists, not hashable)."""
        return {
            t: {repr(tuple(r)) for r in self.session.execute(f"SELECT * FROM retail.{t}")}
            for t in TABLES
        }

    def order_ids_in(self, dc: str) -> list[str]:
        """Every order id as the replicas of one DC have it (pinned there, LOCAL_ONE)."""
        with self.pinned(dc) as session:
            return [r.order_id for r in session.execute("SELECT order_id FROM retail.orders")]

    def assert_exact(
        self, orders: list[Order], movements: list[InventoryMovement], timeout: float = 120
    ) -> None:
        """Every event written once, readable in every DC, every rollup equal to the sums
        recomputed from the base rows.

        A consumer's write is acknowledged by its own DC (LOCAL_QUORUM); the other DCs get it
        asynchronously, under load through hints (delivered every 10 s). So the check is
        repeated until the DCs have converged, and fails if they have not within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._check_exact(orders, movements)
                return
            except (AssertionError, NoHostAvailable, OperationTimedOut) as exc:
                # Not converged yet, or this test's session still reconnecting to a node that
                # a test restarted (the driver retries with backoff).
                if time.monotonic() > deadline:
                    raise AssertionError(f"{exc}\n{self._replication_state()}") from exc
                time.sleep(2)

    def _replication_state(self) -> str:
        """What explains DCs that do not converge: each node's view of the schema versions and
        the hints it still holds (hints go only to a live node with the same schema)."""
        out = []
        for node in self.topology.nodes:
            for command in ("describecluster", "listpendinghints", "tpstats"):
                done = subprocess.run(
                    [RETAIL, "stack", "nodetool", node.name, command],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                text = done.stdout + done.stderr
                if command == "tpstats":  # only the dropped messages, its last table
                    text = text[text.find("Message type") :]
                out.append(f"--- {node.name}: nodetool {command}\n{text.strip()}")
        return "\n".join(out)

    def _check_exact(self, orders: list[Order], movements: list[InventoryMovement]) -> None:
        want = sorted(o.order_id for o in orders)
        for dc in self.regions:
            got = sorted(self.order_ids_in(dc))
            assert got == want, f"orders differ in {dc}: {_difference(got, want)}"
        s = self.session
        assert _count(s, "orders_by_store_day") == len(orders)
        assert _count(s, "inventory_movements") == len(movements)
        assert _count(s, "inventory_by_store_day") == len(movements)
        assert self.rollups() == rollups_of(
            s.execute(
                "SELECT store_id, day, event_time, region, total_cents, lines "
                "FROM retail.orders_by_store_day"
            ),
            s.execute(
                "SELECT store_id, sku, event_time, event_id, kind, quantity "
                "FROM retail.inventory_by_store_day"
            ),
        )

    def rollups(self) -> dict[str, dict[tuple, tuple]]:
        return stored_rollups(self.session)


def _difference(got: list[str], want: list[str]) -> str:
    """What a failed comparison of order ids shows: missing, extra and repeated ids."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    repeated = len(got) - len(set(got))
    return (
        f"{len(got)} rows for {len(want)} orders; {len(missing)} missing {missing[:5]}, "
        f"{len(extra)} extra {extra[:5]}, {repeated} repeated"
    )


def stream(n: int, seed: int) -> tuple[list[Event], list[Order], list[InventoryMovement]]:
    """``n`` events of a seeded stream whose times end about now (realistic for every check and
    the end-to-end metric): all of them, the orders, the movements."""
    gen = StreamGenerator(
        seed=seed,
        start=datetime.now(UTC) - timedelta(minutes=10),
        events_per_second=max(n / 300, 1),
    )
    events = list(gen.events(n))
    return (
        events,
        [e for e in events if isinstance(e, Order)],
        [e for e in events if isinstance(e, InventoryMovement)],
    )


def stored_rollups(s: Session) -> dict[str, dict[tuple, tuple]]:
    """Every rollup row as stored (rows that hold zero left out: a bucket whose only order
    moved to another hour by a resend keeps a row of zeros)."""
    return {
        "sales_by_store_hour": {
            (r.store_id, r.day.date(), r.hour): (r.order_count, r.revenue_cents)
            for r in s.execute("SELECT * FROM retail.sales_by_store_hour")
            if r.order_count
        },
        "sales_by_region_day": {
            (r.region, r.day.date(), r.store_id): (r.order_count, r.revenue_cents)
            for r in s.execute("SELECT * FROM retail.sales_by_region_day")
            if r.order_count
        },
        "product_sales_by_store_day": {
            (r.store_id, r.day.date(), r.sku): (r.units, r.revenue_cents)
            for r in s.execute("SELECT * FROM retail.product_sales_by_store_day")
            if r.units
        },
        "stock_by_store": {
            (r.store_id, r.sku): (r.quantity,)
            for r in s.execute("SELECT store_id, sku, quantity FROM retail.stock_by_store")
        },
    }


def rollups_of(order_rows: Iterable, movement_rows: Iterable) -> dict[str, dict[tuple, tuple]]:
    """The rollups recomputed here from base rows (orders_by_store_day, inventory_by_store_day),
    independently of the code under test."""
    hours: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    days: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    products: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for r in order_rows:
        day = r.day.date()
        for bucket in (
            hours[(r.store_id, day, r.event_time.hour)],
            days[(r.region, day, r.store_id)],
        ):
            bucket[0] += 1
            bucket[1] += r.total_cents
        for li in r.lines:
            p = products[(r.store_id, day, li.sku)]
            p[0] += li.quantity
            p[1] += li.quantity * li.unit_price_cents
    moves: dict[tuple, list] = defaultdict(list)
    for r in movement_rows:
        moves[(r.store_id, r.sku)].append((r.event_time, r.event_id, r.kind, r.quantity))
    return {
        "sales_by_store_hour": {k: tuple(v) for k, v in hours.items()},
        "sales_by_region_day": {k: tuple(v) for k, v in days.items()},
        "product_sales_by_store_day": {k: tuple(v) for k, v in products.items()},
        "stock_by_store": {k: (stock_level(v)[0],) for k, v in moves.items()},
    }


def _count(session: Session, table: str) -> int:
    return session.execute(f"SELECT count(*) FROM retail.{table}", timeout=60).one().count
