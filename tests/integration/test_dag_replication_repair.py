"""The replication_repair DAG against the live three-DC cluster: drift found (and fixed only when
allowed; a fix that would remove a DC or lower a factor refused without the explicit param), a
repair that waits for, then refuses, another holder's lease and runs on retry once it is gone,
and a replica made stale on purpose reading complete on its own after the repair."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import Session

from retail.cassandra import connect, wait_for_schema_agreement
from retail.connections import CASSANDRA_CONN_ID, environment
from retail.credentials import CASSANDRA_OPS
from retail.jolokia import STORAGE_SERVICE, Jolokia
from retail.ops import repair, repair_lease, replication
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
    cluster, session = connect(
        topology, topology.datacenters[0].name, consistency_level="ALL", role=CASSANDRA_OPS
    )
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
    wait_for_schema_agreement(session.cluster, f"altering {keyspace}", timeout=None)


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


def _output(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    out = capfd.readouterr()
    return out.out + out.err + caplog.text


def test_a_fix_that_would_lower_a_factor_is_refused_unless_allowed(
    airflow: None,
    topology: Topology,
    admin: Session,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = _replication(admin, "retail_ops")
    wanted = replication.normalize(topology.replication())
    first = topology.datacenters[0].name
    # One replica more in the first DC than the topology wants (Cassandra accepts a factor above
    # the DC's node count with a warning): fixing it to the topology lowers the factor.
    higher = topology.replication() | {first: topology.datacenters[0].replication_factor + 1}
    conf = {"keyspace": "retail_ops", "table": "schema_migrations", "subranges": 1}
    try:
        _alter(admin, "retail_ops", higher)
        capfd.readouterr()
        run = run_dag(DAG_ID, conf | {"fix_drift": True})
        assert str(run.state) == "failed"
        states = task_states(run)
        assert states["check_replication"] == "failed", states
        assert states["repair"] == "upstream_failed"
        text = _output(capfd, caplog)
        lowered = f"retail_ops: {first}: RF {higher[first]} -> {higher[first] - 1}"
        assert lowered in text and "allow_replication_decrease=true" in text
        assert "nothing was altered" in text
        assert "retail_ops: replication before: NetworkTopologyStrategy" in text
        assert _replication(admin, "retail_ops") == original | {first: str(higher[first])}

        run = run_dag(DAG_ID, conf | {"fix_drift": True, "allow_replication_decrease": True})
        assert str(run.state) == "success", task_states(run)
        check = xcom(run, "check_replication")
        assert check["keyspaces"]["retail_ops"]["fixed"] is True
        assert check["keyspaces"]["retail_ops"]["after"] == wanted
        assert replication.normalize(_replication(admin, "retail_ops")) == wanted
        text = _output(capfd, caplog)
        assert "retail_ops: replication altered: before NetworkTopologyStrategy" in text
    finally:
        if _replication(admin, "retail_ops") != original:
            _alter(admin, "retail_ops", original)


def test_a_fix_that_would_remove_a_dc_is_refused_and_alters_nothing(
    airflow: None,
    topology: Topology,
    admin: Session,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Cassandra refuses a replication naming a DC it does not have, so the DC to remove is made
    # the other way round: the DAG's topology (its desired state, from the connection) loses the
    # last DC, which every platform keyspace still replicates to. A fix would drop its replicas.
    gone = topology.datacenters[-1].name
    shrunk = dataclasses.replace(topology, datacenters=topology.datacenters[:-1])
    var = f"AIRFLOW_CONN_{CASSANDRA_CONN_ID.upper()}"
    monkeypatch.setenv(var, environment(shrunk)[var])
    before = {ks: _replication(admin, ks) for ks in ("retail", "retail_ops")}
    capfd.readouterr()
    run = run_dag(DAG_ID, {"keyspace": "retail_ops", "fix_drift": True})
    assert str(run.state) == "failed"
    assert task_states(run)["check_replication"] == "failed"
    text = _output(capfd, caplog)
    for keyspace in before:
        assert f"{keyspace}: {gone}: RF 1 -> 0 (DC removed)" in text
    assert "allow_replication_decrease=true" in text
    assert {ks: _replication(admin, ks) for ks in before} == before


LEASE_HOLDER = "someone-else/manual__nightly/repair"


def _release_when_retried(admin: Session, started: datetime, done: threading.Event) -> None:
    """Delete the other holder's lease once the repair task is up for retry: its first try has
    waited and given up by then, and its retry must find the lease free."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy.exc import OperationalError

    deadline = time.monotonic() + 300
    while not done.is_set() and time.monotonic() < deadline:
        try:
            with create_session() as session:
                waiting = (
                    session.query(TaskInstance)
                    .filter(
                        TaskInstance.dag_id == DAG_ID,
                        TaskInstance.task_id == "repair",
                        TaskInstance.state == "up_for_retry",
                        TaskInstance.start_date >= started,
                    )
                    .count()
                )
        except OperationalError:  # SQLite busy with the run's own writes: look again
            waiting = 0
        if waiting:
            break
        time.sleep(0.5)
    admin.execute(
        "DELETE FROM retail_ops.repair_lease WHERE keyspace_name = 'retail_ops' IF owner = %s",
        [LEASE_HOLDER],
    )


