"""The local stack as a whole: start it, wait until it is really ready, stop it, report on it.

State lives in ``<state_dir>/stack``: ``topology.json`` (what was started), and one directory per
component holding its config, data, logs and PID file. ``down`` stops every process by the PID
it recorded; data stays for the next ``up`` unless ``--purge``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from retail.settings import Settings, get_settings
from retail.topology import CassandraNode, KafkaBroker, Topology
from stack import cassandra, kafka, monitoring
from stack.errors import ComponentError, StackError
from stack.fetch import Artifacts, fetch_all
from stack.process import ManagedProcess

log = logging.getLogger(__name__)

# A probe answers None when its component is ready, or a few words on what it waits for.
Probe = Callable[[], str | None]


@dataclass
class Component:
    """One process of the stack and how to tell that it is ready."""

    name: str
    kind: str  # cassandra | kafka | prometheus | alertmanager | statsd_exporter
    endpoint: str
    process: ManagedProcess
    probe: Probe


class Reporter:
    """Receives progress while the stack starts; the CLI draws it, tests log it."""

    def waiting(self, component: str, detail: str) -> None:
        log.debug("%s: %s", component, detail)

    def ready(self, component: str, seconds: float) -> None:
        log.info("%s ready after %.1fs", component, seconds)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class LocalStack:
    """The platform's real servers as local processes, described by a :class:`Topology`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.dir = self.settings.stack_dir
        self.artifacts = Artifacts(self.settings.cache_dir)

    # -- topology -----------------------------------------------------------------------------

    @property
    def topology_file(self) -> Path:
        return self.dir / "topology.json"

    def saved_topology(self) -> Topology | None:
        """The topology of the stack last brought up here, if any."""
        if not self.topology_file.exists():
            return None
        return Topology.from_json(self.topology_file.read_text())

    def topology(self) -> Topology:
        """The topology of the stack here; fails with what to do if there is none."""
        topo = self.saved_topology()
        if topo is None:
            raise StackError(f"no local stack in {self.dir}; start one with `retail stack up`")
        return topo

    # -- components ---------------------------------------------------------------------------

    def components(self, topology: Topology) -> list[Component]:
        """Every process of the stack, in start order (monitoring first, Cassandra last)."""
        d, a = self.dir, self.artifacts
        comps = [
            Component(
                "statsd_exporter",
                "statsd_exporter",
                topology.statsd_exporter.url,
                monitoring.statsd_exporter_process(d, topology, a),
                lambda: (
                    None
                    if _http_ok(f"{topology.statsd_exporter.url}/metrics")
                    else "waiting for its metrics page"
                ),
            ),
            Component(
                "alertmanager",
                "alertmanager",
                topology.alertmanager.url,
                monitoring.alertmanager_process(d, topology, a),
                lambda: (
                    None
                    if _http_ok(f"{topology.alertmanager.url}/-/ready")
                    else "waiting for /-/ready"
                ),
            ),
            Component(
                "prometheus",
                "prometheus",
                topology.prometheus.url,
                monitoring.prometheus_process(d, topology, a),
                lambda: (
                    None
                    if _http_ok(f"{topology.prometheus.url}/-/ready")
                    else "waiting for /-/ready"
                ),
            ),
        ]
        comps += [
            Component(
                b.name,
                "kafka",
                b.bootstrap,
                kafka.broker_process(d, topology, b, a),
                self._kafka_probe(topology, b),
            )
            for b in topology.brokers
        ]
        comps += [
            Component(
                n.name,
                "cassandra",
                f"{n.address}:{n.cql_port}",
                cassandra.node_process(d, topology, n, a),
                self._cassandra_probe(topology, n),
            )
            for n in topology.nodes
        ]
        return comps

    def _handles(self, topology: Topology) -> list[tuple[str, str, ManagedProcess]]:
        """(name, kind, process) for every component, without needing the fetched artifacts:
        enough to find, signal and stop what runs."""
        homes = [
            ("statsd_exporter", "statsd_exporter", self.dir / "statsd_exporter"),
            ("alertmanager", "alertmanager", self.dir / "alertmanager"),
            ("prometheus", "prometheus", self.dir / "prometheus"),
        ]
        homes += [(b.name, "kafka", kafka.broker_home(self.dir, b)) for b in topology.brokers]
        homes += [(n.name, "cassandra", cassandra.node_home(self.dir, n)) for n in topology.nodes]
        return [(name, kind, ManagedProcess(name, [], home)) for name, kind, home in homes]

    @staticmethod
    def _kafka_probe(topology: Topology, broker: KafkaBroker) -> Probe:
        def probe() -> str | None:
            if not port_open(broker.address, broker.port):
                return f"waiting for port {broker.port}"
            from confluent_kafka.admin import AdminClient

            admin = AdminClient(
                {
                    "bootstrap.servers": broker.bootstrap,
                    "logger": logging.getLogger("stack.kafka.client"),
                }
            )
            try:
                meta = admin.list_topics(timeout=3)
            except Exception as exc:  # KafkaException: not answering metadata yet
                return f"metadata request failed: {exc}"
            if len(meta.brokers) < len(topology.brokers):
                return f"{len(meta.brokers)} of {len(topology.brokers)} brokers registered"
            return None

        return probe

    @staticmethod
    def _cassandra_probe(topology: Topology, node: CassandraNode) -> Probe:
        others = [n for n in topology.nodes if n is not node]

        def probe() -> str | None:
            if not port_open(node.address, node.cql_port):
                return "starting (CQL not answering yet)"
            # Ready means: this node sees every other node Up/Normal, and every other node
            # that answers sees this one Up/Normal. The last nodes to start check the others.
            try:
                view = cassandra.ring_view(node)
            except cassandra.JolokiaError:
                return "waiting for its JMX view"
            not_un = [n.name for n in others if view.state(n.address) != "UN"]
            if not_un:
                return f"sees {', '.join(not_un)} not UN yet"
            for other in others:
                with contextlib.suppress(cassandra.JolokiaError):
                    if cassandra.ring_view(other).state(node.address) != "UN":
                        return f"{other.name} does not see it UN yet"
            return None

        return probe

    # -- lifecycle ----------------------------------------------------------------------------

    def running(self, topology: Topology | None = None) -> list[str]:
        """Names of the components whose processes are alive."""
        topo = topology or self.saved_topology()
        if topo is None:
            return []
        return [name for name, _, proc in self._handles(topo) if proc.alive()]

    def up(
        self,
        topology: Topology,
        *,
        fresh: bool = False,
        timeout: float = 600.0,
        reporter: Reporter | None = None,
        on_fetch: Callable[[str], None] | None = None,
    ) -> Topology:
        """Start what is not running and wait until everything is ready.

        On a running stack of the same topology this starts nothing and only checks readiness.
        """
        reporter = reporter or Reporter()
        saved = self.saved_topology()
        if fresh:
            self.down(purge=True)
            saved = None
        if saved is not None and saved != topology:
            if self.running(saved):
                raise StackError(
                    f"a stack of another shape is running from {self.dir} "
                    f"({_shape(saved)}; asked for {_shape(topology)}). "
                    "Stop it first: `retail stack down`, or `retail stack up --fresh`."
                )
            log.info("replacing the stopped stack (%s) with %s", _shape(saved), _shape(topology))
            self.down(purge=True)
        fetch_all(self.settings.cache_dir, on_fetch)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.topology_file.write_text(topology.to_json())
        comps = self.components(topology)
        for comp in comps:
            if comp.process.alive():
                continue
            self._prepare(topology, comp)
            comp.process.start()
        self._wait_ready(comps, timeout, reporter)
        return topology

    def _prepare(self, topology: Topology, comp: Component) -> None:
        if comp.kind == "cassandra":
            cassandra.write_config(self.dir, topology, topology.node(comp.name))
        elif comp.kind == "kafka":
            broker = next(b for b in topology.brokers if b.name == comp.name)
            kafka.write_config(self.dir, topology, broker)
            kafka.format_storage(self.dir, topology, broker, self.artifacts)

    def _wait_ready(self, comps: list[Component], timeout: float, reporter: Reporter) -> None:
        start = time.monotonic()
        pending = list(comps)
        while pending:
            for comp in list(pending):
                if not comp.process.alive():
                    raise ComponentError(
                        comp.name,
                        "exited during start-up",
                        comp.process.tail(),
                        str(comp.process.main_log),
                    )
                detail = comp.probe()
                if detail is None:
                    pending.remove(comp)
                    reporter.ready(comp.name, time.monotonic() - start)
                else:
                    reporter.waiting(comp.name, detail)
            if pending and time.monotonic() - start > timeout:
                comp = pending[0]
                raise ComponentError(
                    comp.name,
                    f"not ready after {timeout:.0f}s ({comp.probe() or 'ready'})",
                    comp.process.tail(),
                    str(comp.process.main_log),
                )
            if pending:
                time.sleep(1.0)

    def down(self, *, purge: bool = False) -> list[str]:
        """Stop every process the stack started (Cassandra first); returns what was stopped."""
        topo = self.saved_topology()
        stopped: list[str] = []
        if topo is not None:
            for name, kind, proc in reversed(self._handles(topo)):
                # Cassandra and Kafka flush and deregister on SIGTERM; give them time to.
                if proc.stop(timeout=60.0 if kind in ("cassandra", "kafka") else 15.0):
                    stopped.append(name)
        if purge and self.dir.exists():
            shutil.rmtree(self.dir)
        return stopped

    def _component(self, name: str) -> tuple[Topology, Component]:
        topo = self.topology()
        for comp in self.components(topo):
            if comp.name == name or (
                comp.kind == "cassandra" and topo.node(comp.name).address == name
            ):
                return topo, comp
        known = ", ".join(c.name for c in self.components(topo))
        raise StackError(f"no component {name!r} in the stack; it has: {known}")

    def kill(self, name: str) -> str:
        """SIGKILL one component (a node crash, for failure tests and drills)."""
        _, comp = self._component(name)
        if not comp.process.kill():
            raise StackError(f"{comp.name} is not running")
        return comp.name

    def start(self, name: str, *, timeout: float = 300.0, reporter: Reporter | None = None) -> str:
        """Start one stopped component again and wait until it is ready (for a Cassandra node:
        UN in every other node's view)."""
        topo, comp = self._component(name)
        if not comp.process.alive():
            self._prepare(topo, comp)
            comp.process.start()
        self._wait_ready([comp], timeout, reporter or Reporter())
        return comp.name

    def process(self, name: str) -> ManagedProcess:
        return self._component(name)[1].process


def _shape(topology: Topology) -> str:
    dcs = ", ".join(f"{dc.name}={len(dc.nodes)}" for dc in topology.datacenters)
    return f"Cassandra {dcs}; Kafka brokers={len(topology.brokers)}"
