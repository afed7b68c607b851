"""Replication drift: each keyspace's live replication against what the topology says.

The topology (``retail/topology.py``) is the desired state: ``NetworkTopologyStrategy`` with one
replication factor per DC. A keyspace whose live replication differs (a DC missing, another RF,
another strategy) has drifted. Fixing it is an ``ALTER KEYSPACE`` rendered from the topology
alone (never from anything a person typed), followed by a full repair of the keyspace: a new
replica owns data only after repair has streamed it there.

A fix that would take copies away is refused unless the caller allows it explicitly
(:func:`decreases`): removing a DC from a keyspace drops every replica there at once (its
clients then fail, or read nothing, until the keyspace is put back and repaired), and lowering a
DC's factor drops replicas and the consistency levels they made possible. Both may be meant (a
DC retired from the topology), but never as a side effect of a drift check.

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

from retail.cassandra import wait_for_schema_agreement
from retail.errors import RetailError
from retail.topology import Topology

log = logging.getLogger(__name__)

_NTS = "NetworkTopologyStrategy"
_SIMPLE = "SimpleStrategy"

SYSTEM_KEYSPACES = ("system_auth", "system_distributed")
_STRATEGY_PREFIX = "org.apache.cassandra.locator."


class ReplicationError(RetailError):
    """A keyspace's replication cannot be checked or fixed; the message says what to do."""


class ReplicationDecreaseRefused(ReplicationError):
    """A fix would remove a DC or lower a replication factor, and nobody allowed that."""


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


def _factor(value: str) -> int:
    """``'3'`` or a transient ``'3/1'``: the number of full and transient replicas."""
    return int(value.split("/")[0])


def _factors(replication_map: Mapping[str, str], dcs: Iterable[str]) -> dict[str, int]:
    """Replication factor per DC; NetworkTopologyStrategy's ``replication_factor`` shorthand
    gives every DC (of ``dcs``) not named that factor, as Cassandra expands it."""
    out = {
        k: _factor(v)
        for k, v in replication_map.items()
        if k not in ("class", "replication_factor")
    }
    if "replication_factor" in replication_map:
        for dc in dcs:
            out.setdefault(dc, _factor(replication_map["replication_factor"]))
    return out


def replication_decreases(before: Mapping[str, str] | None, after: Mapping[str, str]) -> list[str]:
    """What the change from ``before`` to ``after`` (normalized maps) takes away, one phrase
    each: a DC removed, a replication factor lowered, or fewer replicas in all across a change
    of strategy. Empty for a new keyspace or a change that keeps or adds replicas."""
    if before is None:
        return []
    old_class, new_class = before.get("class"), after.get("class")
    if old_class == new_class == _NTS:
        old = _factors(before, ())
        new = _factors(after, old)
        found = []
        for dc in sorted(old):
            if new.get(dc, 0) < old[dc]:
                gone = " (DC removed)" if new.get(dc, 0) == 0 else ""
                found.append(f"{dc}: RF {old[dc]} -> {new.get(dc, 0)}{gone}")
        return found
    if old_class == _SIMPLE and new_class in (_SIMPLE, _NTS):
        old_total = _factor(before.get("replication_factor", "0"))
        new_total = (
            sum(_factors(after, ()).values())
            if new_class == _NTS
            else _factor(after.get("replication_factor", "0"))
        )
        if new_total < old_total:
            return [f"{new_total} replicas in all, {old_total} before"]
        return []
    return [f"strategy {old_class} -> {new_class}: placement per DC cannot be compared"]


def decreases(drift: Drift) -> list[str]:
    """What fixing ``drift`` would take away (empty: nothing), by :func:`replication_decreases`:
    the same rule the migrations apply to the keyspace changes they send."""
    if not drift.drifted:
        return []
    return replication_decreases(drift.live, drift.wanted)


def render(replication: Mapping[str, str] | None, missing: str = "(no keyspace)") -> str:
    """A replication map for a log line; ``None`` (a missing keyspace) is ``missing``."""
    return missing if replication is None else _render(replication)


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


def refuse_decreases(drifts: Iterable[Drift], allow_decrease: bool = False) -> None:
    """Raise :class:`ReplicationDecreaseRefused` naming every keyspace whose fix would remove a
    DC or lower a factor, unless ``allow_decrease``. Check every keyspace before altering any, so
    that a refusal leaves the cluster as it was."""
    if allow_decrease:
        return
    refused = {d.keyspace: decreases(d) for d in drifts if d.fixable}
    refused = {ks: what for ks, what in refused.items() if what}
    if refused:
        raise ReplicationDecreaseRefused(
            "refusing to alter replication, nothing was altered: fixing the drift would "
            + "; ".join(f"{ks}: {', '.join(what)}" for ks, what in refused.items())
            + ". The replicas removed stop serving reads and their data there is dropped from "
            "the replication. If the topology is right (a DC retired, a factor lowered on "
            "purpose), run again with allow_replication_decrease=true; if not, correct the "
            "topology (the retail_cassandra connection) instead"
        )


def alter_statement(
    drift: Drift, topology: Topology, allowed: Iterable[str], *, allow_decrease: bool = False
) -> str:
    """The ``ALTER KEYSPACE`` that brings ``drift.keyspace`` back to the topology.

    The keyspace name must be one of ``allowed`` (the platform keyspaces, themselves from the
    migration files and a constant), and the replication map comes from the topology only. A
    change that removes a DC or lowers a factor is refused unless ``allow_decrease``.
    """
    if drift.keyspace not in set(allowed):
        raise ReplicationError(
            f"refusing to alter keyspace {drift.keyspace!r}: not one of the platform keyspaces"
        )
    if not drift.fixable:
        raise ReplicationError(
            f"{drift.keyspace}: nothing an ALTER can fix ({'; '.join(drift.differences())})"
        )
    refuse_decreases([drift], allow_decrease)
    return f'ALTER KEYSPACE "{drift.keyspace}" WITH replication = {topology.replication_cql()}'


def fix(
    cluster: Cluster,
    session: Session,
    drift: Drift,
    topology: Topology,
    allowed: Iterable[str],
    *,
    allow_decrease: bool = False,
) -> str:
    """Alter the keyspace to the topology's replication and wait for schema agreement; returns
    the statement. The caller must then repair the keyspace (see the module docstring). A
    change that removes a DC or lowers a factor is refused unless ``allow_decrease``."""
    statement = alter_statement(drift, topology, allowed, allow_decrease=allow_decrease)
    log.info("fixing replication drift of %s: %s", drift.keyspace, statement)
    session.execute(statement)
    # The driver's max_schema_agreement_wait (10 s by default): what this step always waited.
    wait_for_schema_agreement(
        cluster,
        f"altering {drift.keyspace}'s replication",
        timeout=None,
        then=", then rerun",
        error=ReplicationError,
    )
    return statement


def live_replication(session: Session, keyspace: str) -> dict[str, str] | None:
    """One keyspace's replication as the schema has it now (normalized), ``None`` if missing."""
    row = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", [keyspace]
    ).one()
    return None if row is None else normalize(dict(row.replication))
