"""Ring maintenance after a node joins: ``nodetool cleanup`` on the nodes that gave up ranges,
with the ownership and load of every node before and after.

When a node bootstraps into a DC it takes over token ranges from the other nodes of that DC,
but they keep the data of those ranges on disk until a cleanup rewrites their SSTables without
it: their load stays high, and the copies they no longer own would come back as zombie data if
the ranges ever moved back to them (a later decommission of the new node). So, after a join,
every other node of the DC is cleaned up, one node at a time (a cleanup is a compaction of
every SSTable: one node at a time keeps the DC's spare I/O and serving capacity).

Before anything runs, a pre-flight check refuses while any node is not UN (a node joining,
leaving or moving still streams ranges, and Cassandra itself refuses a cleanup with pending
ranges; a node down would miss the check of its own state) or while a repair runs on any node
(a repair streams data into the ranges a cleanup rewrites, and both compete for the disks).

Everything is read and invoked through each node's Jolokia agent (:mod:`retail.jolokia`): the
ring as each node sees it (:func:`retail.jolokia.ring_view`), ownership within a DC
(:func:`retail.jolokia.dc_ownership`), the repair sessions of each node
(:func:`retail.ops.repair_lease.session_counts`) and the cleanup itself
(``StorageService.forceKeyspaceCleanup``, allowed by ``stack/jolokia.py`` ACCESS).

No Airflow here: ``plugins/retail_airflow/operators/ring.py`` calls :func:`read_views`,
:func:`blockers`, :func:`snapshot`, :func:`cleanup` and :func:`gauges`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from retail.credentials import Login
from retail.errors import RetailError
from retail.jolokia import STORAGE_SERVICE, Jolokia, JolokiaError, RingView, dc_ownership, ring_view
from retail.metrics import Metrics
from retail.ops.balance import _mib
from retail.ops.repair_lease import session_counts
from retail.topology import CassandraNode, Topology

log = logging.getLogger(__name__)

# StorageServiceMBean (Cassandra 5.0) has two overloads of forceKeyspaceCleanup; the one
# without ``jobs`` is deprecated. Jolokia needs the signature to pick one, and its access
# policy matches the operation exactly as sent, signature included.
CLEANUP_OPERATION = "forceKeyspaceCleanup(int,java.lang.String,[Ljava.lang.String;)"
# Compaction threads a cleanup may use on its node: nodetool cleanup's default (-j 2); 0 would
# take every compactor and starve the node's regular compactions.
CLEANUP_JOBS = 2
# CompactionManager.AllSSTableOpStatus, the operation's return value.
CLEANUP_STATUS = {0: "SUCCESSFUL", 1: "ABORTED", 2: "UNABLE_TO_CANCEL"}
# A cleanup returns only once every SSTable of the keyspace is rewritten: minutes to hours on a
# loaded node. The HTTP read waits this long for it (the task's execution_timeout bounds the
# whole run).
CLEANUP_HTTP_TIMEOUT = 6 * 3600.0
PHASES = ("before", "after")
WHAT_TO_DO_STATE = (
    "every node must be UN before a cleanup (a node joining or leaving still streams ranges; a "
    "node down cannot be checked): wait for the join or leave to finish, or start the node "
    "(`retail stack start NODE`), check with `retail stack status`, then trigger again"
)


class RingError(RetailError):
    """A ring maintenance step failed (a cleanup aborted, a node stopped answering); a retry
    may succeed once the cause is gone."""


class RingRefused(RingError):
    """The pre-flight check refused to start: a node is not UN, a repair runs, or the request
    names what the cluster does not have. The message says what to do; a retry does not help
    until the operator acts."""


@dataclass(frozen=True)
class NodeRing:
    """One node's place in the ring: its state as the other nodes see it, its share of its own
    DC's token ring (0..1) and the bytes it holds on disk (live SSTables)."""

    node: str
    dc: str
    address: str
    state: str  # UN, DN, UJ, UL, UM; "?" when no node answered for it
    ownership: float
    load_bytes: float


