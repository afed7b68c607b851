"""Chaos: a seeded schedule of faults against a live stream, and the check afterwards that
nothing was lost or counted twice.

The schedule (:func:`plan`) is pure: from a seed, the run's length, the fault kinds wanted and
what the stack has to hit (consumers, nodes, DCs, brokers), it decides which fault starts when
and against what. The heavy faults (a node killed, a DC stopped, a broker killed, a node frozen,
the Airflow scheduler killed) follow one another, each in its own slot of the run; consumer
kills fall anywhere. :mod:`stack.chaos` carries it out on the local stack.

The check (:func:`reconcile`) reads what the pipeline left, in every DC, and compares it with
what Kafka acknowledged to the chaos producer, sharing nothing with the consumers' write path:

* every valid event: its row by id (``orders``, ``inventory_movements``), its row by store and
  day (``orders_by_store_day``, ``inventory_by_store_day``) and, for an order, its row in the
  materialized view ``orders_by_customer``, each read in every DC at ``LOCAL_QUORUM``; an event
  missing from any of them in any DC is **lost**, an id that holds two rows of its store-day
  partition is **duplicated**;
* every rollup bucket of the run's hours, recounted from the base rows of each DC
  (:func:`retail.ops.rollups.repair_rollups` without writing): a bucket that differs is
  **wrong** (an event counted twice or not at all);
* every invalid message: in the dead-letter topic, by its ``origin.*`` headers.

Other DCs receive a write asynchronously (hints after a DC was down), so the check repeats
until the DCs agree or its time is up; the last reading is the result.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, timedelta
from typing import Any

from cassandra import ConsistencyLevel, RequestExecutionException
from cassandra.cluster import NoHostAvailable, OperationTimedOut, Session

from retail.aggregates import KEY_OF, HourKey, ProductKey, StockKey, bucket_from_row
from retail.cassandra import connect, run_all
from retail.credentials import CASSANDRA_OPS, KAFKA_OPS
from retail.errors import RetailError
from retail.events import Event, Order
from retail.fuzz import Sent
from retail.kafka import Topics, client_config
from retail.ops.audit import RegionReads, day_row_key, read_dead_letters
from retail.ops.rollups import REPAIR_QUERIES, Window, repair_rollups
from retail.rows import BASE, BY_DAY, KEYSPACE, id_column, identity, rollup_read
from retail.topology import Topology

log = logging.getLogger(__name__)

# -- the schedule --------------------------------------------------------------------------------

CONSUMER_KILL = "consumer_kill"
NODE_KILL = "node_kill"
DC_STOP = "dc_stop"
BROKER_KILL = "broker_kill"
NODE_FREEZE = "node_freeze"
SCHEDULER_KILL = "scheduler_kill"
KINDS = (CONSUMER_KILL, NODE_KILL, DC_STOP, BROKER_KILL, NODE_FREEZE, SCHEDULER_KILL)

# Seconds a fault holds before its repair (restart, thaw): a killed node or broker stays down
# long enough for its peers and clients to notice; a DC is stopped for a minute; a frozen node
# stays frozen at least this long and until another node's failure detector marks it down.
HOLD = {NODE_KILL: 20.0, DC_STOP: 60.0, BROKER_KILL: 20.0, NODE_FREEZE: 30.0}


@dataclass(frozen=True)
class Targets:
    """What a schedule can hit: the supervised consumers, the Cassandra nodes, the DCs and the
    Kafka brokers of the running stack."""

    consumers: tuple[str, ...]
    nodes: tuple[str, ...]
    dcs: tuple[str, ...]
    brokers: tuple[str, ...]

    def of(self, kind: str) -> tuple[str, ...]:
        return {
            CONSUMER_KILL: self.consumers,
            NODE_KILL: self.nodes,
            NODE_FREEZE: self.nodes,
            DC_STOP: self.dcs,
            BROKER_KILL: self.brokers,
            SCHEDULER_KILL: ("airflow-scheduler",),
        }[kind]


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the run's start
    kind: str
    target: str
    hold: float  # seconds before the repair (0: none, a supervisor or Airflow repairs it)


def plan(
    seed: int, duration: float, kinds: Sequence[str], targets: Targets, consumer_kills: int
) -> list[Fault]:
    """The run's faults in time order. Each heavy kind in ``kinds`` once, in a seeded order,
    each starting in its own slot of ``duration`` (so one has ended, usually, before the next
    starts); ``consumer_kills`` kills of a seeded consumer at seeded times (if ``kinds`` has
    them)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    rng = random.Random(seed)
    heavy = [k for k in KINDS if k in kinds and k != CONSUMER_KILL]
    rng.shuffle(heavy)
    for kind in (*heavy, *([CONSUMER_KILL] if CONSUMER_KILL in kinds else [])):
        if not targets.of(kind):
            raise ValueError(f"{kind}: the stack has nothing to hit (no {kind.split('_')[0]})")
    slot = duration / (len(heavy) + 1)
    faults = [
        Fault(
            round(slot * (i + 0.5) + rng.uniform(0, 0.25 * slot), 1),
            kind,
            rng.choice(targets.of(kind)),
            HOLD.get(kind, 0.0),
        )
        for i, kind in enumerate(heavy)
    ]
    if CONSUMER_KILL in kinds:
        faults += [
            Fault(
                round(rng.uniform(0.02, 0.95) * duration, 1),
                CONSUMER_KILL,
                rng.choice(targets.consumers),
                0.0,
            )
            for _ in range(consumer_kills)
        ]
    return sorted(faults, key=lambda f: (f.at, f.kind))


