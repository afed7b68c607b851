"""The operators' parameter checks: a bad value (typed into a trigger form, sent through the REST
API or the CLI, or written into a DAG) is refused with a message that says what is allowed, and
before anything reaches a server: the hooks here fail the test if they are ever built."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from retail_airflow.operators import audit, balance, migrations, repair, ring, rollups, views


class Unreachable:
    """A hook that must not be built: validation comes first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a bad parameter reached the hook")


@pytest.fixture(autouse=True)
def no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (audit, balance, migrations, repair, ring, rollups, views):
        for name in ("RetailCassandraHook", "RetailKafkaHook", "RetailStatsdHook"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, Unreachable)


# --- balance check -------------------------------------------------------------------------------


def balance_check(**kw: Any) -> balance.BalanceCheckOperator:
    return balance.BalanceCheckOperator(task_id="check", **kw)


def test_the_balance_check_takes_a_prefix_and_numbers_in_range() -> None:
    assert balance_check()._validate() == ("retail", 300.0, 8.0)
    assert balance_check(topic_prefix="it-3f2a", window_seconds=10, skew_threshold=100)._validate()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"topic_prefix": "retail.eu-west"}, r"topic_prefix 'retail.eu-west' must match"),
        ({"topic_prefix": "Retail"}, "must match"),
        ({"topic_prefix": 7}, "must match"),
        ({"window_seconds": "300"}, "window_seconds must be a number, got '300'"),
        ({"window_seconds": True}, "window_seconds must be a number"),
        ({"window_seconds": 5}, r"window_seconds 5 outside \(10, 3600\)"),
        ({"skew_threshold": 0.5}, r"skew_threshold 0.5 outside \(1.0, 100.0\)"),
    ],
)
def test_the_balance_check_refuses(params: dict[str, Any], message: str) -> None:
    task = balance_check(**params)
    with pytest.raises(AirflowFailException, match=message):
        task._validate()
    with pytest.raises(AirflowFailException, match=message):
        task.execute({})  # before any hook


# --- pipeline audit ------------------------------------------------------------------------------


def pipeline_audit(**kw: Any) -> audit.PipelineAuditOperator:
    return audit.PipelineAuditOperator(task_id="audit", **kw)


def test_the_audit_takes_its_window_and_topic_kinds() -> None:
    assert pipeline_audit()._validate() == ("retail", None, 5, ["orders", "inventory"])
    got = pipeline_audit(window_minutes=60, settle_minutes=0, topics=["orders", "orders"])
    assert got._validate() == ("retail", 60, 0, ["orders"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"topic_prefix": "a.b"}, "topic_prefix 'a.b' must match"),
        ({"window_minutes": "60"}, "window_minutes must be an integer, got '60'"),
        ({"window_minutes": 0}, r"window_minutes 0 outside \(1, 1440\)"),
        ({"settle_minutes": 61}, r"settle_minutes 61 outside \(0, 60\)"),
        ({"settle_minutes": False}, "settle_minutes must be an integer"),
        ({"topics": []}, "topics must be a non-empty list"),
        ({"topics": "orders"}, "topics must be a non-empty list"),
        ({"topics": ["orders", "refunds"]}, r"unknown topics \['refunds'\]; choose from"),
    ],
)
def test_the_audit_refuses(params: dict[str, Any], message: str) -> None:
    task = pipeline_audit(**params)
    with pytest.raises(AirflowFailException, match=message):
        task._validate()
    with pytest.raises(AirflowFailException, match=message):
        task.execute({})


def test_the_audit_window_is_the_data_interval_moved_back_by_the_settle_time() -> None:
    start = datetime(2026, 3, 1, 10, tzinfo=UTC)
    end = datetime(2026, 3, 1, 11, tzinfo=UTC)
    ms = int(end.timestamp() * 1000)
    assert audit.audit_window(start, end, 5, None) == (ms - 3_900_000, ms - 300_000)
    assert audit.audit_window(start, end, 0, 10) == (ms - 600_000, ms)


# --- migrations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dry_run", "allow_replication_decrease"])
def test_the_migrations_take_booleans_only(name: str) -> None:
    task = migrations.SchemaMigrationsOperator(task_id="migrate", **{name: "true"})
    with pytest.raises(TypeError, match=f"{name} must be a boolean, got 'true'"):
        task.execute({})


# --- replication check and repair ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["fix_drift", "allow_replication_decrease"])
def test_the_replication_check_takes_booleans_only(name: str) -> None:
    task = repair.ReplicationCheckOperator(task_id="check", **{name: "yes"})
    with pytest.raises(AirflowFailException, match=f"{name} must be true or false, got 'yes'"):
        task.execute({})


DCS = ["eu-west", "us-east", "ap-southeast"]


def repair_task(**kw: Any) -> repair.RepairOperator:
    return repair.RepairOperator(task_id="repair", **kw)


