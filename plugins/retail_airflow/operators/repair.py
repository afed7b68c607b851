"""Replication checks and anti-entropy repairs from Airflow (logic in retail.ops)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from cassandra.cluster import Session

from retail.catalog import catalog
from retail.connections import CASSANDRA_CONN_ID, STATSD_CONN_ID
from retail.errors import ConfigError
from retail.metrics import Metrics
from retail.migrations import OPS_KEYSPACE
from retail.ops import repair, replication
from retail.ops.repair import RepairError
from retail.topology import Topology
from retail_airflow.hooks import RetailCassandraHook, RetailStatsdHook

ALL = "all"


class ReplicationCheckOperator(BaseOperator):
    """Compare every platform keyspace's live replication with the topology, report the drift
    (XCom, task log, ``retail.repair.<keyspace>.drift``), and with ``fix_drift`` alter a drifted
    keyspace to the topology's replication; the repair task then repairs it."""

    template_fields = ("fix_drift",)

    def __init__(
        self,
        *,
        fix_drift: bool | str = False,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fix_drift = fix_drift
        self.cassandra_conn_id = cassandra_conn_id
        self.statsd_conn_id = statsd_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        if not isinstance(self.fix_drift, bool):
            raise AirflowFailException(f"fix_drift must be true or false, got {self.fix_drift!r}")
        hook = RetailCassandraHook(self.cassandra_conn_id)
        metrics = RetailStatsdHook(self.statsd_conn_id).metrics
        topology = hook.topology()
        keyspaces = replication.platform_keyspaces(catalog().keyspaces)
        report: dict[str, Any] = {}
        with hook.session(consistency_level="QUORUM") as (cluster, session):
            for drift in replication.check(session, topology, keyspaces):
                entry = drift.to_dict() | {"fixed": False}
                if not drift.drifted:
                    self.log.info("%s: replication matches the topology", drift.keyspace)
                else:
                    self.log.warning(
                        "%s: REPLICATION DRIFT: %s",
                        drift.keyspace,
                        "; ".join(drift.differences()),
                    )
                    if self.fix_drift and drift.fixable:
                        try:
                            entry["statement"] = replication.fix(
                                cluster, session, drift, topology, keyspaces
                            )
                        except replication.ReplicationError as exc:
                            raise AirflowFailException(str(exc)) from exc
                        entry["fixed"] = True
                        self.log.warning(
                            "%s: altered to the topology's replication; its new replicas hold "
                            "no data until a full repair streams it: the repair task runs one now",
                            drift.keyspace,
                        )
                    elif drift.fixable:
                        self.log.warning(
                            "%s: not fixed; trigger replication_repair with fix_drift=true to "
                            "alter it to the topology's replication and repair it",
                            drift.keyspace,
                        )
                still_drifted = drift.drifted and not entry["fixed"]
                metrics.gauge(f"repair.{drift.keyspace}.drift", 1 if still_drifted else 0)
                report[drift.keyspace] = entry
        fixed = [ks for ks, e in report.items() if e["fixed"]]
        return {
            "keyspaces": report,
            "drifted": [ks for ks, e in report.items() if e["drift"]],
            "fixed": fixed,
            "repair_needed": fixed,
        }


@dataclass(frozen=True)
class _Target:
    keyspace: str
    tables: tuple[str, ...]  # empty: the whole keyspace
    scope: str
    dc: str
    reason: str


class RepairOperator(BaseOperator):
    """Full anti-entropy repair through the StorageService MBean (Jolokia), node by node and
    subrange by subrange, with progress in the task log; every keyspace the check task fixed is
    repaired first, cluster-wide. Each success is recorded in ``retail_ops.repair_history`` as
    it finishes; durations go to ``retail.repair.<keyspace>.duration.<success|failed>``."""

    template_fields = ("keyspace", "table", "dc", "scope", "subranges")

    def __init__(
        self,
        *,
        keyspace: str = ALL,
        table: str = ALL,
        dc: str = ALL,
        scope: str = "primary_range",
        subranges: int | str = 4,
        check_task_id: str | None = "check_replication",
        step_timeout: float = 3600.0,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.keyspace = keyspace
        self.table = table
        self.dc = dc
        self.scope = scope
        self.subranges = subranges
        self.check_task_id = check_task_id
        self.step_timeout = step_timeout
        self.cassandra_conn_id = cassandra_conn_id
        self.statsd_conn_id = statsd_conn_id

    def _validate(self, dcs: list[str]) -> None:
        """The form validates too; this guards the CLI, the REST API and a DAG edited wrongly."""
        cat = catalog()
        if self.keyspace != ALL and self.keyspace not in cat.keyspaces:
            known = ", ".join(cat.keyspaces)
            raise AirflowFailException(
                f"unknown keyspace {self.keyspace!r}; choose all or one of {known}"
            )
        if self.table != ALL:
            if self.keyspace == ALL:
                raise AirflowFailException("a table needs its keyspace: choose keyspace too")
            if self.table not in cat.tables_of(self.keyspace):
                raise AirflowFailException(
                    f"table {self.table!r} is not in keyspace {self.keyspace}; its tables: "
                    f"{', '.join(cat.tables_of(self.keyspace))}"
                )
        if self.dc != ALL and self.dc not in dcs:
            raise AirflowFailException(f"unknown dc {self.dc!r}; choose all or one of {dcs}")
        if self.scope not in repair.SCOPES:
            raise AirflowFailException(f"scope must be one of {repair.SCOPES}, got {self.scope!r}")
        if self.scope == "primary_range" and self.dc != ALL:
            raise AirflowFailException(
                f"scope primary_range repairs every node of every DC; to repair inside {self.dc} "
                "only, choose scope datacenter"
            )
        if (
            isinstance(self.subranges, bool)
            or not isinstance(self.subranges, int)
            or not 1 <= self.subranges <= repair.MAX_SUBRANGES
        ):
            raise AirflowFailException(
                f"subranges must be an integer from 1 to {repair.MAX_SUBRANGES}, "
                f"got {self.subranges!r}"
            )

    def _targets(self, fixed: list[str]) -> list[_Target]:
        # A keyspace whose replication was just changed gets a whole, cluster-wide repair: its
        # new replicas are empty, whatever the trigger asked for.
        targets = [_Target(ks, (), "primary_range", ALL, "replication fixed") for ks in fixed]
        wanted = catalog().keyspaces if self.keyspace == ALL else (self.keyspace,)
        tables = () if self.table == ALL else (self.table,)
        targets += [
            _Target(ks, tables, self.scope, self.dc, "requested")
            for ks in wanted
            if ks not in fixed
        ]
        return targets

    def execute(self, context: Any) -> dict[str, Any]:
        hook = RetailCassandraHook(self.cassandra_conn_id)
        metrics = RetailStatsdHook(self.statsd_conn_id).metrics
        topology = hook.topology()
        self._validate([d.name for d in topology.datacenters])
        assert isinstance(self.subranges, int)
        check = (
            context["ti"].xcom_pull(task_ids=self.check_task_id) if self.check_task_id else None
        ) or {}
        targets = self._targets(list(check.get("repair_needed", [])))
        run_id = str(context.get("run_id", ""))
        repaired: dict[str, Any] = {}
        failed: dict[str, str] = {}
        jolokia = repair.Jolokia()
        try:
            with hook.session(consistency_level="QUORUM") as (cluster, session):
                ops = cluster.metadata.keyspaces.get(OPS_KEYSPACE)
                if ops is None or "repair_history" not in ops.tables:
                    raise AirflowFailException(
                        f"{repair.HISTORY_TABLE} does not exist: run the schema_migrations DAG "
                        "first, then this one again"
                    )
                for target in targets:
                    try:
                        repaired[target.keyspace] = self._repair(
                            jolokia, topology, session, metrics, target, run_id
                        )
                    except (RepairError, ConfigError) as exc:
                        failed[target.keyspace] = str(exc)
                        self.log.error("%s: repair FAILED: %s", target.keyspace, exc)
        finally:
            jolokia.close()
        if failed:
            raise RepairError(
                "repair failed for "
                + "; ".join(f"{ks}: {why}" for ks, why in failed.items())
                + (f" (succeeded and recorded: {', '.join(repaired)})" if repaired else "")
            )
        return {"repaired": repaired}

    def _repair(
        self,
        jolokia: repair.Jolokia,
        topology: Topology,
        session: Session,
        metrics: Metrics,
        target: _Target,
        run_id: str,
    ) -> dict[str, Any]:
        ks = target.keyspace
        assert isinstance(self.subranges, int)
        start = time.monotonic()
        try:
            steps = repair.plan(
                ks,
                repair.live_range_map(jolokia, topology, ks),
                topology,
                scope=target.scope,
                dc=target.dc,
                subranges=self.subranges,
                tables=target.tables,
            )
            nodes = sorted({s.node for s in steps})
            self.log.info(
                "%s (%s): full repair, scope %s, dc %s, tables %s: %d sessions on %s",
                ks,
                target.reason,
                target.scope,
                target.dc,
                ",".join(target.tables) or "all",
                len(steps),
                ", ".join(nodes) or "no node (nothing replicated there)",
            )

            def progress(done: int, total: int, result: repair.StepResult, elapsed: float) -> None:
                self.log.info(
                    "%s: %s in %.1fs [%d/%d sessions, %.1fs elapsed]",
                    "done" if result.command else "nothing to repair",
                    result.step.describe(),
                    result.seconds,
                    done,
                    total,
                    elapsed,
                )

            repair.run(jolokia, topology, steps, progress, timeout=self.step_timeout)
        except RepairError:
            metrics.timing(f"repair.{ks}.duration.failed", (time.monotonic() - start) * 1000)
            raise
        duration_ms = int((time.monotonic() - start) * 1000)
        metrics.timing(f"repair.{ks}.duration.success", duration_ms)
        tables = list(target.tables) or repair.keyspace_tables(session, ks)
        finished = datetime.now(UTC)
        if steps:
            repair.record_success(
                session,
                ks,
                tables,
                finished_at=finished,
                scope=repair.scope_label(target.scope, target.dc),
                cluster_wide=target.scope == "primary_range",
                subranges=self.subranges,
                duration_ms=duration_ms,
                run_id=run_id,
            )
            self.log.info(
                "%s: repair succeeded in %.1fs; recorded for %s", ks, duration_ms / 1000, tables
            )
        else:
            self.log.warning(
                "%s: nothing to repair: no range has two replicas in scope %s (replication "
                "factor 1 there); nothing recorded",
                ks,
                repair.scope_label(target.scope, target.dc),
            )
        return {
            "tables": tables,
            "scope": repair.scope_label(target.scope, target.dc),
            "reason": target.reason,
            "sessions": len(steps),
            "seconds": round(duration_ms / 1000, 3),
            "finished_at": finished.isoformat(),
        }


class RepairStateOperator(BaseOperator):
    """Send every platform table's last cluster-wide repair and gc_grace_seconds as gauges
    (``retail.repair.<keyspace>.<table>.last_success`` / ``.gc_grace_seconds``) so the
    TableRepairOverdue alert can tell an overdue table; lists the overdue ones."""

    def __init__(
        self,
        *,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cassandra_conn_id = cassandra_conn_id
        self.statsd_conn_id = statsd_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        hook = RetailCassandraHook(self.cassandra_conn_id)
        metrics = RetailStatsdHook(self.statsd_conn_id).metrics
        with hook.session(consistency_level="QUORUM") as (_, session):
            states = repair.table_states(session, catalog().keyspaces)
        repair.publish(metrics, states)
        now = datetime.now(UTC)
        overdue = []
        for s in states:
            late = s.overdue(now)
            if late:
                overdue.append(f"{s.keyspace}.{s.table}")
            self.log.log(
                logging.WARNING if late else logging.INFO,
                "%s.%s: last cluster-wide repair %s, gc_grace_seconds %d%s",
                s.keyspace,
                s.table,
                s.to_dict()["last_cluster_wide_success"] or "never",
                s.gc_grace_seconds,
                " OVERDUE: repair it before gc_grace_seconds runs out" if late else "",
            )
        return {
            "tables": {f"{s.keyspace}.{s.table}": s.to_dict() for s in states},
            "overdue": overdue,
        }
