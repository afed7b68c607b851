"""Materialized views: an audit against the base table, and a rebuild from the migration's DDL.

Consistency of the audit: every read (counts, samples, build status) is made at ``ALL``. A
view is written by the base replicas asynchronously, the consumers write at ``LOCAL_QUORUM`` in
their own DC, and the other DCs catch up later: any level that asks fewer than every replica
can report a row as missing that is only not there *yet* on the replicas it asked, or miss a
stale one. ``ALL`` answers from every replica (the newest cell wins), so what it reports is the
cluster's true state; the price is that the audit needs every node up, and says so (Unavailable)
instead of answering wrong.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster, Session
from cassandra.query import SimpleStatement

from retail.catalog import View
from retail.errors import RetailError
from retail.topology import Topology

log = logging.getLogger(__name__)

MIN_TOKEN, MAX_TOKEN = -(2**63), 2**63 - 1  # Murmur3Partitioner
BUILT = "SUCCESS"
EXAMPLES = 5

_NOT_NULL = re.compile(r"(\w+)\s+IS\s+NOT\s+NULL", re.IGNORECASE)


class ViewError(RetailError):
    """A view could not be audited or rebuilt (the message says what to do)."""


@dataclass
class ViewAudit:
    """A view compared with its base table, and its build status on every node."""

    view: str
    base_table: str
    exists: bool
    base_rows: int  # base rows the view should hold (its key columns not null)
    view_rows: int
    sampled_base: int = 0
    sampled_view: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)  # sampled base rows not in view
    differing: list[dict[str, Any]] = field(default_factory=list)  # in both, other values
    orphans: list[dict[str, Any]] = field(default_factory=list)  # sampled view rows not in base
    build_status: dict[str, str] = field(default_factory=dict)  # node name -> status

    @property
    def not_built(self) -> list[str]:
        return sorted(n for n, s in self.build_status.items() if s != BUILT)

    @property
    def missing_rows(self) -> int:
        """Rows the view lacks: the count difference, or the sampled misses if more."""
        return max(self.base_rows - self.view_rows, len(self.missing), 0)

    @property
    def consistent(self) -> bool:
        return (
            self.exists
            and self.base_rows == self.view_rows
            and not (self.missing or self.differing or self.orphans or self.not_built)
        )

    def summary(self) -> str:
        if not self.exists:
            return f"{self.view}: does not exist ({self.base_rows} base rows it should hold)"
        state = "consistent" if self.consistent else "INCONSISTENT"
        return (
            f"{self.view}: {state}; {self.base_rows} base rows, {self.view_rows} view rows; "
            f"samples: {len(self.missing)}/{self.sampled_base} base rows missing, "
            f"{len(self.differing)} differing, {len(self.orphans)}/{self.sampled_view} view "
            f"rows without a base row; not built on: {', '.join(self.not_built) or 'none'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "base_table": self.base_table,
            "exists": self.exists,
            "consistent": self.consistent,
            "base_rows": self.base_rows,
            "view_rows": self.view_rows,
            "missing_rows": self.missing_rows,
            "sampled_base": self.sampled_base,
            "sampled_view": self.sampled_view,
            "missing_examples": self.missing[:EXAMPLES],
            "differing_examples": self.differing[:EXAMPLES],
            "orphan_examples": self.orphans[:EXAMPLES],
            "build_status": dict(sorted(self.build_status.items())),
            "not_built": self.not_built,
        }


def key_filter_columns(view: View, base_key: Sequence[str]) -> list[str]:
    """The columns of the view's ``IS NOT NULL`` filter that are not in the base key: a base row
    with one of them null has no view row (Cassandra allows at most one such column)."""
    return [c for c in _NOT_NULL.findall(view.ddl) if c not in base_key]


def _all(cql: str) -> SimpleStatement:
    return SimpleStatement(cql, consistency_level=ConsistencyLevel.ALL)


def _plain(row: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row._asdict().items()}


def _sample(
    session: Session,
    table: str,
    partition_key: Sequence[str],
    cols: str,
    n: int,
    rng: random.Random,
) -> list[Any]:
    """About ``n`` rows from random places of the token ring (a few rows after each of
    ``n/10`` random tokens), so the sample is spread over every node and partition."""
    per, rows, seen = 10, [], set()
    pk = ", ".join(partition_key)
    for _ in range(max(1, n // per)):
        start = rng.randint(MIN_TOKEN, MAX_TOKEN)
        for r in session.execute(
            _all(f"SELECT {cols} FROM {table} WHERE token({pk}) >= {start} LIMIT {per}"),
            timeout=60,
        ):
            if r not in seen:
                seen.add(r)
                rows.append(r)
    return rows


def build_status(session: Session, cluster: Cluster, topology: Topology, view: View) -> dict:
    """Every node's build status of ``view`` (node name -> STARTED/SUCCESS/..., or "none")."""
    rows = session.execute(
        SimpleStatement(
            "SELECT host_id, status FROM system_distributed.view_build_status "
            "WHERE keyspace_name = %s AND view_name = %s",
            consistency_level=ConsistencyLevel.ALL,
        ),
        (view.keyspace, view.name),
        timeout=30,
    )
    by_host = {r.host_id: r.status for r in rows}
    address_of = {h.host_id: h.address for h in cluster.metadata.all_hosts()}
    by_address = {address_of.get(h): s for h, s in by_host.items()}
    return {n.name: by_address.get(n.address, "none") for n in topology.nodes}