def test_the_repair_takes_what_the_catalogue_and_topology_know() -> None:
    repair_task()._validate(DCS)
    repair_task(keyspace="retail", table="orders", dc="us-east", scope="datacenter")._validate(DCS)
    repair_task(subranges=64, lease_wait_seconds=0)._validate(DCS)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"keyspace": "shop"}, "unknown keyspace 'shop'; choose all or one of retail, retail_ops"),
        ({"table": "orders"}, "a table needs its keyspace: choose keyspace too"),
        ({"keyspace": "retail", "table": "carts"}, "table 'carts' is not in keyspace retail"),
        ({"dc": "mars", "scope": "datacenter"}, "unknown dc 'mars'; choose all or one of"),
        ({"scope": "everything"}, "scope must be one of"),
        ({"dc": "us-east"}, "to repair inside us-east only, choose scope datacenter"),
        ({"subranges": 0}, "subranges must be an integer from 1 to 64, got 0"),
        ({"subranges": "4"}, "subranges must be an integer from 1 to 64, got '4'"),
        ({"subranges": True}, "subranges must be an integer"),
        ({"lease_wait_seconds": -1}, "lease_wait_seconds must be an integer from 0 to 10800"),
    ],
)
def test_the_repair_refuses(params: dict[str, Any], message: str) -> None:
    with pytest.raises(AirflowFailException, match=message):
        repair_task(**params)._validate(DCS)


# --- rollups -------------------------------------------------------------------------------------


def test_the_rollup_repair_is_skipped_unless_switched_on() -> None:
    with pytest.raises(AirflowSkipException, match="fix_rollups is off"):
        rollups.RollupRepairOperator(task_id="rollups").execute({})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fix_rollups": "true"}, "fix_rollups must be a boolean, got 'true'"),
        ({"fix_rollups": True, "window_hours": 0}, r"window hours must be 1\.\.168, got 0"),
        ({"fix_rollups": True, "window_hours": "3"}, "window hours must be an integer, got '3'"),
    ],
)
def test_the_rollup_repair_refuses(params: dict[str, Any], message: str) -> None:
    task = rollups.RollupRepairOperator(task_id="rollups", **params)
    with pytest.raises(AirflowFailException, match=message):
        task.execute({})


# --- views ---------------------------------------------------------------------------------------


def test_view_numbers_are_checked_when_the_dag_is_written_and_when_rendered() -> None:
    with pytest.raises(ValueError, match=r"audit rows must be in 1\.\.100000, got 0"):
        views.ViewAuditOperator(task_id="audit", rows=0)
    with pytest.raises(ValueError, match="settle seconds must be a number"):
        views.ViewAuditOperator(task_id="audit", settle_seconds=True)
    with pytest.raises(ValueError, match=r"build timeout must be in 0\.\.3600"):
        views.ViewRebuildOperator(task_id="rebuild", audit_task_id="audit", build_timeout=7200)
    # A template renders to a string: checked when the task runs, and final (no retry).
    rendered = views.ViewAuditOperator(task_id="audit", rows="many")
    with pytest.raises(AirflowFailException, match="audit rows must be a number"):
        rendered.execute({"run_id": "r"})
    assert views.audit_rows("250") == 250 and views.settle("2.5") == 2.5


def test_an_unknown_view_or_rebuild_policy_is_refused() -> None:
    with pytest.raises(AirflowFailException, match="unknown view 'sales'; choose 'all' or one of"):
        views.ViewAuditOperator(task_id="audit", view="sales").execute({"run_id": "r"})
    rebuild = views.ViewRebuildOperator(task_id="rebuild", audit_task_id="audit", rebuild="now")
    with pytest.raises(AirflowFailException, match="rebuild must be one of if_inconsistent"):
        rebuild.execute({})
    never = views.ViewRebuildOperator(task_id="rebuild", audit_task_id="audit", rebuild="never")
    with pytest.raises(AirflowSkipException, match="audit only"):
        never.execute({})


# --- ring maintenance ----------------------------------------------------------------------------


def test_ring_maintenance_takes_lists_of_names_and_a_boolean() -> None:
    assert ring.check_params(["eu-west"], ["eu-west-2", "eu-west-2"], True) == (
        ["eu-west"],
        ["eu-west-2"],
        True,
    )
    assert ring.check_params(None, None, False) == ([], [], False)
    # Templates are checked once rendered, when the task runs.
    ring.RingMaintenanceOperator(
        task_id="ring", dcs="{{ params.dcs }}", nodes="{{ params.nodes }}", dry_run="{{ x }}"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"dcs": "eu-west"}, "dcs must be a list of names, got 'eu-west'"),
        ({"nodes": [1]}, r"nodes must be a list of names, got \[1\]"),
        ({"nodes": ["eu-west.1"]}, r"nodes: \['eu-west.1'\] are not names like eu-west or"),
        ({"dry_run": "yes"}, "dry_run must be true or false, got 'yes'"),
    ],
)
def test_ring_maintenance_refuses(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ring.RingMaintenanceOperator(task_id="ring", **params)
    # Rendered from a form, the REST API or the CLI: refused when the task runs, before any hook.
    rendered = ring.RingMaintenanceOperator(
        task_id="ring", dcs="{{ a }}", nodes="{{ b }}", dry_run="{{ c }}"
    )
    for name, value in ({"dcs": ["eu-west"], "nodes": [], "dry_run": False} | params).items():
        setattr(rendered, name, value)
    with pytest.raises(AirflowFailException, match=message):
        rendered.execute({})
