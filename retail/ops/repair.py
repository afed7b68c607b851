"""Cassandra's anti-entropy repair, full (not incremental), in subranges, through JMX.

Each step is one ``StorageService.repairAsync(keyspace, options)`` call on one node over its
Jolokia agent (JMX over HTTP: no nodetool JVM to start per call), polled with
``getParentRepairStatus(cmd)`` until it reports ``COMPLETED`` or ``FAILED``. The options are
Cassandra 5.0's ``RepairOption`` keys: ``incremental=false`` (a full repair: every replica's
data is compared, not only what was written since the last incremental repair), ``ranges`` (an
explicit ``start:end`` token range, as ``nodetool repair -st/-et`` sends it),
``columnFamilies``, ``dataCenters``, ``parallelism=parallel`` (nodetool's default; Cassandra's
own default for the MBean is sequential, which snapshots every replica first).

Two scopes, as an operator knows them from nodetool:

* ``primary_range`` (``nodetool repair -full -pr`` on every node in turn): each node repairs the
  ranges it is the first replica of, against every replica in every DC. Together the nodes
  cover the ring once; this is the repair that keeps deletes from coming back after
  ``gc_grace_seconds``.
* ``datacenter`` (``nodetool repair -full -dc DC``, ``-pr`` within the DC): each node of the DC
  repairs the ranges it is the DC's first replica of, against the replicas in that DC only.
  Cheaper (no cross-DC streaming) but it does not sync the DCs with each other.

Every node's ranges are split into ``subranges`` pieces, one repair session each, so the task
log shows progress and a failure costs one piece, not the whole node.

The ranges come from the live cluster (``getRangeToEndpointWithPortMap``), whose replica lists
are in Cassandra's own order: the first replica of a range is its primary owner, exactly as
``StorageService.getPrimaryRangesForEndpoint`` decides.

Every call goes through :class:`retail.jolokia.Jolokia`, the platform's one Jolokia client.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cassandra.cluster import Session

from retail.errors import RetailError
from retail.jolokia import STORAGE_SERVICE, Jolokia, JolokiaError, endpoint_address
from retail.metrics import Metrics
from retail.rows import as_utc
from retail.topology import CassandraNode, Topology

log = logging.getLogger(__name__)

MIN_TOKEN = -(2**63)
RING_SIZE = 2**64
STORAGE_PROXY = "org.apache.cassandra.db:type=StorageProxy"
SCOPES = ("primary_range", "datacenter")
MAX_SUBRANGES = 64
HISTORY_TABLE = "retail_ops.repair_history"


class RepairError(RetailError):
    """A repair could not run or failed; the message names the node, range and what to do.
    A retry may succeed (a node back up, a lease released). A Jolokia call that fails or times
    out raises :class:`retail.jolokia.JolokiaError` (the one client's error), which a retry may
    fix as well."""


class RepairRefused(RepairError):
    """A repair that no retry can make possible (a request or topology that does not fit the
    live ring); fix the request or the topology first."""


# -- token ranges ---------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class TokenRange:
    """The Murmur3 token range ``(start, end]``; ``end`` below ``start`` wraps past the end of
    the ring, and ``end == MIN_TOKEN`` means "to the end of the ring"."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return (self.end - self.start) % RING_SIZE or RING_SIZE

    def option(self) -> str:
        """The form of RepairOption's ``ranges`` key."""
        return f"{self.start}:{self.end}"

    def __str__(self) -> str:
        return f"({self.start}, {self.end}]"


def parse_range_map(raw: Mapping[str, Sequence[str]]) -> dict[TokenRange, list[str]]:
    """``getRangeToEndpointWithPortMap`` as Jolokia renders it (``"[a, b]"`` -> endpoints) into
    ranges -> replica addresses, in Cassandra's replica order."""
    out: dict[TokenRange, list[str]] = {}
    for key, endpoints in raw.items():
        start, end = (int(t) for t in key.strip("[]()").split(","))
        out[TokenRange(start, end)] = [endpoint_address(e) for e in endpoints]
    return out


def primary_ranges(
    range_map: Mapping[TokenRange, Sequence[str]],
    address: str,
    dc_addresses: Iterable[str] | None = None,
) -> list[TokenRange]:
    """The ranges whose first replica is ``address``; with ``dc_addresses``, the first replica
    among that DC's nodes (``-pr`` within one DC)."""
    members = None if dc_addresses is None else set(dc_addresses)
    found = []
    for rng, replicas in range_map.items():
        candidates = [r for r in replicas if members is None or r in members]
        if candidates and candidates[0] == address:
            found.append(rng)
    return sorted(found)


def _token(offset_from_min: int) -> int:
    return offset_from_min % RING_SIZE + MIN_TOKEN


def split(rng: TokenRange, pieces: int) -> list[TokenRange]:
    """``rng`` in ``pieces`` contiguous subranges of (nearly) equal size.

    A piece that would wrap past the end of the ring is cut there, so no subrange wraps (the
    result may then hold one piece more): Cassandra accepts wrapping ranges, but a subrange log
    line is easier to read without.
    """
    if pieces < 1:
        raise ValueError(f"subranges must be at least 1, got {pieces}")
    pieces = min(pieces, rng.size)
    base = rng.start - MIN_TOKEN
    bounds = [_token(base + rng.size * i // pieces) for i in range(pieces + 1)]
    out = []
    for start, end in itertools.pairwise(bounds):
        if end < start and end != MIN_TOKEN:  # crosses the end of the ring
            out.extend([TokenRange(start, MIN_TOKEN), TokenRange(MIN_TOKEN, end)])
        else:
            out.append(TokenRange(start, end))
    return out


# -- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairStep:
    """One repair session: one node, one subrange, of one keyspace."""

    keyspace: str
    node: str
    range: TokenRange
    index: int  # 1-based, within the node's steps
    of: int
    tables: tuple[str, ...] = ()  # empty: every table of the keyspace
    datacenters: tuple[str, ...] = ()  # empty: replicas in every DC

    def options(self) -> dict[str, str]:
        """RepairOption's map (every value a string, as the MBean expects)."""
        opts = {
            "incremental": "false",
            "parallelism": "parallel",
            # With explicit ranges Cassandra repairs exactly those; primaryRange only tells it
            # the scope (and is refused together with dataCenters other than the local one).
            "primaryRange": "false" if self.datacenters else "true",
            "ranges": self.range.option(),
        }
        if self.tables:
            opts["columnFamilies"] = ",".join(self.tables)
        if self.datacenters:
            opts["dataCenters"] = ",".join(self.datacenters)
        return opts

    def describe(self) -> str:
        where = f" in {','.join(self.datacenters)}" if self.datacenters else ""
        what = f"{self.keyspace}.{','.join(self.tables)}" if self.tables else self.keyspace
        return f"{self.node}: {what}{where} subrange {self.index}/{self.of} {self.range}"


def plan(
    keyspace: str,
    range_map: Mapping[TokenRange, Sequence[str]],
    topology: Topology,
    *,
    scope: str,
    dc: str = "all",
    subranges: int = 1,
    tables: Sequence[str] = (),
) -> list[RepairStep]:
    """Every repair session of one keyspace, node after node (see the module docstring)."""
    if scope not in SCOPES:
        raise RepairRefused(f"unknown repair scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if not 1 <= subranges <= MAX_SUBRANGES:
        raise RepairRefused(f"subranges must be 1 to {MAX_SUBRANGES}, got {subranges}")
    if scope == "primary_range" and dc != "all":
        raise RepairRefused(
            "a primary-range repair has to run on every node of every DC (dc=all); to repair "
            f"inside {dc} only, choose scope=datacenter"
        )
    steps: list[RepairStep] = []

    def add(node: CassandraNode, ranges: list[TokenRange], dcs: tuple[str, ...]) -> None:
        pieces = [p for r in ranges for p in split(r, subranges)]
        steps.extend(
            RepairStep(keyspace, node.name, piece, i, len(pieces), tuple(tables), dcs)
            for i, piece in enumerate(pieces, start=1)
        )

    if scope == "primary_range":
        comparable = _comparable(range_map)
        strangers = {r[0] for r in comparable.values()} - {n.address for n in topology.nodes}
        if strangers:
            # Their primary ranges would go unrepaired without a word.
            raise RepairRefused(
                f"the live ring has nodes the topology does not know: {sorted(strangers)}; "
                "update the retail_cassandra connection (`retail airflow-env`) and rerun"
            )
        for node in topology.nodes:
            add(node, primary_ranges(comparable, node.address), ())
    else:
        names = [d.name for d in topology.datacenters] if dc == "all" else [dc]
        for name in names:
            members = topology.datacenter(name).contact_points
            inside = _comparable(range_map, members)
            for node in topology.datacenter(name).nodes:
                add(node, primary_ranges(inside, node.address, members), (name,))
    return steps


def _comparable(
    range_map: Mapping[TokenRange, Sequence[str]], members: Iterable[str] | None = None
) -> dict[TokenRange, Sequence[str]]:
    """Only the ranges with two replicas or more in scope: a range with one replica has nothing
    to compare it with, and Cassandra aborts its repair ("Nothing to repair ... aborting"), as it
    does for a DC with replication factor 1."""
    scope = None if members is None else set(members)
    return {
        rng: replicas
        for rng, replicas in range_map.items()
        if len([r for r in replicas if scope is None or r in scope]) >= 2
    }


# -- running it over Jolokia ----------------------------------------------------------------------


def live_range_map(
    jolokia: Jolokia, topology: Topology, keyspace: str
) -> dict[TokenRange, list[str]]:
    """The keyspace's ranges and replicas as the first node that answers sees them."""
    errors = []
    for node in topology.nodes:
        try:
            raw = jolokia.exec(node, STORAGE_SERVICE, "getRangeToEndpointWithPortMap", keyspace)
        except JolokiaError as exc:
            errors.append(str(exc))
            continue
        return parse_range_map(raw or {})
    raise RepairError(f"no node answered for the ring of {keyspace}: {'; '.join(errors)}")


@dataclass
class StepResult:
    step: RepairStep
    seconds: float
    command: int  # the node's repair command number; 0 when Cassandra found nothing to repair
    messages: list[str] = field(default_factory=list)


def run_step(
    jolokia: Jolokia,
    node: CassandraNode,
    step: RepairStep,
    *,
    poll_seconds: float = 0.2,
    timeout: float = 3600.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_start: Callable[[RepairStep, int], None] = lambda *_: None,
) -> StepResult:
    """Start one repair session on ``node`` and wait for its outcome; ``on_start(step,
    command)`` as soon as the node has accepted it (to record what may outlive this process)."""
    start = clock()
    command = jolokia.exec(node, STORAGE_SERVICE, "repairAsync", step.keyspace, step.options())
    if not command:
        return StepResult(step, clock() - start, 0, ["nothing to repair"])
    on_start(step, command)
    while True:
        status = jolokia.exec(node, STORAGE_SERVICE, "getParentRepairStatus", command)
        if status:  # None until the coordinator registered the command
            state, messages = status[0], list(status[1:])
            if state == "COMPLETED":
                return StepResult(step, clock() - start, command, messages)
            if state == "FAILED":
                raise RepairError(
                    f"repair #{command} failed: {step.describe()}: {'; '.join(messages)}. "
                    "Check that every node is UN (`retail stack status`) and the node's "
                    "system.log, then trigger the DAG again (a repeated repair is harmless)"
                )
        if clock() - start > timeout:
            raise RepairError(
                f"repair #{command} still running after {timeout:.0f}s: {step.describe()}. It "
                f"goes on in the background; watch `nodetool repair_admin list` on {node.name}"
            )
        sleep(poll_seconds)


def run(
    jolokia: Jolokia,
    topology: Topology,
    steps: Sequence[RepairStep],
    on_step: Callable[[int, int, StepResult, float], None] = lambda *_: None,
    before_step: Callable[[], None] = lambda: None,
    **kwargs: Any,
) -> list[StepResult]:
    """Every step in order; ``before_step()`` before each one (it raises to stop, e.g. when the
    lease is lost), ``on_step(done, total, result, elapsed)`` after each one."""
    start = time.monotonic()
    results = []
    for done, step in enumerate(steps, start=1):
        before_step()
        result = run_step(jolokia, topology.node(step.node), step, **kwargs)
        results.append(result)
        on_step(done, len(steps), result, time.monotonic() - start)
    return results


def set_hinted_handoff(jolokia: Jolokia, node: CassandraNode, enabled: bool) -> None:
    """Switch hinted handoff on a node (for tests that need a replica to miss writes)."""
    jolokia.write(node, STORAGE_PROXY, "HintedHandoffEnabled", enabled)


# -- history and what the alert needs -------------------------------------------------------------


def scope_label(scope: str, dc: str) -> str:
    return "primary_range" if scope == "primary_range" else f"datacenter:{dc}"


def record_success(
    session: Session,
    keyspace: str,
    tables: Iterable[str],
    *,
    finished_at: datetime,
    scope: str,
    cluster_wide: bool,
    subranges: int,
    duration_ms: int,
    run_id: str,
) -> None:
    """Write the successful repair of ``tables`` into the history; only a repair that synced
    every replica in every DC moves ``last_cluster_wide_success``."""
    columns = "last_success = ?, scope = ?, subranges = ?, duration_ms = ?, run_id = ?"
    if cluster_wide:
        columns += ", last_cluster_wide_success = ?"
    stmt = session.prepare(
        f"UPDATE {HISTORY_TABLE} SET {columns} WHERE keyspace_name = ? AND table_name = ?"
    )
    for table in tables:
        values: list[Any] = [finished_at, scope, subranges, duration_ms, run_id]
        if cluster_wide:
            values.append(finished_at)
        session.execute(stmt, [*values, keyspace, table])


@dataclass(frozen=True)
class TableState:
    keyspace: str
    table: str
    gc_grace_seconds: int
    last_cluster_wide_success: datetime | None
    last_success: datetime | None
    scope: str | None

    @property
    def last_success_epoch(self) -> float:
        """What the gauge carries: 0 for a table never repaired cluster-wide (the alert then
        sees it as overdue, as it should)."""
        when = self.last_cluster_wide_success
        return 0.0 if when is None else as_utc(when).timestamp()

    def overdue(self, now: datetime, fraction: float = 0.8) -> bool:
        """Older than ``fraction`` of gc_grace_seconds (the TableRepairOverdue alert's rule)."""
        if self.gc_grace_seconds <= 0:
            return False
        return now.timestamp() - self.last_success_epoch > fraction * self.gc_grace_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "gc_grace_seconds": self.gc_grace_seconds,
            "last_cluster_wide_success": _iso(self.last_cluster_wide_success),
            "last_success": _iso(self.last_success),
            "scope": self.scope,
        }


def _iso(when: datetime | None) -> str | None:
    return None if when is None else as_utc(when).isoformat()


def table_states(session: Session, keyspaces: Sequence[str]) -> list[TableState]:
    """Every live table of ``keyspaces`` with its gc_grace_seconds and repair history."""
    states = []
    history = session.prepare(
        f"SELECT table_name, last_success, last_cluster_wide_success, scope FROM {HISTORY_TABLE} "
        "WHERE keyspace_name = ?"
    )
    tables = session.prepare(
        "SELECT table_name, gc_grace_seconds FROM system_schema.tables WHERE keyspace_name = ?"
    )
    for keyspace in keyspaces:
        seen = {row.table_name: row for row in session.execute(history, [keyspace])}
        for row in session.execute(tables, [keyspace]):
            h = seen.get(row.table_name)
            states.append(
                TableState(
                    keyspace,
                    row.table_name,
                    row.gc_grace_seconds,
                    h.last_cluster_wide_success if h else None,
                    h.last_success if h else None,
                    h.scope if h else None,
                )
            )
    return states


def keyspace_tables(session: Session, keyspace: str) -> list[str]:
    """The tables a keyspace-wide repair covers (as the live schema has them)."""
    rows = session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", [keyspace]
    )
    return [r.table_name for r in rows]


def publish(metrics: Metrics, states: Iterable[TableState]) -> None:
    """The gauges an alert needs to tell a table overdue: last cluster-wide success (unix
    seconds, 0 if never) and the table's gc_grace_seconds."""
    for s in states:
        metrics.gauge(f"repair.{s.keyspace}.{s.table}.last_success", s.last_success_epoch)
        metrics.gauge(f"repair.{s.keyspace}.{s.table}.gc_grace_seconds", s.gc_grace_seconds)