def audit_view(
    cluster: Cluster,
    session: Session,
    topology: Topology,
    view: View,
    *,
    sample: int = 200,
    seed: int | None = None,
) -> ViewAudit:
    """Compare ``view`` with its base table at ``ALL``: counts, ``sample`` base rows looked up
    in the view (same values?), ``sample`` view rows looked up in the base, build status."""
    ks = view.keyspace
    cluster.refresh_schema_metadata()
    meta = cluster.metadata.keyspaces[ks]
    base_meta = meta.tables[view.base_table]
    base_key = [c.name for c in base_meta.primary_key]
    filters = key_filter_columns(view, base_key)
    counted = f"count({filters[0]})" if filters else "count(*)"
    base_rows = session.execute(
        _all(f"SELECT {counted} FROM {ks}.{view.base_table}"), timeout=300
    ).one()[0]
    view_meta = meta.views.get(view.name)
    if view_meta is None:
        return ViewAudit(view.name, view.base_table, False, base_rows, 0)
    view_rows = session.execute(_all(f"SELECT count(*) FROM {ks}.{view.name}"), timeout=300).one()[
        0
    ]
    audit = ViewAudit(view.name, view.base_table, True, base_rows, view_rows)
    cols = list(view_meta.columns)
    select = ", ".join(cols)
    view_key = [c.name for c in [*view_meta.partition_key, *view_meta.clustering_key]]
    in_view = session.prepare(
        f"SELECT {select} FROM {ks}.{view.name} WHERE " + " AND ".join(f"{c} = ?" for c in view_key)
    )
    in_base = session.prepare(
        f"SELECT {select} FROM {ks}.{view.base_table} WHERE "
        + " AND ".join(f"{c} = ?" for c in base_key)
    )
    in_view.consistency_level = in_base.consistency_level = ConsistencyLevel.ALL
    rng = random.Random(seed)

    base_sample = [
        r
        for r in _sample(
            session,
            f"{ks}.{view.base_table}",
            [c.name for c in base_meta.partition_key],
            select,
            sample,
            rng,
        )
        if all(getattr(r, c) is not None for c in filters)
    ]
    audit.sampled_base = len(base_sample)
    for r in base_sample:
        found = session.execute(in_view, [getattr(r, c) for c in view_key], timeout=30).one()
        if found is None:
            audit.missing.append(_plain(r))
        elif found != r:
            audit.differing.append({"base": _plain(r), "view": _plain(found)})
    view_sample = _sample(
        session,
        f"{ks}.{view.name}",
        [c.name for c in view_meta.partition_key],
        select,
        sample,
        rng,
    )
    audit.sampled_view = len(view_sample)
    for r in view_sample:
        if session.execute(in_base, [getattr(r, c) for c in base_key], timeout=30).one() is None:
            audit.orphans.append(_plain(r))
    audit.build_status = build_status(session, cluster, topology, view)
    return audit


def _agree(cluster: Cluster, what: str) -> None:
    if not cluster.control_connection.wait_for_schema_agreement(wait_time=120):
        raise ViewError(
            f"nodes did not agree on the schema within 120s after {what}; check `retail stack "
            "status` for nodes down, then trigger the rebuild again"
        )


def rebuild_view(
    cluster: Cluster,
    session: Session,
    topology: Topology,
    view: View,
    *,
    timeout: float = 600,
    poll: float = 1.0,
    progress: Callable[[str], None] = log.info,
) -> ViewAudit:
    """Drop ``view``, recreate it from the migration's DDL, wait until every node reports it
    built and an audit passes; returns that audit. Raises :class:`ViewError` at the deadline."""
    deadline = time.monotonic() + timeout
    progress(f"dropping {view.keyspace}.{view.name}")
    session.execute(f"DROP MATERIALIZED VIEW IF EXISTS {view.keyspace}.{view.name}", timeout=120)
    _agree(cluster, f"dropping {view.name}")
    progress(f"recreating {view.keyspace}.{view.name} from its migration's DDL")
    session.execute(view.ddl.strip().rstrip(";"), timeout=120)
    _agree(cluster, f"creating {view.name}")
    last = None
    while True:
        status = build_status(session, cluster, topology, view)
        built = [n for n, s in status.items() if s == BUILT]
        if status != last:
            progress(
                f"{view.name} built on {len(built)}/{len(status)} nodes: "
                + ", ".join(f"{n} {s}" for n, s in sorted(status.items()))
            )
            last = status
        if len(built) == len(status):
            break
        if time.monotonic() > deadline:
            raise ViewError(
                f"{view.name} not built on {', '.join(sorted(set(status) - set(built)))} within "
                f"{timeout:.0f}s; look at those nodes' logs (ViewBuilder) and `nodetool "
                "viewbuildstatus`, then trigger the rebuild again"
            )
        time.sleep(poll)
    while True:
        audit = audit_view(cluster, session, topology, view)
        progress(audit.summary())
        if audit.consistent:
            return audit
        if time.monotonic() > deadline:
            raise ViewError(
                f"{view.name} is built on every node but still differs from its base table "
                f"after {timeout:.0f}s ({audit.summary()}); run a repair of {view.keyspace} "
                "and trigger the rebuild again"
            )
        time.sleep(poll)