def test_a_repair_waits_for_a_lease_another_holds_refuses_naming_it_and_runs_on_retry(
    airflow: None,
    admin: Session,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    held_since = datetime.now(UTC).replace(microsecond=0)
    taken = admin.execute(
        "INSERT INTO retail_ops.repair_lease (keyspace_name, owner, try_number, acquired_at, "
        "renewed_at, scope) VALUES ('retail_ops', %s, 1, %s, %s, 'primary_range') "
        "IF NOT EXISTS USING TTL 600",
        [LEASE_HOLDER, held_since, held_since],
    ).one()
    assert taken.applied, f"a repair lease on retail_ops is already held: {taken}"
    done = threading.Event()
    releaser = threading.Thread(
        target=_release_when_retried, args=(admin, held_since, done), daemon=True
    )
    releaser.start()
    try:
        capfd.readouterr()
        conf = {"keyspace": "retail_ops", "table": "schema_migrations", "subranges": 1}
        run = run_dag(DAG_ID, conf | {"lease_wait_seconds": 4})
        assert str(run.state) == "success", task_states(run)
        tries = {ti.task_id: ti.try_number for ti in run.get_task_instances()}
        assert tries["repair"] == 2, tries
        text = _output(capfd, caplog)
        assert f"retail_ops: waiting for the repair lease, held by {LEASE_HOLDER}" in text
        assert f"retail_ops: another repair holds the keyspace: {LEASE_HOLDER}" in text
        assert f"since {held_since.isoformat(' ')}" in text
        assert "try 2: checking for repair sessions the failed try left running (none" in text
        result = xcom(run, "repair")
        assert result["repaired"]["retail_ops"]["tables"] == ["schema_migrations"]
        # The retry counted every node's repair sessions through the RepairService MBean.
        sessions = result["leftovers"]["sessions"]
        assert len(sessions) == len(admin.cluster.metadata.all_hosts())
        assert all(isinstance(n, int) for n in sessions.values())
        # Released at the end, by its owner.
        left = admin.execute(
            "SELECT owner FROM retail_ops.repair_lease WHERE keyspace_name = 'retail_ops'"
        ).one()
        assert left is None
    finally:
        done.set()
        releaser.join(timeout=10)
        admin.execute(
            "DELETE FROM retail_ops.repair_lease WHERE keyspace_name = 'retail_ops' IF EXISTS"
        )


def test_a_retry_waits_for_a_session_left_running_on_a_node(
    topology: Topology, local_stack: LocalStack
) -> None:
    """What a retry does first, against a real session: one started over Jolokia as a failed
    try would have left it, then waited for through its command status and the node counts."""
    jolokia = Jolokia(login=local_stack.jolokia_login())
    try:
        steps = repair.plan(
            "retail_ops",
            repair.live_range_map(jolokia, topology, "retail_ops"),
            topology,
            scope="primary_range",
            tables=["schema_migrations"],
        )
        step = steps[0]
        node = topology.node(step.node)
        command = jolokia.exec(node, STORAGE_SERVICE, "repairAsync", step.keyspace, step.options())
        assert command > 0
        left = repair_lease.InFlight(
            "test/run/repair", 1, "retail_ops", node.name, command, None, "x"
        )
        lines: list[str] = []
        found = repair_lease.settle_leftovers(
            jolokia,
            topology,
            left,
            timeout=120,
            terminate=False,
            poll_seconds=0.2,
            say=lines.append,
        )
        assert found["outcome"] in ("completed", "waited: completed"), lines
        assert repair_lease.command_state(jolokia, node, command) == "COMPLETED"
        assert set(found["sessions"]) == {n.name for n in topology.nodes}
        assert lines[0].startswith("repair sessions on the nodes before this retry: ")
    finally:
        jolokia.close()


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
    jolokia = Jolokia(login=local_stack.jolokia_login())
    try:
        # Hints would replay the writes when the node comes back: only repair may bring them.
        for node in others:
            repair.set_hinted_handoff(jolokia, node, False)
        local_stack.kill(stale.name)
        cluster, writer = connect(
            topology, writer_dc, consistency_level="LOCAL_QUORUM", role=CASSANDRA_OPS
        )
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
        cluster, pinned = connect(
            topology, stale.dc, consistency_level="LOCAL_ONE", pin_to_dc=True, role=CASSANDRA_OPS
        )
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