@dataclass(frozen=True)
class RingSnapshot:
    """Every node of the topology at one moment, in topology order."""

    nodes: tuple[NodeRing, ...]

    def node(self, name: str) -> NodeRing:
        for n in self.nodes:
            if n.node == name:
                return n
        raise KeyError(name)

    def to_dict(self) -> dict[str, dict[str, object]]:
        """By node name, for XCom."""
        return {n.node: asdict(n) for n in self.nodes}


@dataclass(frozen=True)
class CleanupResult:
    """One keyspace cleaned up on one node."""

    node: str
    keyspace: str
    status: str
    seconds: float


# -- what the nodes say --------------------------------------------------------------------------


def read_views(
    topology: Topology, login: Login | None = None
) -> tuple[dict[str, RingView], dict[str, str]]:
    """The ring as each node of the topology sees it, and the nodes that did not answer (with
    why). Every node is asked: its own view is the only one with its current load (Cassandra
    gossips the others' every minute), and a node that does not answer is itself a finding."""
    views: dict[str, RingView] = {}
    failed: dict[str, str] = {}
    for node in topology.nodes:
        try:
            views[node.name] = ring_view(node, login)
        except JolokiaError as exc:
            log.warning("%s", exc)
            failed[node.name] = str(exc)
    return views, failed


def repair_sessions(jolokia: Jolokia, topology: Topology) -> dict[str, int]:
    """Each answering node's parent repair sessions (any keyspace, coordinated or taken part
    in): the count the repair DAG checks too (:func:`repair_lease.session_counts`)."""
    counts: dict[str, int] = {}
    for node in topology.nodes:
        try:
            counts.update(session_counts(jolokia, [node]))
        except JolokiaError as exc:
            log.warning("%s", exc)  # already a blocker: the node did not answer for its view
    return counts


def blockers(
    topology: Topology,
    views: Mapping[str, RingView],
    unanswered: Mapping[str, str],
    sessions: Mapping[str, int],
) -> list[str]:
    """Why a cleanup must not start now, one line each saying what to do; empty when it may.

    * a node of the topology did not answer over Jolokia;
    * a node is not UN in some node's view (down, joining, leaving, moving), or in no view's
      ring at all;
    * a node in the ring is not in the topology: ownership would be computed without it;
    * a repair session runs on some node.
    """
    out: list[str] = []
    by_address = {n.address: n.name for n in topology.nodes}
    in_ring: set[str] = set()
    for view in views.values():
        # Not view.down as such: gossip remembers a decommissioned node for days (its LEFT
        # state, re-learned from peers once its quarantine ends) among the unreachable ones,
        # with no token. A node down that is in the ring still owns its tokens.
        in_ring |= set(view.tokens) | view.up | view.joining | view.leaving | view.moving
    for node in topology.nodes:
        if views and node.address not in in_ring:
            out.append(
                f"{node.name} ({node.address}) is in the topology but in no node's ring: start "
                "it and let it join, or remove it from the retail_cassandra connection's "
                "topology (`retail airflow-env`), then trigger again"
            )
            continue
        seen = {observer: view.state(node.address) for observer, view in views.items()}
        bad = [f"{state} to {observer}" for observer, state in seen.items() if state != "UN"]
        if node.name in unanswered:
            bad.insert(0, "not answering over Jolokia")
        if bad:
            out.append(f"{node.name} ({node.address}) is {', '.join(bad)}: {WHAT_TO_DO_STATE}")
    strangers = sorted(in_ring - set(by_address))
    if strangers:
        out.append(
            f"the ring has node(s) {', '.join(strangers)} that the topology does not list: "
            "ownership would be computed without them. Update the retail_cassandra "
            "connection's topology (`retail airflow-env`) to the cluster's, then trigger again"
        )
    busy = {name: n for name, n in sessions.items() if n}
    if busy:
        running = ", ".join(f"{name} ({n})" for name, n in sorted(busy.items()))
        out.append(
            f"a repair runs: parent repair sessions on {running}. A cleanup rewrites the ranges "
            "the repair streams into: wait for it to finish (the replication_repair DAG's run, "
            "or a `nodetool repair`), then trigger again"
        )
    return out


