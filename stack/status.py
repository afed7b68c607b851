"""The state of the local stack: a per-DC node table like ``nodetool status``, every other
service, and every endpoint a script or test needs."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any

from retail import jolokia
from retail.errors import ConfigError
from retail.kafka import Topics, region_lag
from retail.topology import Topology
from stack.local import LocalStack
from stack.services import SupervisedStatus


@dataclass(frozen=True)
class NodeStatus:
    name: str
    dc: str
    rack: str
    address: str
    state: str  # UN, DN, UJ ... as nodetool prints it
    load_bytes: float | None
    owns: float | None  # share of its DC's token ring, 0..1
    token: int
    pid: int | None
    rss_mb: float | None


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    kind: str
    endpoint: str
    state: str  # up | down | not ready
    pid: int | None
    rss_mb: float | None


@dataclass(frozen=True)
class StackStatus:
    nodes: list[NodeStatus]
    services: list[ServiceStatus]
    endpoints: dict[str, Any]
    observer: str | None  # the node whose gossip view the states come from
    supervised: list[SupervisedStatus]

    @property
    def ok(self) -> bool:
        return (
            all(n.state == "UN" for n in self.nodes)
            and all(s.state == "up" for s in self.services)
            and all(s.state == "running" for s in self.supervised)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "observer": self.observer,
            "endpoints": self.endpoints,
            "nodes": [asdict(n) for n in self.nodes],
            "services": [asdict(s) for s in self.services],
            "supervised": [asdict(s) for s in self.supervised],
        }


def endpoints(topology: Topology) -> dict[str, Any]:
    """Every address a client of the stack needs."""
    return {
        "cassandra": {
            "cql_port": topology.nodes[0].cql_port,
            "contact_points": {dc.name: dc.contact_points for dc in topology.datacenters},
            "replication": topology.replication(),
        },
        "kafka": {"bootstrap_servers": topology.bootstrap_servers},
        "prometheus": topology.prometheus.url,
        "alertmanager": topology.alertmanager.url,
        "statsd": {"host": topology.statsd.host, "port": topology.statsd.port},
        "statsd_exporter": topology.statsd_exporter.url,
    }


def collect(stack: LocalStack) -> StackStatus:
    """Ask every process and one live Cassandra node how things are."""
    topo = stack.topology()
    comps = stack.components(topo)
    pids = {c.name: c.process.pid() for c in comps}
    rss = {c.name: c.process.rss_mb() for c in comps}

    # The node table comes from the first live node's gossip view, as nodetool's does.
    view = None
    for node in topo.nodes:
        if pids[node.name] is None:
            continue
        with contextlib.suppress(jolokia.JolokiaError, ConfigError):
            view = jolokia.ring_view(node, stack.jolokia_login())
            break
    dc_of = {n.address: n.dc for n in topo.nodes}
    owns = jolokia.dc_ownership(view.tokens, dc_of) if view else {}
    nodes = []
    for n in topo.nodes:
        # A node whose process we know is gone is down, whatever gossip has noticed so far.
        state = view.state(n.address) if view and pids[n.name] else "DN"
        nodes.append(
            NodeStatus(
                name=n.name,
                dc=n.dc,
                rack=n.rack,
                address=n.address,
                state=state,
                load_bytes=view.load_bytes.get(n.address) if view else None,
                owns=owns.get(n.address) if view else None,
                token=n.token,
                pid=pids[n.name],
                rss_mb=rss[n.name],
            )
        )

    services = []
    for c in comps:
        if c.kind == "cassandra":
            continue
        state = "down" if pids[c.name] is None else "up" if c.probe() is None else "not ready"
        services.append(ServiceStatus(c.name, c.kind, c.endpoint, state, pids[c.name], rss[c.name]))
    supervised = stack.services.status(_consumer_lag(topo, stack))
    return StackStatus(
        nodes, services, endpoints(topo), view.observer if view else None, supervised
    )


def _consumer_lag(topology: Topology, stack: LocalStack) -> dict[str, int | None]:
    """Per region with supervised consumers, what its group has not committed (None if Kafka
    does not answer)."""
    lag: dict[str, int | None] = {}
    topics = Topics.from_settings()
    for region in {s.region for s in stack.services.specs() if s.region}:
        try:
            lag[region] = region_lag(topology, topics, region, timeout=5.0)
        except Exception:  # KafkaException: the broker is down; the table says so elsewhere
            lag[region] = None
    return lag
