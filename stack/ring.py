"""Changing the local stack's token ring: a node joins a running DC, or leaves it.

A join is Cassandra's bootstrap: the new node starts with ``auto_bootstrap`` and a token from
:func:`retail.topology.joining_token`, streams the ranges it takes over from their current
replicas, and turns Up/Normal; the nodes that gave those ranges up still hold them until a
cleanup (the ``ring_maintenance`` DAG). A leave is ``nodetool decommission``: the node streams
its ranges to the nodes that take them over, announces that it left, and is stopped. It runs
through nodetool on the node's loopback JMX port, as the operator on this machine would: the
nodes' Jolokia policy refuses ``decommission`` to every login on purpose.

Both refuse to start unless every node is Up/Normal (Cassandra streams from, and to, the
current replicas), and record the change in the stack's ``topology.json`` that every client
reads, and in Prometheus's scrape targets.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Callable

from retail import jolokia
from retail.errors import ConfigError
from retail.topology import CassandraNode, Topology, with_node_added, without_node
from stack import cassandra, secrets
from stack.errors import ComponentError, StackError
from stack.local import LocalStack, Reporter

log = logging.getLogger(__name__)


def _mib(n: float | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


def _view(stack: LocalStack, topology: Topology, skip: str = "") -> jolokia.RingView | None:
    """The ring as the first live node other than ``skip`` sees it (None if none answers)."""
    for node in topology.nodes:
        if node.name == skip:
            continue
        with contextlib.suppress(jolokia.JolokiaError, ConfigError):
            return jolokia.ring_view(node, stack.jolokia_login())
    return None


def require_whole_ring(stack: LocalStack, topology: Topology, doing: str) -> None:
    """Raise unless every node runs and is Up/Normal in a live node's view."""
    view = _view(stack, topology)
    if view is None:
        raise StackError(f"cannot {doing}: no Cassandra node answers; `retail stack up` first")
    stopped = [n.name for n in topology.nodes if not stack.process(n.name).alive()]
    not_normal = {n.name: view.state(n.address) for n in topology.nodes}
    not_normal = {name: state for name, state in not_normal.items() if state != "UN"}
    # A node the topology does not name can be moving too (started by hand, or a join whose
    # command was killed): Cassandra streams one range movement at a time.
    known = {n.address for n in topology.nodes}
    changing = view.joining | view.leaving | view.moving
    not_normal |= {address: view.state(address) for address in changing - known}
    if stopped or not_normal:
        states = ", ".join(f"{name} {state}" for name, state in not_normal.items())
        raise StackError(
            f"cannot {doing} while the ring is changing or a node is down ("
            + "; ".join(filter(None, [f"stopped: {', '.join(stopped)}" if stopped else "", states]))
            + "). Start the stopped nodes (`retail stack start NODE`) or wait for the running "
            "join or leave to finish (`retail stack status`)"
        )


def _record(stack: LocalStack, topology: Topology) -> None:
    """Make ``topology`` the stack's: the file clients read, and Prometheus's targets (it
    watches the target files, so the node's metrics come and go without a restart)."""
    stack.topology_file.write_text(topology.to_json())
    stack.components(topology)  # renders the scrape targets of every node it names


def add_node(
    stack: LocalStack, dc: str, *, timeout: float = 900.0, reporter: Reporter | None = None
) -> CassandraNode:
    """Bootstrap a new node into the running DC ``dc`` and wait until it is Up/Normal in every
    node's view (its streaming done); returns the node. A join that fails is rolled back: the
    node is stopped, its directory removed and the topology restored."""
    reporter = reporter or Reporter()
    old = stack.topology()
    new, node = with_node_added(old, dc)
    require_whole_ring(stack, old, f"add a node to {dc}")
    secrets.ensure(stack.dir, new)  # the new node's certificate, from the stack's CA
    comp = next(c for c in stack.components(new) if c.name == node.name)
    stack.check_ports_free([comp])
    log.info(
        "adding %s (%s, %s, token %d) to %s", node.name, node.address, node.rack, node.token, dc
    )
    # Recorded before the start: the new node's own probe and any client that reads the
    # topology meanwhile must know it.
    _record(stack, new)
    stack.prepare(new, comp)
    comp.process.start()
    started = time.monotonic()
    try:
        _wait(
            lambda: _join_detail(stack, old, node, comp.probe),
            comp.process.alive,
            node.name,
            timeout,
            reporter,
        )
    except StackError as exc:
        log.error("%s did not join; rolling back: stopping it and removing its files", node.name)
        tail = comp.process.tail()
        comp.process.kill()
        shutil.rmtree(cassandra.node_home(stack.dir, node), ignore_errors=True)
        _record(stack, old)
        raise ComponentError(
            node.name, f"did not join {dc}, rolled back ({exc})", tail, "(removed)"
        ) from exc
    reporter.ready(node.name, time.monotonic() - started)
    return node