def preflight(
    topology: Topology,
    views: Mapping[str, RingView],
    unanswered: Mapping[str, str],
    sessions: Mapping[str, int],
) -> None:
    """Raise :class:`RingRefused` listing every :func:`blockers` line, if there is any."""
    found = blockers(topology, views, unanswered, sessions)
    if found:
        raise RingRefused("ring maintenance refused to start: " + "; ".join(found))


def snapshot(topology: Topology, views: Mapping[str, RingView]) -> RingSnapshot:
    """Ownership and load of every node of the topology, from the views that answered.

    Ownership comes from the tokens (every view holds the whole ring; the first one in topology
    order is used); each node's load from its own view when it answered (the only fresh one:
    a node's load of the others is what gossip last carried), else from the first view that
    has it; the state from the first view."""
    ordered = [views[n.name] for n in topology.nodes if n.name in views]
    if not ordered:
        raise RingError(
            "no Cassandra node answered over Jolokia: is the cluster up? (`retail stack status`)"
        )
    first = ordered[0]
    shares = dc_ownership(first.tokens, {n.address: n.dc for n in topology.nodes})
    nodes = []
    for n in topology.nodes:
        own = views.get(n.name)
        load = own.load_bytes.get(n.address) if own is not None else None
        if load is None:
            load = next((v.load_bytes[n.address] for v in ordered if n.address in v.load_bytes), 0)
        nodes.append(
            NodeRing(
                node=n.name,
                dc=n.dc,
                address=n.address,
                state=first.state(n.address) if n.address in first.tokens else "?",
                ownership=shares.get(n.address, 0.0),
                load_bytes=float(load),
            )
        )
    return RingSnapshot(tuple(nodes))


# -- which nodes ---------------------------------------------------------------------------------


def choose_nodes(
    topology: Topology, dcs: Sequence[str] = (), nodes: Sequence[str] = ()
) -> list[CassandraNode]:
    """The nodes to clean up, in topology order: every node of ``dcs`` (empty: every DC), or
    only ``nodes`` when given (each must be in one of ``dcs``). After a join, the nodes of the
    joined DC other than the new one are those that gave up ranges; cleaning up the new node
    too costs a compaction and removes nothing."""
    known_dcs = [dc.name for dc in topology.datacenters]
    unknown_dcs = [d for d in dcs if d not in known_dcs]
    if unknown_dcs:
        raise RingRefused(
            f"unknown DC(s) {', '.join(unknown_dcs)}; the topology has {', '.join(known_dcs)}"
        )
    wanted_dcs = set(dcs or known_dcs)
    in_dcs = [n for n in topology.nodes if n.dc in wanted_dcs]
    if not nodes:
        return in_dcs
    known = {n.name: n for n in topology.nodes}
    unknown = [name for name in nodes if name not in known]
    if unknown:
        raise RingRefused(
            f"unknown node(s) {', '.join(unknown)}; the topology has {', '.join(known)}"
        )
    outside = [name for name in nodes if known[name].dc not in wanted_dcs]
    if outside:
        where = ", ".join(f"{name} is in {known[name].dc}" for name in outside)
        raise RingRefused(
            f"{where}, not in dcs {sorted(wanted_dcs)}: add its DC to dcs, or leave nodes empty "
            "to clean up every node of dcs"
        )
    return [n for n in in_dcs if n.name in set(nodes)]


# -- the cleanup ---------------------------------------------------------------------------------


