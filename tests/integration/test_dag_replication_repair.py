"""The replication_repair DAG against the live three-DC cluster: drift found (and fixed only when
allowed), and a replica made stale on purpose reading complete on its own after the repair."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import Session

from retail.cassandra import connect
from retail.ops import repair, replication
from retail.topology import CassandraNode, Topology
from stack.local import LocalStack, port_taken
from tests.integration import prom
from tests.integration.airflow import run_dag, task_states, xcom

DAG_ID = "replication_repair"
# Keyspaces the fix_drift run may alter: the one drifted on purpose, and the system keyspaces
# that follow the topology (on the shared stack they start as Cassandra made them).
ALTERED = ("retail_ops", "system_auth", "system_distributed")
STORES = [f"repair-check-{i:02d}" for i in range(30)]
SKU = "sku-repair-check"


@pytest.fixture
def admin(topology: Topology) -> Iterator[Session]:
    cluster, session = connect(topology, topology.datacenters[0].name, consistency_level="ALL")
    yield session
    cluster.shutdown()


def _replication(session: Session, keyspace: str) -> dict[str, str]:
    row = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", [keyspace]
    ).one()
    return dict(row.replication)


def _alter(session: Session, keyspace: str, replication_map: dict[str, Any]) -> None:
    literal = "{" + ", ".join(f"'{k}': '{v}'" for k, v in replication_map.items()) + "}"
    session.execute(f'ALTER KEYSPACE "{keyspace}" WITH replication = {literal}')
    assert session.cluster.control_connection.wait_for_schema_agreement()


def test_drift_is_reported_and_fixed_only_when_allowed(
    airflow: None, topology: Topology, admin: Session
) -> None:
    originals = {ks: _replication(admin, ks) for ks in ALTERED}
    wanted = replication.normalize(topology.replication())
    # retail_ops loses its replicas in ap-southeast, as a hand-made ALTER might do.
    drifted = {k: v for k, v in topology.replication().items() if k != "ap-southeast"}
    try:
        _alter(admin, "retail_ops", drifted)
        conf = {"keyspace": "retail_ops", "table": "schema_migrations", "subranges": 1}

        run = run_dag(DAG_ID, conf | {"fix_drift": False})
        assert str(run.state) == "success", task_states(run)
        check = xcom(run, "check_replication")
        assert check["keyspaces"]["retail_ops"]["drift"] is True
        assert check["keyspaces"]["retail_ops"]["differences"] == [
            "ap-southeast: RF 0 live, 1 wanted"
        ]
        assert check["keyspaces"]["retail"]["drift"] is False
        assert "retail_ops" in check["drifted"] and check["fixed"] == []
        assert replication.normalize(_replication(admin, "retail_ops")) != wanted

        run = run_dag(DAG_ID, conf | {"fix_drift": True})
        assert str(run.state) == "success", task_states(run)
        check = xcom(run, "check_replication")
        assert "retail_ops" in check["fixed"]
        assert check["keyspaces"]["retail_ops"]["statement"].startswith(
            'ALTER KEYSPACE "retail_ops" WITH replication'
        )
        for keyspace in check["fixed"]:
            assert replication.normalize(_replication(admin, keyspace)) == wanted
        repaired = xcom(run, "repair")["repaired"]
        assert repaired["retail_ops"]["reason"] == "replication fixed"
        assert repaired["retail_ops"]["scope"] == "primary_range"
        assert "repair_history" in repaired["retail_ops"]["tables"]
        assert set(repaired) == set(check["fixed"])
    finally:
        for keyspace, original in originals.items():
            if _replication(admin, keyspace) != original:
                _alter(admin, keyspace, original)


def test_a_table_of_another_keyspace_is_refused_with_a_clear_message(
    airflow: None, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run = run_dag(DAG_ID, {"keyspace": "retail_ops", "table": "orders"})
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states["repair"] == "failed" and states["report_repair_state"] == "upstream_failed"
    out = capfd.readouterr()
    assert "table 'orders' is not in keyspace retail_ops" in out.out + out.err + caplog.text


def _present(session: Session) -> set[str]:
    select = session.prepare(
        "SELECT store_id FROM retail.stock_by_store WHERE store_id IN ? AND sku = ?"
    )
    return {r.store_id for r in session.execute(select, [STORES, SKU])}


def _start_again(local_stack: LocalStack, node: CassandraNode) -> None:
    """Start a killed node once the dead JVM has let go of its ports (a big JVM can take a
    moment to exit after SIGKILL on a loaded machine); waits until it is UN everywhere."""
    deadline = time.monotonic() + 30
    while port_taken("tcp", node.address, node.cql_port) and time.monotonic() < deadline:
        time.sleep(0.2)
    local_stack.start(node.name)


def test_a_stale_replica_reads_complete_on_its_own_after_the_repair(
    airflow: None, topology: Topology, local_stack: LocalStack, admin: Session
) -> None:
    stale = topology.datacenters[-1].nodes[0]  # the only node of its DC in the test profile
    writer_dc = topology.datacenters[0].name
    others = [n for n in topology.nodes if n is not stale]
    delete = admin.prepare("DELETE FROM retail.stock_by_store WHERE store_id = ?")
    delete.consistency_level = ConsistencyLevel.ALL
    for store in STORES:  # leftovers of an earlier run, deleted on every replica
        admin.execute(delete, [store])
    jolokia = repair.Jolokia()
    try:
        # Hints would replay the writes when the node comes back: only repair may bring them.
        for node in others:
            repair.set_hinted_handoff(jolokia, node, False)
        local_stack.kill(stale.name)
        cluster, writer = connect(topology, writer_dc, consistency_level="LOCAL_QUORUM")
        insert = writer.prepare(
            "INSERT INTO retail.stock_by_store (store_id, sku, quantity, as_of) "
            "VALUES (?, ?, ?, toTimestamp(now()))"
        )
        for i, store in enumerate(STORES):
            writer.execute(insert, [store, SKU, i])
        assert _present(writer) == set(STORES)
        cluster.shutdown()
        _start_again(local_stack, stale)

        # LOCAL_ONE pinned to the stale node's DC: it is the only replica there, so the read
        # touches no other replica and no read repair can happen.
        cluster, pinned = connect(topology, stale.dc, consistency_level="LOCAL_ONE", pin_to_dc=True)
        try:
            assert _present(pinned) == set(), "the replica was not made stale"
            started = datetime.now(UTC)
            run = run_dag(
                DAG_ID,
                {"keyspace": "retail", "table": "stock_by_store", "subranges": 2},
            )
            assert str(run.state) == "success", task_states(run)
            assert _present(pinned) == set(STORES)
        finally:
            cluster.shutdown()

        result = xcom(run, "repair")["repaired"]["retail"]
        assert result["tables"] == ["stock_by_store"]
        assert result["sessions"] == 2 * len(topology.nodes)
        row = admin.execute(
            "SELECT last_success, last_cluster_wide_success, scope FROM retail_ops.repair_history "
            "WHERE keyspace_name = 'retail' AND table_name = 'stock_by_store'"
        ).one()
        repaired_at = row.last_cluster_wide_success.replace(tzinfo=UTC)
        assert repaired_at >= started.replace(microsecond=0) and row.scope == "primary_range"
        state = xcom(run, "report_repair_state")
        assert "retail.stock_by_store" not in state["overdue"]

        prom.wait_for(
            topology,
            'retail_repair_last_success_timestamp_seconds{keyspace="retail",table="stock_by_store"}',
            lambda r: (prom.value(r) or 0) >= repaired_at.timestamp() - 1,
            timeout=30,
        )
    finally:
        try:
            if stale.name not in local_stack.running():
                _start_again(local_stack, stale)
        finally:
            for node in others:
                repair.set_hinted_handoff(jolokia, node, True)
            jolokia.close()
        for store in STORES:
            admin.execute(delete, [store])
