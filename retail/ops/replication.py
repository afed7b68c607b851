"""Replication drift: each keyspace's live replication against what the topology says.

The topology (``retail/topology.py``) is the desired state: ``NetworkTopologyStrategy`` with one
replication factor per DC. A keyspace whose live replication differs (a DC missing, another RF,
another strategy) has drifted. Fixing it is an ``ALTER KEYSPACE`` rendered from the topology
alone (never from anything a person typed), followed by a full repair of the keyspace: a new
replica owns data only after repair has streamed it there.

Which keyspaces follow the topology (:func:`platform_keyspaces`):

* the platform's own (``retail``, ``retail_ops``: whatever the migrations create);
* ``system_auth``: Cassandra creates it with ``SimpleStrategy`` RF 1, so once authentication is
  on (DESIGN: "secure by default, soon") losing the one node holding a role would lock everybody
  out, and a DC cut off from that node could not log in. It belongs in every DC;
* ``system_distributed``: holds the materialized views' build status, which the views DAG reads
  in every DC, and Cassandra's own repair history; ``SimpleStrategy`` places it without regard
  to DCs.

``system_traces`` is left alone: query traces are disposable diagnostics, losing them loses
nothing, and replicating them into every DC only adds write traffic. The node-local keyspaces
(``system``, ``system_schema``, ``system_views``, ``system_virtual_schema``) use
``LocalStrategy`` and cannot be altered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cassandra.cluster import Cluster, Session

from retail.errors import RetailError
from retail.topology import Topology

log = logging.getLogger(__name__)

SYSTEM_KEYSPACES = ("system_auth", "system_distributed")
_STRATEGY_PREFIX = "org.apache.cassandra.locator."


class ReplicationError(RetailError):
    """A keyspace's replication cannot be checked or fixed; the message says what to do."""


def platform_keyspaces(catalog_keyspaces: Iterable[str]) -> tuple[str, ...]:
    """The keyspaces whose replication must follow the topology, platform ones first."""
    own = tuple(catalog_keyspaces)
    return own + tuple(k for k in SYSTEM_KEYSPACES if k not in own)


def normalize(replication: Mapping[str, Any]) -> dict[str, str]:
    """A replication map in one comparable form: the strategy's short class name, factors as
    strings, and DCs with factor 0 left out (Cassandra treats a missing DC as 0)."""
    out: dict[str, str] = {}
    for key, value in replication.items():
        if key == "class":
            out["class"] = str(value).removeprefix(_STRATEGY_PREFIX)
        elif str(value) != "0":
            out[key] = str(value)
    return out


@dataclass(frozen=True)
class Drift:
    """One keyspace's live replication (``None``: the keyspace does not exist) and the wanted."""

    keyspace: str
    live: dict[str, str] | None
    wanted: dict[str, str]

    @property
    def drifted(self) -> bool:
        return self.live != self.wanted

    @property
    def fixable(self) -> bool:
        """A missing keyspace is the migrations' job, not an ALTER's."""
        return self.drifted and self.live is not None

    def differences(self) -> list[str]:
        """What differs, one phrase per strategy or DC: ``us-east: RF 0 live, 1 wanted``."""
        if self.live is None:
            return ["keyspace does not exist (run the schema_migrations DAG)"]
        if self.live.get("class") != self.wanted.get("class"):
            return [f"{_render(self.live)} live, {_render(self.wanted)} wanted"]
        found = []
        keys = sorted((set(self.live) | set(self.wanted)) - {"class"})
        for key in keys:
            have, want = self.live.get(key, "0"), self.wanted.get(key, "0")
            if have != want:
                found.append(f"{key}: RF {have} live, {want} wanted")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift": self.drifted,
            "live": self.live,
            "wanted": self.wanted,
            "differences": self.differences() if self.drifted else [],
        }


def _render(replication: Mapping[str, str]) -> str:
    """``SimpleStrategy {replication_factor: 1}``."""
    options = ", ".join(f"{k}: {v}" for k, v in sorted(replication.items()) if k != "class")
    return f"{replication.get('class')} {{{options}}}"


def compare(keyspace: str, live: Mapping[str, Any] | None, topology: Topology) -> Drift:
    """The drift of ``keyspace`` given its live replication map (``None`` if it is missing)."""
    return Drift(
        keyspace,
        None if live is None else normalize(live),
        normalize(topology.replication()),
    )


def check(session: Session, topology: Topology, keyspaces: Iterable[str]) -> list[Drift]:
    """Read every keyspace's replication from ``system_schema.keyspaces`` and compare."""
    live = {
        row.keyspace_name: dict(row.replication)
        for row in session.execute("SELECT keyspace_name, replication FROM system_schema.keyspaces")
    }
    return [compare(ks, live.get(ks), topology) for ks in keyspaces]


def alter_statement(drift: Drift, topology: Topology, allowed: Iterable[str]) -> str:
    """The ``ALTER KEYSPACE`` that brings ``drift.keyspace`` back to the topology.

    The keyspace name must be one of ``allowed`` (the platform keyspaces, themselves from the
    migration files and a constant), and the replication map comes from the topology only.
    """
    if drift.keyspace not in set(allowed):
        raise ReplicationError(
            f"refusing to alter keyspace {drift.keyspace!r}: not one of the platform keyspaces"
        )
    if not drift.fixable:
        raise ReplicationError(
            f"{drift.keyspace}: nothing an ALTER can fix ({'; '.join(drift.differences())})"
        )
    return f'ALTER KEYSPACE "{drift.keyspace}" WITH replication = {topology.replication_cql()}'


def fix(
    cluster: Cluster,
    session: Session,
    drift: Drift,
    topology: Topology,
    allowed: Iterable[str],
) -> str:
    """Alter the keyspace to the topology's replication and wait for schema agreement; returns
    the statement. The caller must then repair the keyspace (see the module docstring)."""
    statement = alter_statement(drift, topology, allowed)
    log.info("fixing replication drift of %s: %s", drift.keyspace, statement)
    session.execute(statement)
    if not cluster.control_connection.wait_for_schema_agreement():
        raise ReplicationError(
            f"{drift.keyspace}: the nodes did not agree on the schema after the ALTER; check that "
            "every node is up (`retail stack status`) and rerun"
        )
    return statement