@dataclass
class Done:
    """A fault as carried out: when it started and ended (seconds after the run's start), and
    how long the part took to be healthy again after its repair."""

    fault: Fault
    started: float
    repaired: float
    recovery_s: float
    detail: str = ""

    def line(self) -> str:
        f = self.fault
        return (
            f"{self.started:6.1f}s  {f.kind:<14} {f.target:<22} repaired at {self.repaired:6.1f}s,"
            f" healthy {self.recovery_s:5.1f}s later{'  ' + self.detail if self.detail else ''}"
        )


# -- the check -----------------------------------------------------------------------------------


@dataclass
class Findings:
    """One reading of the pipeline's state against what was produced."""

    produced: int  # valid events Kafka acknowledged
    written: int  # of those, found in every table of every DC
    lost: int  # missing in some table of some DC
    duplicated: int
    rollup_buckets_wrong: int
    invalid: int  # invalid messages Kafka acknowledged
    dead_letters_missing: int
    unacknowledged: int = 0  # messages Kafka never acknowledged (not produced: the producer's
    # own error, reported, never counted lost)
    # Of the lost, those missing in their own region's DC, where the consumer wrote them at
    # LOCAL_QUORUM: never a replication delay, always a loss.
    lost_in_home_dc: int = 0
    # What the DCs still lacked once hints had had their time, which only the repair brought.
    lost_before_repair: int | None = None
    rollup_buckets_wrong_before_repair: int | None = None
    lost_in_home_dc_before_repair: int | None = None
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.lost_in_home_dc
            or self.lost_in_home_dc_before_repair
            or self.duplicated
            or self.rollup_buckets_wrong
            or self.dead_letters_missing
        )


EXAMPLES = 10
# The order's row in the materialized view over ``orders``.
VIEW_READ = (
    f"SELECT order_id FROM {KEYSPACE}.orders_by_customer WHERE customer_id = ? AND order_id = ?"
)
ID_READ = {t: f"SELECT event_id FROM {KEYSPACE}.{t} WHERE {id_column(t)} = ?" for t in BY_DAY}


