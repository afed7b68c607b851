"""What the cluster looks like, in one place.

The local stack starts exactly this; the migrations render the keyspace replication from it; the
consumers pick their local DC from it; the repair and balance checks compare the live cluster
against it. Change the shape of the platform here and nowhere else.

Address plan (all loopback, so nothing ever listens beyond this machine):

* Cassandra node ``n`` of data center ``d`` (``d`` = 1, 2, 3) listens on ``127.0.d.n``: storage
  7000, CQL 9042, JMX exporter 9500, Jolokia 8778 all on that address; its JMX port is
  ``7000 + 100*d + n`` on 127.0.0.1 (Cassandra binds local JMX to loopback only, so the port is
  what tells nodes apart, as in ccm).
* Kafka broker ``i`` listens on ``127.0.10.i``: clients 9092, controller 9093, JMX exporter 9404.
* Prometheus 127.0.0.1:9090, Alertmanager 127.0.0.1:9093, statsd_exporter 127.0.0.1:9125 (UDP)
  and :9102 (metrics).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from retail.errors import ConfigError


@dataclass(frozen=True)
class Region:
    """A data center of the platform and the retail region it serves."""

    dc: str
    region: str
    index: int  # 1-based; the third octet of its nodes' addresses


REGIONS: tuple[Region, ...] = (
    Region("eu-west", "Europe", 1),
    Region("us-east", "America", 2),
    Region("ap-southeast", "Asia-Pacific", 3),
)

# Replication factor per DC is min(nodes in the DC, MAX_RF): three copies in each region once a
# region has three nodes, and never more copies than nodes (writes would be unavailable).
MAX_RF = 3
MAX_RACKS = 3
MAX_NODES_PER_DC = 9
MAX_BROKERS = 3

CLUSTER_NAME = "retail"
CQL_PORT = 9042
STORAGE_PORT = 7000
CASSANDRA_EXPORTER_PORT = 9500
JOLOKIA_PORT = 8778
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
KAFKA_EXPORTER_PORT = 9404


@dataclass(frozen=True)
class Profile:
    """A named stack size."""

    nodes_per_dc: int
    brokers: int
    heap_mb: int
    description: str
    internode_tls: bool = False


PROFILES: dict[str, Profile] = {
    "test": Profile(1, 1, 512, "one Cassandra node per DC and one Kafka broker: what CI runs"),
    "demo": Profile(
        2,
        3,
        512,
        "two Cassandra nodes per DC (RF 2 in each), three Kafka brokers (RF 3, two in sync), "
        "TLS between the nodes",
        internode_tls=True,
    ),
}


@dataclass(frozen=True)
class CassandraNode:
    name: str
    dc: str
    rack: str
    address: str
    token: int
    jmx_port: int
    is_seed: bool
    # A node added to a running DC (`retail stack add-node`): it bootstraps, streaming the
    # ranges its token takes over, where the nodes of a new cluster start with nothing to fetch.
    auto_bootstrap: bool = False
    cql_port: int = CQL_PORT
    storage_port: int = STORAGE_PORT
    exporter_port: int = CASSANDRA_EXPORTER_PORT
    jolokia_port: int = JOLOKIA_PORT


@dataclass(frozen=True)
class DataCenter:
    name: str
    region: str
    replication_factor: int
    nodes: tuple[CassandraNode, ...]

    @property
    def contact_points(self) -> list[str]:
        return [n.address for n in self.nodes]


@dataclass(frozen=True)
class KafkaBroker:
    node_id: int
    address: str
    port: int = KAFKA_PORT
    controller_port: int = KAFKA_CONTROLLER_PORT
    exporter_port: int = KAFKA_EXPORTER_PORT

    @property
    def name(self) -> str:
        return f"kafka-{self.node_id}"

    @property
    def bootstrap(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Topology:
    """The whole platform's shape: Cassandra DCs and nodes, Kafka brokers, monitoring endpoints."""

    datacenters: tuple[DataCenter, ...]
    brokers: tuple[KafkaBroker, ...]
    heap_mb: int = 512
    cluster_name: str = CLUSTER_NAME
    # Node-to-node traffic over TLS (clients always use TLS): the demo profile's choice; the
    # test profile saves the handshakes.
    internode_tls: bool = False
    prometheus: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 9090))
    alertmanager: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 9093))
    statsd: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 9125))
    statsd_exporter: Endpoint = field(default_factory=lambda: Endpoint("127.0.0.1", 9102))

    @property
    def nodes(self) -> list[CassandraNode]:
        return [n for dc in self.datacenters for n in dc.nodes]

    @property
    def seeds(self) -> list[CassandraNode]:
        return [n for n in self.nodes if n.is_seed]

    def datacenter(self, name: str) -> DataCenter:
        for dc in self.datacenters:
            if dc.name == name:
                return dc
        known = ", ".join(d.name for d in self.datacenters)
        raise ConfigError(f"unknown data center {name!r}; the topology has: {known}")

    def node(self, name: str) -> CassandraNode:
        """A node by name (``eu-west-1``) or address (``127.0.1.1``)."""
        for n in self.nodes:
            if name in (n.name, n.address):
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"unknown Cassandra node {name!r}; the topology has: {known}")

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    def replication(self) -> dict[str, Any]:
        """The NetworkTopologyStrategy replication map for a keyspace."""
        return {"class": "NetworkTopologyStrategy"} | {
            dc.name: dc.replication_factor for dc in self.datacenters
        }

    def replication_cql(self) -> str:
        """The replication map as a CQL literal: ``{'class': 'NetworkTopologyStrategy', ...}``."""
        return "{" + ", ".join(f"'{k}': {v!r}" for k, v in self.replication().items()) + "}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Topology:
        raw = json.loads(text)
        return cls(
            datacenters=tuple(
                DataCenter(
                    name=d["name"],
                    region=d["region"],
                    replication_factor=d["replication_factor"],
                    nodes=tuple(CassandraNode(**n) for n in d["nodes"]),
                )
                for d in raw["datacenters"]
            ),
            brokers=tuple(KafkaBroker(**b) for b in raw["brokers"]),
            heap_mb=raw["heap_mb"],
            cluster_name=raw["cluster_name"],
            internode_tls=raw.get("internode_tls", False),
            prometheus=Endpoint(**raw["prometheus"]),
            alertmanager=Endpoint(**raw["alertmanager"]),
            statsd=Endpoint(**raw["statsd"]),
            statsd_exporter=Endpoint(**raw["statsd_exporter"]),
        )


