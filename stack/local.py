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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from retail import jolokia
from retail.credentials import JOLOKIA_USER, Login, stack_credentials
from retail.errors import ConfigError
from retail.ops import access
from retail.settings import Settings, get_settings
from retail.topology import CassandraNode, KafkaBroker, Topology, as_new_cluster
from stack import cassandra, kafka, monitoring, secrets
from stack import jolokia as stack_jolokia
from stack.airflow import AirflowServers
from stack.errors import ComponentError, StackError
from stack.fetch import Artifacts, fetch_all
from stack.process import ManagedProcess
from stack.services import Services
from stack.supervisor import ServiceSpec

log = logging.getLogger(__name__)

# A probe answers None when its component is ready, or a few words on what it waits for.
Probe = Callable[[], str | None]


@dataclass
class Component:
    """One process of the stack and how to tell that it is ready."""

    name: str
    kind: str  # cassandra | kafka | prometheus | alertmanager | statsd_exporter | supervisor
    endpoint: str
    process: ManagedProcess
    probe: Probe
    # Addresses it will listen on, checked free before it starts: ("tcp"|"udp", host, port).
    ports: list[tuple[str, str, int]] = field(default_factory=list)


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


def port_taken(proto: str, host: str, port: int) -> bool:
    """True if something already listens on (host, port).

    TCP is probed with SO_REUSEADDR, as the servers bind, so a socket lingering in TIME_WAIT
    from a stopped server does not count as taken; only a live listener does.
    """
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if proto == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _http_probe(url: str) -> Probe:
    def probe() -> str | None:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        return f"waiting for {url}"

    return probe