def _read_dc(session: Session, events: Sequence[Event]) -> tuple[dict[str, set[str]], set[str]]:
    """In one DC: per table, the ids of ``events`` it lacks (or holds another version of), and
    the ids that hold more than one row of their store-day partition."""

    def prepared(cql: str) -> Any:
        q = session.prepare(cql)
        q.consistency_level = ConsistencyLevel.LOCAL_QUORUM
        return q

    by_id = {t: prepared(q) for t, q in ID_READ.items()}
    view = prepared(VIEW_READ)
    missing: dict[str, set[str]] = defaultdict(set)

    # By id, and the view.
    ids = [identity(e) for e in events]
    rows = run_all(session, [(by_id[t], (key,)) for t, key in ids])
    for e, (t, key), got in zip(events, ids, rows, strict=True):
        if not got or got[0].event_id != e.event_id:
            missing[t].add(key)
    orders = [e for e in events if isinstance(e, Order)]
    rows = run_all(session, [(view, (o.customer_id, o.order_id)) for o in orders])
    missing["orders_by_customer"] |= {
        o.order_id for o, got in zip(orders, rows, strict=True) if not got
    }

    # By store and day: each partition once, between its events' earliest and latest time.
    reads = RegionReads(session)
    groups = reads.partitions(events)
    held = reads.day_rows(events, groups, sorted(groups, key=str), ConsistencyLevel.LOCAL_QUORUM)
    duplicated: set[str] = set()
    for key, day_rows in held.items():
        copies, stored = Counter(ident for _, ident in day_rows), set(day_rows)
        for i in groups[key]:
            e = events[i]
            ident = identity(e)[1]
            if copies[ident] > 1:
                duplicated.add(ident)
            if day_row_key(e) not in stored:
                missing[BY_DAY[key[0]]].add(ident)
    return missing, duplicated


def _bucket_story(session: Session, table: str, key: tuple[Any, ...], days: Sequence[date]) -> str:
    """What a wrong bucket holds (values, watermark, fence) and the base rows it is counted
    from, in Kafka order, each with its time, its contribution and the position it came from:
    what it takes to tell a lost write from a skipped or a tied one without the stack at hand.
    For stock the SKU's movements of the run's days, for sales the orders of the store-day."""
    bucket_key = KEY_OF[table](*key)
    read = session.prepare(rollup_read(table))
    found = session.execute(read, (*key[:-1], [key[-1]])).one()
    if found is None:
        held = "no row"
    else:
        b = bucket_from_row(table, found)
        held = f"{b.values()}, watermark {b.watermark}, fence {b.fence}"
    if isinstance(bucket_key, StockKey):
        base, by_id = "store_day_movements", "inventory_movements"
        reads = [(bucket_key.store_id, d) for d in days]
    else:
        base, by_id = "store_day_orders", "orders"
        reads = [(bucket_key.store_id, bucket_key.day)]
    # The base rows as the repair reads them, and the ids' positions: one IN read per 100 ids.
    base_read = session.prepare(REPAIR_QUERIES[base])
    rows = [r for got in run_all(session, [(base_read, k) for k in reads]) for r in got]
    if isinstance(bucket_key, StockKey):
        rows = [r for r in rows if r.sku == bucket_key.sku]
    elif isinstance(bucket_key, HourKey):
        rows = [r for r in rows if r.event_time.hour == bucket_key.hour]
    elif isinstance(bucket_key, ProductKey):
        rows = [r for r in rows if any(li.sku == bucket_key.sku for li in r.lines or ())]
    id_col = id_column(by_id)
    ids = sorted({getattr(r, id_col) for r in rows})
    source_read = session.prepare(BASE[by_id].read((id_col, "source"), many=True))
    chunks = [(source_read, (ids[i : i + _IN_CHUNK],)) for i in range(0, len(ids), _IN_CHUNK)]
    sources = {getattr(r, id_col): r.source for got in run_all(session, chunks) for r in got}
    told = []
    for r in rows:
        src = sources.get(getattr(r, id_col), "no id row")
        line = f"{r.event_time:%H:%M:%S.%f}"[:-3] + f" {_contribution(r)} {src}"
        told.append((_offset(src), line))
    what = "movements" if isinstance(bucket_key, StockKey) else "orders"
    return f"  it holds {held}; {what} in Kafka order: " + (
        "; ".join(t for _, t in sorted(told)) or "none"
    )


_IN_CHUNK = 100  # ids per IN read of their positions


