"""Cassandra access: one way to build a DC-aware, token-aware session for the platform."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.concurrent import execute_concurrent
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    TokenAwarePolicy,
    WhiteListRoundRobinPolicy,
)

from retail.settings import Settings, get_settings
from retail.topology import Topology

log = logging.getLogger(__name__)


def consistency(name: str) -> int:
    """A consistency level by name (``LOCAL_QUORUM``), with the valid names in the error."""
    try:
        return ConsistencyLevel.name_to_value[name.upper()]
    except KeyError:
        valid = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"unknown consistency level {name!r}; use one of: {valid}") from None


def run_all(
    session: Session, statements: Sequence[tuple[Any, Sequence[object]]], concurrency: int = 64
) -> list[list[Any]]:
    """Execute ``statements`` concurrently and return every result's rows, in order; the first
    failure raises (the driver's own error: Unavailable or a timeout means retry later)."""
    if not statements:
        return []
    results = execute_concurrent(
        session,
        statements,
        concurrency=concurrency,
        raise_on_first_error=True,
        results_generator=False,
    )
    return [list(rows) for _, rows in results]


def read_level_for(write_level: str, replication_factor: int) -> str:
    """The cheapest consistency a reader in the same DC can use and still see every write
    acknowledged at ``write_level``: R + W > RF. With LOCAL_QUORUM writes that is LOCAL_ONE up
    to two replicas per DC (a quorum of two is both) and LOCAL_QUORUM from three."""
    rf = max(1, replication_factor)
    quorum = rf // 2 + 1
    written = {"ONE": 1, "LOCAL_ONE": 1, "LOCAL_QUORUM": quorum, "QUORUM": quorum, "ALL": rf}
    w = written.get(write_level.upper())
    if w is None:
        return "LOCAL_QUORUM"
    r = rf - w + 1
    return "LOCAL_ONE" if r <= 1 else "LOCAL_QUORUM" if r <= quorum else "ALL"


def connect(
    topology: Topology,
    local_dc: str,
    *,
    keyspace: str | None = None,
    consistency_level: str = "LOCAL_QUORUM",
    pin_to_dc: bool = False,
    request_timeout: float = 10.0,
    settings: Settings | None = None,
) -> tuple[Cluster, Session]:
    """A session whose coordinators are the nodes of ``local_dc``, chosen by token.

    ``pin_to_dc`` never lets a request leave the DC, even if every local node is down: for
    checks that must read one DC's replicas only (the driver's DC-aware policy does not
    fail over to remote DCs by default either, but this makes it explicit).
    """
    settings = settings or get_settings()
    dc = topology.datacenter(local_dc)
    child = (
        WhiteListRoundRobinPolicy(dc.contact_points)
        if pin_to_dc
        else DCAwareRoundRobinPolicy(local_dc=local_dc)
    )
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(child),
        consistency_level=consistency(consistency_level),
        request_timeout=request_timeout,
    )
    auth = None
    if settings.cassandra_username and settings.cassandra_password:
        auth = PlainTextAuthProvider(
            settings.cassandra_username, settings.cassandra_password.get_secret_value()
        )
    cluster = Cluster(
        contact_points=dc.contact_points,
        port=dc.nodes[0].cql_port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        auth_provider=auth,
        protocol_version=5,
    )
    session = cluster.connect(keyspace)
    log.debug("connected to %s (local DC %s, %s)", dc.contact_points, local_dc, consistency_level)
    return cluster, session