def balanced_tokens(count: int, dc_offset: int) -> list[int]:
    """Murmur3 tokens spread evenly around the ring for one DC's ``count`` nodes.

    Each DC gets the same even spacing, shifted by a small per-DC offset because two nodes of one
    cluster may not own the same token (the scheme ccm uses for multi-DC clusters). With one
    token per node and these values, every node owns an equal share of its DC's replicas and
    all nodes can start at once: no vnode allocation, no bootstrap streaming.
    """
    return [i * (2**64 // count) - 2**63 + 100 * dc_offset for i in range(count)]


RING = 2**64


def joining_token(dc: DataCenter, taken: Collection[int] = ()) -> int:
    """The token of a node joining ``dc``: the middle of the widest gap between the DC's tokens
    (the first such gap in ring order on a tie), so the node takes half of the busiest range.

    From one node to two this is :func:`balanced_tokens`'s second token, an exactly even DC;
    from two to three it leaves 50/25/25 (evening that out would move every node's token). A
    token another node of the cluster holds (``taken``) is stepped past.
    """
    tokens = sorted(n.token for n in dc.nodes)
    if not tokens:
        raise ConfigError(f"{dc.name} has no nodes to join; start the stack first")
    # The gap ending at tokens[i] starts at tokens[i - 1] (for i = 0, the last token).
    spans = [((tokens[i] - tokens[i - 1]) % RING or RING, i) for i in range(len(tokens))]
    span, i = max(spans, key=lambda s: (s[0], -((tokens[s[1] - 1] + 2**63) % RING)))
    token = (tokens[i - 1] + span // 2 + 2**63) % RING - 2**63
    while token in taken:
        token = (token + 1 + 2**63) % RING - 2**63
    return token


def with_node_added(topology: Topology, dc_name: str) -> tuple[Topology, CassandraNode]:
    """``topology`` with one more node in ``dc_name`` (the lowest free number, its address and
    JMX port by the address plan, a rack in turn, :func:`joining_token`), and that node.

    The DC's replication factor stays: raising it is a decision of its own (ALTER KEYSPACE,
    then a repair), and a join keeps every replica where it is until the cleanup.
    """
    dc = topology.datacenter(dc_name)
    if len(dc.nodes) >= MAX_NODES_PER_DC:
        raise ConfigError(f"{dc_name} has {len(dc.nodes)} nodes, the most a DC may have here")
    region = next(r for r in REGIONS if r.dc == dc_name)
    numbers = {int(n.name.rsplit("-", 1)[1]) for n in dc.nodes}
    i = min(set(range(1, MAX_NODES_PER_DC + 1)) - numbers)
    racks = min(len(dc.nodes) + 1, MAX_RACKS)
    node = CassandraNode(
        name=f"{dc_name}-{i}",
        dc=dc_name,
        rack=f"rack{(i - 1) % racks + 1}",
        address=f"127.0.{region.index}.{i}",
        token=joining_token(dc, {n.token for n in topology.nodes}),
        jmx_port=7000 + 100 * region.index + i,
        is_seed=False,
        auto_bootstrap=True,
    )
    nodes = tuple(sorted((*dc.nodes, node), key=lambda n: int(n.name.rsplit("-", 1)[1])))
    return _replace_dc(topology, replace(dc, nodes=nodes)), node


def without_node(topology: Topology, name: str) -> Topology:
    """``topology`` without node ``name``; refuses what would lose data or the DC's seed."""
    node = topology.node(name)
    dc = topology.datacenter(node.dc)
    rest = tuple(n for n in dc.nodes if n != node)
    if not rest:
        raise ConfigError(
            f"{name} is the last node of {dc.name}: removing it would lose the DC's data"
        )
    if len(rest) < dc.replication_factor:
        raise ConfigError(
            f"{dc.name} keeps {dc.replication_factor} copies of every row (replication factor "
            f"{dc.replication_factor}); without {name} it would have {len(rest)} nodes to hold "
            "them. Lower the DC's replication factor first, or add a node before removing this one"
        )
    if node.is_seed:
        raise ConfigError(
            f"{name} is {dc.name}'s seed: the other nodes and every new one find the cluster "
            "through it. Remove another node of the DC"
        )
    return _replace_dc(topology, replace(dc, nodes=rest))


def as_new_cluster(topology: Topology) -> Topology:
    """``topology`` started from nothing: no node bootstraps (each has its token already), as
    for a cluster :func:`build_topology` made. A ring grown by :func:`with_node_added` keeps its
    shape and tokens."""
    dcs = tuple(
        replace(dc, nodes=tuple(replace(n, auto_bootstrap=False) for n in dc.nodes))
        for dc in topology.datacenters
    )
    return replace(topology, datacenters=dcs)


def _replace_dc(topology: Topology, dc: DataCenter) -> Topology:
    dcs = tuple(dc if d.name == dc.name else d for d in topology.datacenters)
    return replace(topology, datacenters=dcs)


def parse_node_counts(spec: str | int) -> dict[str, int]:
    """``2`` means two nodes in every DC; ``eu-west=2,us-east=1,ap-southeast=1`` sets each DC."""
    names = [r.dc for r in REGIONS]
    text = str(spec).strip()
    if text.isdigit():
        counts = dict.fromkeys(names, int(text))
    else:
        counts = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            dc, sep, value = part.partition("=")
            if not sep or not value.strip().isdigit():
                raise ConfigError(
                    f"bad node count {part!r}: expected DC=COUNT, for example eu-west=2"
                )
            if dc.strip() not in names:
                raise ConfigError(f"unknown data center {dc.strip()!r}; expected one of {names}")
            counts[dc.strip()] = int(value)
        missing = [n for n in names if n not in counts]
        if missing:
            raise ConfigError(f"node counts must name every DC; missing: {', '.join(missing)}")
    for dc, n in counts.items():
        if not 1 <= n <= MAX_NODES_PER_DC:
            raise ConfigError(f"{dc}: {n} nodes; each DC needs 1 to {MAX_NODES_PER_DC} nodes")
    return counts


def build_topology(
    nodes_per_dc: dict[str, int] | int,
    brokers: int = 1,
    heap_mb: int = 512,
    internode_tls: bool = False,
) -> Topology:
    """The topology for a node count per DC (one number for all DCs, or one per DC)."""
    counts = parse_node_counts(nodes_per_dc) if isinstance(nodes_per_dc, int) else nodes_per_dc
    if not 1 <= brokers <= MAX_BROKERS:
        raise ConfigError(f"{brokers} Kafka brokers: choose 1 (default) or up to {MAX_BROKERS}")
    dcs = []
    for offset, region in enumerate(REGIONS):
        count = counts[region.dc]
        racks = min(count, MAX_RACKS)
        nodes = tuple(
            CassandraNode(
                name=f"{region.dc}-{i}",
                dc=region.dc,
                rack=f"rack{(i - 1) % racks + 1}",
                address=f"127.0.{region.index}.{i}",
                token=token,
                jmx_port=7000 + 100 * region.index + i,
                is_seed=i == 1,  # one seed per DC: gossip reaches every DC from the start
            )
            for i, token in enumerate(balanced_tokens(count, offset), start=1)
        )
        dcs.append(DataCenter(region.dc, region.region, min(count, MAX_RF), nodes))
    kafka = tuple(KafkaBroker(node_id=i, address=f"127.0.10.{i}") for i in range(1, brokers + 1))
    return Topology(
        datacenters=tuple(dcs), brokers=kafka, heap_mb=heap_mb, internode_tls=internode_tls
    )


def profile_topology(
    profile: str, nodes_per_dc: str | None = None, brokers: int | None = None
) -> Topology:
    """The topology of a named profile, with optional overrides from the command line."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    p = PROFILES[profile]
    counts = parse_node_counts(nodes_per_dc if nodes_per_dc is not None else p.nodes_per_dc)
    return build_topology(
        counts, brokers if brokers is not None else p.brokers, p.heap_mb, p.internode_tls
    )


def current_topology(path: Path | None = None) -> Topology:
    """The topology clients use, read from ``path``, by default the file the settings name
    (``RETAIL_TOPOLOGY_FILE``; unset, the one ``retail stack up`` writes for the local stack)."""
    from retail.settings import get_settings

    path = path or get_settings().topology_path
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"no topology at {path}: start the local stack (`retail stack up`), or set "
            "RETAIL_TOPOLOGY_FILE to the topology JSON of the platform to use "
            "(`Topology.to_json()`, e.g. docker/consumer/topology.json)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the topology at {path}: {exc}") from exc
    try:
        return Topology.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a topology (Topology.to_json() output expected): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