def _contribution(row: Any) -> str:
    if hasattr(row, "kind"):
        return f"{row.kind} {row.quantity}"
    return f"{row.order_id} {row.total_cents}"


def _offset(source: str) -> int:
    """The offset of a ``topic[partition]@offset`` source (-1 when there is none)."""
    _, at, offset = source.rpartition("@")
    return int(offset) if at and offset.isdigit() else -1


def run_window(events: Sequence[Event]) -> Window:
    """The whole UTC hours the events' times fall in."""
    first = min(e.event_time for e in events).astimezone(UTC)
    last = max(e.event_time for e in events).astimezone(UTC)
    start = first.replace(minute=0, second=0, microsecond=0)
    return Window(start, last.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))


def read_once(topology: Topology, topics: Topics, sent: Sent) -> Findings:
    """Read every DC and the dead-letter topic once; see the module's docstring."""
    events = [e for _, e in sent.valid]
    lost: set[str] = set()
    home_region = {identity(e)[1]: e.region for e in events}
    lost_at_home: set[str] = set()
    duplicated: set[str] = set()
    wrong = 0
    examples: list[str] = []
    regions = [dc.name for dc in topology.datacenters]
    for dc in regions:
        cluster, session = connect(topology, dc, role=CASSANDRA_OPS, pin_to_dc=True)
        try:
            missing, twice = _read_dc(session, events)
            if events:
                report = repair_rollups(
                    session, regions, run_window(events), correct=False, progress=log.debug
                )
                wrong += len(report.fixes)
                for c in report.fixes[:3]:
                    line = f"{dc}: {c.table} {c.to_dict()['key']} stored {c.stored}, expected "
                    examples.append(line + str(c.expected))
                    try:
                        story = _bucket_story(session, c.table, c.key, report.window.days)
                    except (RequestExecutionException, NoHostAvailable, OperationTimedOut) as exc:
                        story = f"  (its base rows could not be read: {exc})"
                    examples.append(story)
        finally:
            cluster.shutdown()
        for table, keys in sorted(missing.items()):
            lost |= keys
            lost_at_home |= {k for k in keys if home_region.get(k) == dc}
            examples += [f"{dc}: {table} lacks {k}" for k in sorted(keys)[:3]]
        duplicated |= twice
        examples += [f"{dc}: {k} holds two rows of its store-day" for k in sorted(twice)[:3]]
    dead = read_dead_letters(
        client_config(topology, KAFKA_OPS), topics.deadletter, sent.started_ms - 60_000
    )
    not_dead = [o for o in sent.hostile if o not in dead]
    examples += [f"not dead-lettered: {sent.hostile[o]} at {o[0]}[{o[1]}]@{o[2]}" for o in not_dead]
    return Findings(
        produced=len(events),
        written=len(events) - len(lost),
        lost=len(lost),
        lost_in_home_dc=len(lost_at_home),
        duplicated=len(duplicated),
        rollup_buckets_wrong=wrong,
        invalid=len(sent.hostile),
        dead_letters_missing=len(not_dead),
        unacknowledged=sent.unacknowledged,
        examples=examples[:EXAMPLES],
    )


AFTER_REPAIR = 60.0  # seconds of reading again after the repair