class LocalStack:
    """The platform's real servers as local processes, described by a :class:`Topology`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.dir = self.settings.stack_dir
        self.artifacts = Artifacts(self.settings.cache_dir)
        self.services = Services(self.dir)

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
        """Every process of the stack, in start order (monitoring first, then Kafka and
        Cassandra, then the supervised services if any are configured)."""
        d, a = self.dir, self.artifacts
        prom, am, sx, sd = (
            topology.prometheus,
            topology.alertmanager,
            topology.statsd_exporter,
            topology.statsd,
        )
        comps = [
            Component(
                "statsd_exporter",
                "statsd_exporter",
                sx.url,
                monitoring.statsd_exporter_process(d, topology, a),
                _http_probe(f"{sx.url}/metrics"),
                [("tcp", sx.host, sx.port), ("udp", sd.host, sd.port), ("tcp", sd.host, sd.port)],
            ),
            Component(
                "alertmanager",
                "alertmanager",
                am.url,
                monitoring.alertmanager_process(d, topology, a),
                _http_probe(f"{am.url}/-/ready"),
                [("tcp", am.host, am.port)],
            ),
            Component(
                "prometheus",
                "prometheus",
                prom.url,
                monitoring.prometheus_process(d, topology, a),
                _http_probe(f"{prom.url}/-/ready"),
                [("tcp", prom.host, prom.port)],
            ),
        ]
        comps += [
            Component(
                b.name,
                "kafka",
                b.bootstrap,
                kafka.broker_process(d, topology, b, a),
                self._kafka_probe(topology, b),
                [("tcp", b.address, p) for p in (b.port, b.controller_port, b.exporter_port)],
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
                [
                    ("tcp", n.address, p)
                    for p in (n.storage_port, n.cql_port, n.exporter_port, n.jolokia_port)
                ]
                + [("tcp", "127.0.0.1", n.jmx_port)],
            )
            for n in topology.nodes
        ]
        if self.services.specs():
            sv = self.services
            comps.append(Component("supervisor", "supervisor", str(sv.home), sv.process, sv.probe))
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
        handles = [(name, kind, ManagedProcess(name, [], home)) for name, kind, home in homes]
        handles.append(("supervisor", "supervisor", self.services.process))
        # Airflow's servers, when `retail stack airflow` started them.
        return handles + [
            (p.name, "airflow", p) for p in AirflowServers(topology, self.dir).processes()
        ]

    def _kafka_probe(self, topology: Topology, broker: KafkaBroker) -> Probe:
        def probe() -> str | None:
            if not port_open(broker.address, broker.port):
                return f"waiting for port {broker.port}"
            from confluent_kafka.admin import AdminClient

            admin = AdminClient(
                {
                    **kafka.admin_config(self.dir, topology),
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

    def jolokia_login(self) -> Login:
        """The login of the nodes' Jolokia agents (generated by the first `up`)."""
        return stack_credentials(self.settings).login("jolokia", JOLOKIA_USER)

    def _cassandra_probe(self, topology: Topology, node: CassandraNode) -> Probe:
        others = [n for n in topology.nodes if n is not node]

        def probe() -> str | None:
            if not port_open(node.address, node.cql_port):
                return "starting (CQL not answering yet)"
            # Ready means: this node sees every other node Up/Normal, and every other node
            # that answers sees this one Up/Normal. The last nodes to start check the others.
            try:
                view = jolokia.ring_view(node, self.jolokia_login())
            except (jolokia.JolokiaError, ConfigError):
                return "waiting for its JMX view"
            not_un = [n.name for n in others if view.state(n.address) != "UN"]
            if not_un:
                return f"sees {', '.join(not_un)} not UN yet"
            for other in others:
                with contextlib.suppress(jolokia.JolokiaError):
                    if jolokia.ring_view(other, self.jolokia_login()).state(node.address) != "UN":
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
        services: list[ServiceSpec] | None = None,
    ) -> Topology:
        """Start what is not running and wait until everything is ready.

        On a running stack of the same topology this starts nothing and only checks readiness.
        ``services`` (see :mod:`stack.services`) replaces the supervised services; None leaves
        them as they are.
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
            saved = None
        if saved is None:
            # A new cluster: every node starts at once with its token, none bootstraps (a node
            # that joined the ring it came from would wait for a ring to stream from).
            topology = as_new_cluster(topology)
        fetch_all(self.settings.cache_dir, on_fetch)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.topology_file.write_text(topology.to_json())
        creds = secrets.ensure(self.dir, topology)
        if services is not None:
            self.services.configure(services)
        comps = self.components(topology)
        to_start = [c for c in comps if not c.process.alive()]
        self.check_ports_free(to_start)
        # The servers first; the supervised services once Cassandra has its roles and Kafka its
        # logins, topics and ACLs, which their least-privileged logins cannot create themselves.
        servers = [c for c in comps if c.kind != "supervisor"]
        started = time.monotonic()
        for comp in to_start:
            if comp.kind != "supervisor":
                self.prepare(topology, comp)
                comp.process.start()
        self._wait_ready(servers, timeout, reporter)
        access.secure(topology, creds)
        if any(c.kind == "kafka" for c in to_start):
            kafka.secure(self.dir, topology)
        rest = [c for c in comps if c.kind == "supervisor"]
        for comp in rest:
            if comp in to_start:
                comp.process.start()
        self._wait_ready(rest, max(timeout - (time.monotonic() - started), 30.0), reporter)
        return topology

    @staticmethod
    def check_ports_free(comps: list[Component]) -> None:
        """Fail before starting anything if another process holds one of our addresses: a
        server that cannot bind dies with a less obvious error, half the stack already up."""
        taken = [
            (c.name, proto, host, port)
            for c in comps
            for proto, host, port in c.ports
            if port_taken(proto, host, port)
        ]
        if taken:
            lines = "; ".join(
                f"{name} needs {proto} {host}:{port}" for name, proto, host, port in taken
            )
            raise StackError(
                f"addresses already in use: {lines}. Another stack (from another clone or "
                "state dir) or another server holds them; stop it first "
                "(`ss -ltnup | grep PORT` shows who)."
            )

    def prepare(self, topology: Topology, comp: Component) -> None:
        if comp.kind == "cassandra":
            node = topology.node(comp.name)
            home = cassandra.write_config(self.dir, topology, node)
            stack_jolokia.write_agent_config(home / "conf", node, self.jolokia_login())
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
        """Stop every process the stack started; returns what was stopped.

        Tier by tier (the supervised services and Airflow, Cassandra, then Kafka, then
        monitoring), each tier at once: consumers drain and commit while Cassandra and Kafka
        still run; a node drains its memtables on SIGTERM, which takes seconds, and six nodes
        need not take it in turn.
        """
        topo = self.saved_topology()
        stopped: list[str] = []
        if topo is not None:
            handles = self._handles(topo)
            for tier in (
                ("supervisor", "airflow"),
                ("cassandra",),
                ("kafka",),
                ("prometheus", "alertmanager", "statsd_exporter"),
            ):
                signalled = [h for h in reversed(handles) if h[1] in tier and h[2].terminate()]
                for name, kind, proc in signalled:
                    proc.wait_stopped(_STOP_TIMEOUT.get(kind, 15.0))
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
        """SIGKILL one component or supervised service (a crash, for failure tests and drills);
        the supervisor starts a service again."""
        if name in {s.name for s in self.services.specs()}:
            try:
                pid = self.services.kill(name)
            except LookupError as exc:
                raise StackError(f"{exc}; `retail stack status` shows its state") from None
            return f"{name} (pid {pid})"
        _, comp = self._component(name)
        if not comp.process.kill():
            raise StackError(f"{comp.name} is not running")
        return comp.name

    def stop(self, name: str) -> str:
        """Stop one component as its operator would (SIGTERM, then up to its tier's grace)."""
        _, comp = self._component(name)
        if not comp.process.terminate():
            raise StackError(f"{comp.name} is not running")
        comp.process.wait_stopped(_STOP_TIMEOUT.get(comp.kind, 15.0))
        return comp.name

    def process(self, name: str) -> ManagedProcess:
        """The process of one component (to signal it: a freeze, a thaw)."""
        return self._component(name)[1].process

    def start(self, *names: str, timeout: float = 300.0, reporter: Reporter | None = None) -> str:
        """Start stopped components again and wait until they are ready (a Cassandra node: UN
        in every other node's view). Several at once: the nodes of a stopped DC, each of which
        is ready only once it sees the others up."""
        picked = [self._component(name) for name in names]
        comps = [comp for _, comp in picked]
        for topo, comp in picked:
            if not comp.process.alive():
                self.check_ports_free([comp])
                self.prepare(topo, comp)
                comp.process.start()
        self._wait_ready(comps, timeout, reporter or Reporter())
        return ", ".join(c.name for c in comps)


# Seconds a tier gets to stop after SIGTERM: consumers drain their last batch (up to their
# 60 s drain timeout), Cassandra and Kafka flush.
_STOP_TIMEOUT = {"supervisor": 120.0, "cassandra": 60.0, "kafka": 60.0}


def _shape(topology: Topology) -> str:
    dcs = ", ".join(f"{dc.name}={len(dc.nodes)}" for dc in topology.datacenters)
    return f"Cassandra {dcs}; Kafka brokers={len(topology.brokers)}"
