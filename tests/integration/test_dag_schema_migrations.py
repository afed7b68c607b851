"""The schema_migrations DAG and its runner against the live cluster."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session

from retail import migrations
from retail.cassandra import connect
from retail.connections import airflow_environment
from retail.credentials import CASSANDRA_OPS
from retail.topology import Topology
from tests.integration.airflow import run_dag, task_states, xcom

RAIL_KEYSPACE = "migration_rail_test"
NTS = "NetworkTopologyStrategy"


@pytest.fixture
def cql(airflow: None, topology: Topology, tmp_path: Path) -> Iterator[tuple[Any, Session, Path]]:
    """A session, and a migrations directory holding the repository's files (all applied by
    the ``airflow`` fixture) to which a test adds its own from V900 on; whatever those create
    is removed after."""
    directory = tmp_path / "cql"
    shutil.copytree(migrations.MIGRATIONS_DIR, directory)
    cluster, session = connect(
        topology, topology.datacenters[0].name, consistency_level="QUORUM", role=CASSANDRA_OPS
    )
    try:
        yield cluster, session, directory
    finally:
        # Only a keyspace that exists: the operations role owns what it created, and Cassandra
        # refuses it DROP ... IF EXISTS on one that does not (no permission on it).
        exists = session.execute(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
            [RAIL_KEYSPACE],
        ).one()
        if exists:
            session.execute(f"DROP KEYSPACE {RAIL_KEYSPACE}")
        session.execute(
            f"DELETE FROM {migrations.OPS_KEYSPACE}.schema_migrations WHERE version IN (900, 901)"
        )
        cluster.shutdown()


def ops_snapshot(session: Session) -> dict[str, Any]:
    """retail_ops as it stands: its tables and their columns, and every row of every table."""
    columns = session.execute(
        "SELECT table_name, column_name, type FROM system_schema.columns WHERE keyspace_name = %s",
        [migrations.OPS_KEYSPACE],
    )
    schema: dict[str, list[tuple[str, str]]] = {}
    for row in columns:
        schema.setdefault(row.table_name, []).append((row.column_name, row.type))
    rows = {
        table: sorted(
            json.dumps(r._asdict(), default=str, sort_keys=True)
            for r in session.execute(f"SELECT * FROM {migrations.OPS_KEYSPACE}.{table}")
        )
        for table in schema
    }
    return {"schema": {t: sorted(c) for t, c in schema.items()}, "rows": rows}


def test_a_dry_run_lists_nothing_pending_on_an_up_to_date_schema(airflow: None) -> None:
    run = run_dag("schema_migrations", {"dry_run": True})
    assert str(run.state) == "success", task_states(run)
    result = xcom(run, "apply_migrations")
    versions = [m.version for m in migrations.load()]
    assert result == {
        "applied_before": versions,
        "pending": [],
        "applied_now": [],
        "dry_run": True,
        "replication_changes": [],
    }


def test_a_dry_run_leaves_retail_ops_unchanged(
    cql: tuple[Any, Session, Path], topology: Topology
) -> None:
    cluster, session, directory = cql
    (directory / "V900__rail_keyspace.cql").write_text(
        f"CREATE KEYSPACE IF NOT EXISTS {RAIL_KEYSPACE} WITH replication = {{replication}};\n"
        f"CREATE TABLE IF NOT EXISTS {RAIL_KEYSPACE}.t (k int PRIMARY KEY);\n"
    )
    before = ops_snapshot(session)
    report = migrations.migrate(cluster, session, topology, dry_run=True, directory=directory)
    assert [m.version for m in report.pending] == [900]
    assert [(c.keyspace, c.before) for c in report.replication_changes] == [(RAIL_KEYSPACE, None)]
    run = run_dag("schema_migrations", {"dry_run": True})
    assert str(run.state) == "success", task_states(run)
    after = ops_snapshot(session)
    assert after == before
    assert after["rows"]["migration_lock"] == []
    keyspaces = {r.keyspace_name for r in session.execute("SELECT * FROM system_schema.keyspaces")}
    assert RAIL_KEYSPACE not in keyspaces


def test_a_migration_that_drops_a_dc_is_refused_unless_allowed(
    cql: tuple[Any, Session, Path], topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    cluster, session, directory = cql
    (directory / "V900__rail_keyspace.cql").write_text(
        f"CREATE KEYSPACE IF NOT EXISTS {RAIL_KEYSPACE} WITH replication = {{replication}};"
    )
    two_dcs = {dc.name: dc.replication_factor for dc in topology.datacenters[:2]}
    lowered = ", ".join(f"'{dc}': {rf}" for dc, rf in two_dcs.items())
    (directory / "V901__rail_lower.cql").write_text(
        f"ALTER KEYSPACE {RAIL_KEYSPACE} WITH replication = {{'class': '{NTS}', {lowered}}};"
    )
    gone = topology.datacenters[2]
    with pytest.raises(migrations.MigrationError) as refused:
        migrations.migrate(cluster, session, topology, directory=directory)
    message = str(refused.value)
    assert not refused.value.retryable
    assert f"{gone.name}: RF {gone.replication_factor} -> 0 (DC removed)" in message
    assert f"{RAIL_KEYSPACE} (V901__rail_lower.cql): {NTS} {{" in message
    # Refused before any statement: V900 (a new keyspace, allowed) was not applied either.
    assert 900 not in migrations.applied(session)
    keyspaces = {r.keyspace_name for r in session.execute("SELECT * FROM system_schema.keyspaces")}
    assert RAIL_KEYSPACE not in keyspaces

    with caplog.at_level(logging.INFO, logger="retail.migrations"):
        report = migrations.migrate(
            cluster, session, topology, directory=directory, allow_replication_decrease=True
        )
    assert report.applied_now == [900, 901]
    live = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        [RAIL_KEYSPACE],
    ).one()
    assert {k: v for k, v in live.replication.items() if k != "class"} == {
        dc: str(rf) for dc, rf in two_dcs.items()
    }
    assert f"replication of {RAIL_KEYSPACE} (V900__rail_keyspace.cql): (none) -> {NTS}" in (
        caplog.text
    )
    assert "lowering replication as allowed" in caplog.text


def test_the_dag_refuses_a_topology_that_drops_a_dc_from_the_system_keyspaces(
    airflow: None,
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The connection's topology loses a DC: the runner would alter system_auth and
    # system_distributed to two DCs.
    two_dcs = replace(topology, datacenters=topology.datacenters[:2])
    for key, value in airflow_environment(two_dcs).items():
        if key.startswith("AIRFLOW_CONN_RETAIL_CASSANDRA"):
            monkeypatch.setenv(key, value)
    run = run_dag("schema_migrations", {"dry_run": False})
    assert str(run.state) == "failed"
    out = capfd.readouterr()
    told = out.out + out.err + caplog.text
    assert "refusing to lower replication" in told
    assert f"system_auth (system keyspaces): {NTS} {{" in told
    assert f"{topology.datacenters[2].name}: RF 1 -> 0 (DC removed)" in told


def test_the_lock_is_renewed_while_a_migration_runs(
    cql: tuple[Any, Session, Path], topology: Topology
) -> None:
    cluster, session, directory = cql
    (directory / "V900__rail_keyspace.cql").write_text(
        f"CREATE KEYSPACE IF NOT EXISTS {RAIL_KEYSPACE} WITH replication = {{replication}};"
    )
    ttl = 4
    seen: list[Any] = []

    def slow(migration: migrations.Migration, statement: str) -> None:
        time.sleep(ttl * 2.5)  # the lock row would have expired twice without its heartbeat
        seen.append(
            session.execute(
                f"SELECT owner, TTL(owner) AS ttl FROM {migrations.OPS_KEYSPACE}.migration_lock "
                "WHERE name = 'schema'"
            ).one()
        )

    report = migrations.migrate(
        cluster, session, topology, directory=directory, on_statement=slow, lock_ttl=ttl
    )
    assert report.applied_now == [900]
    assert seen[0] is not None and 0 < seen[0].ttl <= ttl
    lock = session.execute(f"SELECT * FROM {migrations.OPS_KEYSPACE}.migration_lock").all()
    assert lock == []  # released


def test_an_edited_applied_migration_is_refused(
    airflow: None, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # The first file: applied long ago, and nobody's work in progress.
    path = migrations.load()[0].path
    original = path.read_text()
    path.write_text(original + "-- an edit after the fact\n")
    try:
        run = run_dag("schema_migrations", {"dry_run": False})
    finally:
        path.write_text(original)
    assert str(run.state) == "failed"
    assert task_states(run) == {"apply_migrations": "failed"}
    out = capfd.readouterr()
    told = out.out + out.err + caplog.text
    assert f"{path.name} changed after it was applied" in told