def reconcile(
    topology: Topology,
    topics: Topics,
    sent: Sent,
    *,
    timeout: float,
    hints_wait: float = 180.0,
    repair: Callable[[], None] | None = None,
    progress: Callable[[str], None] = log.info,
) -> Findings:
    """Read until the DCs agree with what was produced; the last reading. Call it once the
    consumers have committed everything.

    The other DCs get a write through hints, which are best effort: a coordinator that crashes
    loses the hints it had not flushed yet (every 10 s), and its DC's writes then reach the
    other DCs only through anti-entropy repair, Cassandra's guarantee and the platform's
    ``replication_repair`` DAG. So: read for ``hints_wait`` seconds; if the DCs still differ,
    ``repair()`` and read again for a minute. The result keeps what the repair had to
    bring (``*_before_repair``)."""
    found = _converged(topology, topics, sent, hints_wait, progress)
    if found.ok or repair is None:
        return found
    progress(
        f"hints did not bring every DC up to date within {hints_wait:.0f}s (lost {found.lost}, "
        f"rollup buckets wrong {found.rollup_buckets_wrong}): repairing, as the "
        "replication_repair DAG would"
    )
    repair()
    # Drained, hinted and repaired: nothing can change any more, so what stays wrong a minute
    # after the repair stays wrong (not a quarter of an hour of reading the same answer).
    after = _converged(topology, topics, sent, min(timeout, AFTER_REPAIR), progress)
    after.lost_before_repair = found.lost
    after.lost_in_home_dc_before_repair = found.lost_in_home_dc
    after.rollup_buckets_wrong_before_repair = found.rollup_buckets_wrong
    after.examples = [*after.examples, *(f"before the repair: {e}" for e in found.examples)]
    return after


def _converged(
    topology: Topology,
    topics: Topics,
    sent: Sent,
    timeout: float,
    progress: Callable[[str], None],
) -> Findings:
    """Read until everything is found, or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = read_once(topology, topics, sent)
        except (NoHostAvailable, OperationTimedOut, RequestExecutionException, RetailError) as exc:
            # A node still starting, Kafka still electing leaders.
            if time.monotonic() > deadline:
                raise
            progress(f"the check could not read everything yet ({type(exc).__name__}: {exc})")
            time.sleep(10)
            continue
        if found.ok or time.monotonic() > deadline:
            return found
        progress(
            f"not converged yet: lost {found.lost}, duplicated {found.duplicated}, rollup "
            f"buckets wrong {found.rollup_buckets_wrong}, dead letters missing "
            f"{found.dead_letters_missing}; reading again in 15s"
        )
        time.sleep(15)


@dataclass
class ChaosResult:
    """The run's one line of figures (and its JSON)."""

    seconds: float
    findings: Findings
    faults: list[Done]
    consumer_restarts: int
    faults_failed: list[str] = field(default_factory=list)  # a fault not carried out, and why

    @property
    def ok(self) -> bool:
        return self.findings.ok and not self.faults_failed and not self.runs_failed

    @property
    def runs_failed(self) -> int:
        """Airflow runs interrupted by a fault that did not end in success."""
        return sum(1 for d in self.faults if d.detail.endswith(" run failed"))

    @property
    def longest_recovery_s(self) -> float:
        return max((d.recovery_s for d in self.faults), default=0.0)

    def to_dict(self) -> dict[str, object]:
        f = asdict(self.findings)
        examples = f.pop("examples")
        return {
            **f,
            "faults_injected": len(self.faults),
            "faults_failed": self.faults_failed,
            "airflow_runs_failed": self.runs_failed,
            "faults_by_kind": dict(sorted(Counter(d.fault.kind for d in self.faults).items())),
            "longest_recovery_s": round(self.longest_recovery_s, 1),
            "consumer_restarts": self.consumer_restarts,
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
            "faults": [
                {
                    **asdict(d.fault),
                    "started": round(d.started, 1),
                    "repaired": round(d.repaired, 1),
                    "recovery_s": round(d.recovery_s, 1),
                    "detail": d.detail,
                }
                for d in self.faults
            ],
            "examples": examples,
        }

    def summary(self) -> str:
        f = self.findings
        return (
            f"events produced {f.produced}, written {f.written}, lost {f.lost}, duplicated "
            f"{f.duplicated}, rollup buckets wrong {f.rollup_buckets_wrong}; invalid "
            f"{f.invalid}, dead letters missing {f.dead_letters_missing}; faults injected "
            f"{len(self.faults)}, longest recovery {self.longest_recovery_s:.0f}s; "
            f"unacknowledged {f.unacknowledged}"
            + (
                ""
                if f.lost_before_repair is None
                else f"; before the repair: missing in a DC {f.lost_before_repair} (in their "
                f"own DC {f.lost_in_home_dc_before_repair}), rollup buckets wrong "
                f"{f.rollup_buckets_wrong_before_repair}"
            )
        )