def _join_detail(
    stack: LocalStack, old: Topology, node: CassandraNode, probe: Callable[[], str | None]
) -> str | None:
    """None once the node is ready (UN in every view), else what the join is doing."""
    if probe() is None:
        return None
    view = _view(stack, old)
    if view is None or node.address not in view.up | view.down:
        return "starting: not in the ring yet"
    if node.address not in view.joining and node.address not in view.tokens:
        return "starting: in gossip, not joining yet"
    return (
        f"{view.state(node.address)} in {view.observer}'s view, "
        f"{_mib(view.load_bytes.get(node.address))} on disk"
    )


def remove_node(
    stack: LocalStack, name: str, *, timeout: float = 1800.0, reporter: Reporter | None = None
) -> CassandraNode:
    """Decommission node ``name`` (its ranges stream to the nodes that take them over), then stop
    it and remove its files; returns the node. Refuses the last node of a DC, a node the DC's
    replication factor needs, a seed, and any change while the ring is not whole."""
    reporter = reporter or Reporter()
    old = stack.topology()
    node = old.node(name)
    new = without_node(old, node.name)
    require_whole_ring(stack, old, f"remove {node.name}")
    argv = cassandra.nodetool_argv(node, ["decommission"], stack.artifacts)
    log.info("decommissioning %s (%s)", node.name, node.address)
    started = time.monotonic()
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as nodetool:
        try:
            _wait(
                lambda: None if nodetool.poll() is not None else _leave_detail(stack, old, node),
                lambda: True,
                node.name,
                timeout,
                reporter,
            )
        except StackError:
            nodetool.kill()
            raise
        output = nodetool.stdout.read() if nodetool.stdout else ""
    if nodetool.returncode != 0:
        raise StackError(
            f"nodetool decommission of {node.name} failed (exit {nodetool.returncode}); the node "
            f"keeps running and stays in the topology:\n{output.strip()[-2000:]}"
        )
    stack.stop(node.name)
    _record(stack, new)
    shutil.rmtree(cassandra.node_home(stack.dir, node), ignore_errors=True)
    reporter.ready(node.name, time.monotonic() - started)
    return node


def _leave_detail(stack: LocalStack, old: Topology, node: CassandraNode) -> str:
    view = _view(stack, old, skip=node.name)
    if view is None:
        return "decommissioning"
    if node.address not in view.tokens:
        return "left the ring; nodetool finishing"
    peers = [n for n in old.nodes if n.dc == node.dc and n != node]
    loads = ", ".join(f"{n.name} {_mib(view.load_bytes.get(n.address))}" for n in peers)
    return f"{view.state(node.address)} in {view.observer}'s view; {loads}"


def _wait(
    detail: Callable[[], str | None],
    alive: Callable[[], bool],
    name: str,
    timeout: float,
    reporter: Reporter,
) -> None:
    """Poll ``detail`` every 2 s until it answers None, reporting what it says meanwhile."""
    deadline = time.monotonic() + timeout
    while (text := detail()) is not None:
        if not alive():
            raise StackError(f"{name} exited: see `retail stack logs {name}`")
        if time.monotonic() > deadline:
            raise StackError(f"{name}: not done after {timeout:.0f}s ({text})")
        reporter.waiting(name, text)
        time.sleep(2.0)