def cleanup(
    jolokia: Jolokia,
    targets: Sequence[CassandraNode],
    keyspaces: Sequence[str],
    metrics: Metrics,
    *,
    jobs: int = CLEANUP_JOBS,
    say: Callable[[str], None] = log.info,
    clock: Callable[[], float] = time.monotonic,
) -> list[CleanupResult]:
    """``nodetool cleanup`` of each of ``keyspaces`` on each of ``targets``, one node and one
    keyspace at a time, through ``jolokia`` (whose HTTP timeout must outlast a keyspace's
    cleanup: :data:`CLEANUP_HTTP_TIMEOUT`).

    ``ring.cleanup.in_progress`` is 1 while it runs and 0 after, also when it fails;
    ``ring.cleanup.nodes_remaining`` counts the nodes not yet done. A keyspace whose cleanup
    does not end SUCCESSFUL stops the whole run with :class:`RingError`: the nodes after it
    keep their data until a later run (a cleanup done twice only costs a compaction).
    """
    results: list[CleanupResult] = []
    total = len(targets)
    start = clock()
    metrics.gauge("ring.cleanup.nodes_remaining", total)
    metrics.gauge("ring.cleanup.in_progress", 1)
    try:
        for i, node in enumerate(targets, 1):
            for keyspace in keyspaces:
                say(
                    f"cleanup {i} of {total}: {node.name}, keyspace {keyspace} "
                    f"[{clock() - start:.1f}s elapsed]"
                )
                began = clock()
                try:
                    code = jolokia.exec(
                        node, STORAGE_SERVICE, CLEANUP_OPERATION, jobs, keyspace, []
                    )
                except JolokiaError as exc:
                    raise RingError(
                        f"cleanup of {keyspace} on {node.name} failed: {exc}. Nothing is lost "
                        "(a cleanup only drops ranges the node no longer owns): check the node's "
                        "system.log, then trigger again"
                    ) from exc
                status = CLEANUP_STATUS.get(int(code or 0), f"status {code}")
                seconds = clock() - began
                if status != "SUCCESSFUL":
                    raise RingError(
                        f"cleanup of {keyspace} on {node.name} ended {status} after "
                        f"{seconds:.1f}s (another operation held its SSTables, or a compaction "
                        "was stopped): check the node's system.log and `nodetool "
                        "compactionstats`, then trigger again"
                    )
                results.append(CleanupResult(node.name, keyspace, status, round(seconds, 3)))
                say(f"cleanup {i} of {total}: {node.name}, keyspace {keyspace}: {seconds:.1f}s")
            metrics.gauge("ring.cleanup.nodes_remaining", total - i)
    finally:
        metrics.gauge("ring.cleanup.in_progress", 0)
    return results


# -- what it shows -------------------------------------------------------------------------------


def gauges(snap: RingSnapshot, phase: str) -> dict[str, float]:
    """The ring gauges of one phase (names without the ``retail.`` prefix):
    ``ring.owns.<phase>.<dc>.<node>`` (0..1) and ``ring.load_bytes.<phase>.<dc>.<node>``,
    which the statsd_exporter maps to ``retail_ring_owns`` and ``retail_ring_load_bytes``.
    A node no view answered for (state ``?``) sends nothing rather than a false 0."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    g: dict[str, float] = {}
    for n in snap.nodes:
        if n.state == "?":
            continue
        g[f"ring.owns.{phase}.{n.dc}.{n.node}"] = round(n.ownership, 6)
        g[f"ring.load_bytes.{phase}.{n.dc}.{n.node}"] = n.load_bytes
    return g


def publish(metrics: Metrics, snap: RingSnapshot, phase: str) -> int:
    """Send :func:`gauges`; returns how many."""
    sent = gauges(snap, phase)
    for name, value in sorted(sent.items()):
        metrics.gauge(name, value)
    return len(sent)


def summary_lines(before: RingSnapshot, after: RingSnapshot | None) -> list[str]:
    """One readable line per node: state, ownership of its DC, load (and its change)."""
    lines = []
    for b in before.nodes:
        line = f"{b.node} ({b.dc}, {b.state}): owns {100 * b.ownership:.1f}% of {b.dc}, load "
        a = None
        if after is not None:
            a = next((n for n in after.nodes if n.node == b.node), None)
        if a is None:
            lines.append(line + _mib(b.load_bytes))
            continue
        owns = (
            ""
            if abs(a.ownership - b.ownership) < 5e-7
            else f" (ownership now {100 * a.ownership:.1f}%)"
        )
        delta = a.load_bytes - b.load_bytes
        lines.append(
            line + f"{_mib(b.load_bytes)} -> {_mib(a.load_bytes)} ({delta / 1024**2:+.1f} MiB)"
            f"{owns}"
        )
    return lines
