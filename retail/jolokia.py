"""JMX over HTTP: each Cassandra node's Jolokia agent, and what the platform reads through it
(the ring as a node sees it, each node's share of its DC). The local stack's readiness and
status, the repair DAG and the balance DAG all go through here: one client (:class:`Jolokia`),
one error type.

Every agent asks for a login (basic authentication, user ``monitor``) and allows only the reads
and operations the platform uses (``stack/jolokia.py`` renders that policy). The local stack
reads the login from :mod:`retail.credentials`, the DAGs from the ``retail_cassandra``
connection's extra (``jolokia``: ``{"login": ..., "password": ...}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from retail.credentials import Login
from retail.errors import RetailError
from retail.topology import CassandraNode


class JolokiaError(RetailError):
    """A node's Jolokia agent did not answer, or refused the request (the node is down or
    still starting, or the MBean operation failed)."""


STORAGE_SERVICE = "org.apache.cassandra.db:type=StorageService"
# What ring_view reads of StorageService (the access policy allows exactly these).
RING_ATTRIBUTES = (
    "LiveNodesWithPort",
    "UnreachableNodesWithPort",
    "JoiningNodesWithPort",
    "LeavingNodesWithPort",
    "MovingNodesWithPort",
    "LoadMapWithPort",
    "TokenToEndpointWithPortMap",
)
# The largest partition of each table of a keyspace: a pattern read (scope=* is every table).
MAX_PARTITION_SIZE = (
    "org.apache.cassandra.metrics:type=Table,keyspace={keyspace},scope=*,name=MaxPartitionSize"
)


def request(client: httpx.Client, node: CassandraNode, body: dict[str, Any], what: str) -> Any:
    """One Jolokia request (read, exec or write) to ``node``; returns its value."""
    url = f"http://{node.address}:{node.jolokia_port}/jolokia/"
    try:
        resp = client.post(url, json=body)
        if resp.status_code in (401, 403):
            raise JolokiaError(
                f"{node.name}: its Jolokia agent at {url} refused the login "
                f"(HTTP {resp.status_code}): the local stack's is jolokia/monitor in "
                "credentials.json (retail.credentials); a DAG's is the 'jolokia' entry of the "
                "retail_cassandra connection's extra (`retail airflow-env`)"
            )
        data = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise JolokiaError(
            f"{node.name}: its Jolokia agent at {url} did not answer ({exc}); is the node up? "
            "(`retail stack status`)"
        ) from exc
    if data.get("status") != 200:
        # A policy refusal is status 403 with a SecurityException: say so plainly.
        if data.get("status") == 403:
            raise JolokiaError(
                f"{node.name}: {what} refused by the agent's access policy "
                f"(stack/jolokia.py ACCESS): {data.get('error')}"
            )
        raise JolokiaError(f"{node.name}: {what} failed: {data.get('error')}")
    return data.get("value")


class Jolokia:
    """The nodes' Jolokia agents over one HTTP client (one POST per operation), logged in as
    ``login`` (basic authentication); every failure is a :class:`JolokiaError` naming the node
    and what to check."""

    def __init__(self, timeout: float = 10.0, login: Login | None = None) -> None:
        auth = (login.username, login.password.get_secret_value()) if login else None
        self.client = httpx.Client(timeout=timeout, auth=auth)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Jolokia:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, node: CassandraNode, mbean: str, attributes: list[str]) -> dict[str, Any]:
        """MBean attributes of ``node``."""
        body = {"type": "read", "mbean": mbean, "attribute": attributes}
        return request(self.client, node, body, f"Jolokia read of {mbean}")

    def exec(self, node: CassandraNode, mbean: str, operation: str, *arguments: Any) -> Any:
        """Invoke an MBean operation on ``node``; returns its result."""
        body = {"type": "exec", "mbean": mbean, "operation": operation, "arguments": arguments}
        return request(self.client, node, body, operation)

    def write(self, node: CassandraNode, mbean: str, attribute: str, value: Any) -> Any:
        """Set an MBean attribute on ``node``."""
        body = {"type": "write", "mbean": mbean, "attribute": attribute, "value": value}
        return request(self.client, node, body, f"write of {attribute}")


def jolokia_read(
    node: CassandraNode,
    mbean: str,
    attributes: list[str],
    timeout: float = 3.0,
    login: Login | None = None,
) -> dict[str, Any]:
    """Read MBean attributes of a node over Jolokia's HTTP/JSON protocol (a client of its own:
    for one-off reads)."""
    with Jolokia(timeout, login) as client:
        return client.read(node, mbean, attributes)


def endpoint_address(endpoint: str) -> str:
    """``/127.0.1.1:7000`` or ``127.0.1.1:7000`` -> ``127.0.1.1``."""
    return endpoint.lstrip("/").rsplit(":", 1)[0]


@dataclass(frozen=True)
class RingView:
    """What one node knows about the ring: who is up, joining or gone, loads, tokens."""

    observer: str
    up: frozenset[str]
    down: frozenset[str]
    joining: frozenset[str]
    leaving: frozenset[str]
    moving: frozenset[str]
    load_bytes: dict[str, float]
    tokens: dict[str, list[int]]

    def state(self, address: str) -> str:
        """Two letters as nodetool prints them: U/D then N(ormal), J, L or M."""
        status = "U" if address in self.up else "D"
        if address in self.joining:
            return status + "J"
        if address in self.leaving:
            return status + "L"
        if address in self.moving:
            return status + "M"
        return status + "N"


def _parse_load(text: str) -> float:
    units = {"bytes": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
    value, _, unit = text.strip().partition(" ")
    try:
        return float(value) * units.get(unit, 1)
    except ValueError:
        return 0.0


def ring_view(node: CassandraNode, login: Login | None = None) -> RingView:
    """The ring as ``node`` sees it (raises :class:`JolokiaError` if it does not answer)."""
    ss = jolokia_read(node, STORAGE_SERVICE, list(RING_ATTRIBUTES), login=login)
    tokens: dict[str, list[int]] = {}
    for token, endpoint in (ss["TokenToEndpointWithPortMap"] or {}).items():
        tokens.setdefault(endpoint_address(endpoint), []).append(int(token))

    def addrs(key: str) -> frozenset[str]:
        return frozenset(endpoint_address(e) for e in ss.get(key) or [])

    return RingView(
        observer=node.address,
        up=addrs("LiveNodesWithPort"),
        down=addrs("UnreachableNodesWithPort"),
        joining=addrs("JoiningNodesWithPort"),
        leaving=addrs("LeavingNodesWithPort"),
        moving=addrs("MovingNodesWithPort"),
        load_bytes={
            endpoint_address(e): _parse_load(v) for e, v in (ss["LoadMapWithPort"] or {}).items()
        },
        tokens=tokens,
    )


def dc_ownership(tokens_by_node: dict[str, list[int]], dc_of: dict[str, str]) -> dict[str, float]:
    """Each node's share of its own DC's token ring (0..1).

    With NetworkTopologyStrategy every DC holds a full copy of the data, so the balance that
    matters is within a DC: a node owns the range from the previous token of its DC up to its
    own. Nodes with no known tokens get 0.
    """
    ring = 2**64
    shares: dict[str, float] = dict.fromkeys(dc_of, 0.0)
    for dc in set(dc_of.values()):
        owned = sorted(
            (t, addr) for addr, ts in tokens_by_node.items() if dc_of.get(addr) == dc for t in ts
        )
        for i, (token, addr) in enumerate(owned):
            previous = owned[i - 1][0]
            span = (token - previous) % ring or ring  # a lone token owns the whole ring
            shares[addr] += span / ring
    return shares
