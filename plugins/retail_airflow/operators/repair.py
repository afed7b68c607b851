"""Replication checks and anti-entropy repairs from Airflow (logic in retail.ops)."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from cassandra.cluster import Cluster, Session

from retail.catalog import catalog
from retail.connections import CASSANDRA_CONN_ID, STATSD_CONN_ID
from retail.errors import ConfigError
from retail.jolokia import Jolokia, JolokiaError
from retail.metrics import Metrics
from retail.migrations import OPS_KEYSPACE
from retail.ops import repair, repair_lease, replication
from retail.ops.repair import RepairError, RepairRefused
from retail.topology import Topology
from retail_airflow.hooks import RetailCassandraHook, RetailStatsdHook

ALL = "all"
MAX_LEASE_WAIT = 3 * 3600
# What the repair task needs in retail_ops (V005, V008).
OPS_TABLES = ("repair_history", "repair_lease", "repair_inflight")


@dataclass(frozen=True)
class _Stores:
    leases: repair_lease.LeaseStore
    inflight: repair_lease.InFlightStore


class ReplicationCheckOperator(BaseOperator):
    """Compare every platform keyspace's live replication with the topology, report the drift
    (XCom, task log, ``retail.repair.<keyspace>.drift``), and with ``fix_drift`` alter a drifted
    keyspace to the topology's replication; the repair task then repairs it.

    A fix that would remove a DC from a keyspace or lower a DC's replication factor is refused,
    before anything is altered, unless ``allow_replication_decrease``; the log shows every
    keyspace's replication before, and after for those altered."""

    template_fields = ("fix_drift", "allow_replication_decrease")

    def __init__(
        self,
        *,
        fix_drift: bool | str = False,
        allow_replication_decrease: bool | str = False,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fix_drift = fix_drift
        self.allow_replication_decrease = allow_replication_decrease
        self.cassandra_conn_id = cassandra_conn_id
        self.statsd_conn_id = statsd_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        for name in ("fix_drift", "allow_replication_decrease"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise AirflowFailException(f"{name} must be true or false, got {value!r}")
        hook = RetailCassandraHook(self.cassandra_conn_id)
        metrics = RetailStatsdHook(self.statsd_conn_id).metrics
        topology = hook.topology()
        keyspaces = replication.platform_keyspaces(catalog().keyspaces)
        report: dict[str, Any] = {}
        with hook.session(consistency_level="QUORUM") as (cluster, session):
            drifts = replication.check(session, topology, keyspaces)
            for drift in drifts:
                self.log.info(
                    "%s: replication before: %s", drift.keyspace, replication.render(drift.live)
                )
            if self.fix_drift:
                try:
                    replication.refuse_decreases(drifts, self.allow_replication_decrease)
                except replication.ReplicationDecreaseRefused as exc:
                    # A retry would refuse the same; the reason and the param are in the message.
                    raise AirflowFailException(str(exc)) from exc
            for drift in drifts:
                report[drift.keyspace] = self._one(cluster, session, topology, keyspaces, drift)
                still_drifted = drift.drifted and not report[drift.keyspace]["fixed"]
                metrics.gauge(f"repair.{drift.keyspace}.drift", 1 if still_drifted else 0)
        fixed = [ks for ks, e in report.items() if e["fixed"]]
        return {
            "keyspaces": report,
            "drifted": [ks for ks, e in report.items() if e["drift"]],
            "fixed": fixed,
            "repair_needed": fixed,
        }

    def _one(
        self,
        cluster: Cluster,
        session: Session,
        topology: Topology,
        keyspaces: tuple[str, ...],
        drift: replication.Drift,
    ) -> dict[str, Any]:
        entry = drift.to_dict() | {"fixed": False, "decreases": replication.decreases(drift)}
        if not drift.drifted:
            self.log.info("%s: replication matches the topology", drift.keyspace)
            return entry
        self.log.warning(
            "%s: REPLICATION DRIFT: %s%s",
            drift.keyspace,
            "; ".join(drift.differences()),
            f" (the fix would {', '.join(entry['decreases'])})" if entry["decreases"] else "",
        )
        if not drift.fixable:
            return entry
        if not self.fix_drift:
            self.log.warning(
                "%s: not fixed; trigger replication_repair with fix_drift=true to alter it to "
                "the topology's replication and repair it",
                drift.keyspace,
            )
            return entry
        try:
            entry["statement"] = replication.fix(
                cluster,
                session,
                drift,
                topology,
                keyspaces,
                allow_decrease=self.allow_replication_decrease is True,
            )
        except replication.ReplicationError as exc:
            raise AirflowFailException(str(exc)) from exc
        after = replication.live_replication(session, drift.keyspace)
        entry["fixed"] = True
        entry["after"] = after
        self.log.warning(
            "%s: replication altered: before %s, after %s. Its new replicas hold no data until "
            "a full repair streams it: the repair task runs one now",
            drift.keyspace,
            replication.render(drift.live),
            replication.render(after),
        )
        return entry


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
    it finishes; durations go to ``retail.repair.<keyspace>.duration.<success|failed>``.

    Safe to retry and to overlap (see ``retail.ops.repair``, the lease section):

    * each keyspace is repaired under its lease in ``retail_ops.repair_lease``; another holder
      is waited for up to ``lease_wait_seconds``, then the try fails (retryably) naming it;
    * a retry (try 2 and later) first waits for the session the failed try left running, up to
      ``leftover_timeout`` seconds, then terminates it (``terminate_leftovers``), and logs the
      repair sessions it found on every node;
    * a request a retry cannot fix (unknown keyspace or table, invalid params, a ring the
      topology does not know) fails at once with AirflowFailException.
    """

    template_fields = ("keyspace", "table", "dc", "scope", "subranges", "lease_wait_seconds")

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
        lease_wait_seconds: int | str = 900,
        leftover_timeout: float = 600.0,
        terminate_leftovers: bool = True,
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
        self.lease_wait_seconds = lease_wait_seconds
        self.leftover_timeout = leftover_timeout
        self.terminate_leftovers = terminate_leftovers
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
        wait = self.lease_wait_seconds
        if isinstance(wait, bool) or not isinstance(wait, int) or not 0 <= wait <= MAX_LEASE_WAIT:
            raise AirflowFailException(
                f"lease_wait_seconds must be an integer from 0 to {MAX_LEASE_WAIT}, got {wait!r}"
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
        check = (
            context["ti"].xcom_pull(task_ids=self.check_task_id) if self.check_task_id else None
        ) or {}
        targets = self._targets(list(check.get("repair_needed", [])))
        claim = repair_lease.Claim.of(context)
        run_id = str(context.get("run_id", ""))
        result: dict[str, Any] = {}
        repaired: dict[str, Any] = {}
        failed: dict[str, str] = {}
        refused: dict[str, str] = {}
        jolokia = hook.jolokia()
        try:
            with hook.session(consistency_level="QUORUM") as (cluster, session):
                ops = cluster.metadata.keyspaces.get(OPS_KEYSPACE)
                missing = [t for t in OPS_TABLES if ops is None or t not in ops.tables]
                if missing:
                    raise AirflowFailException(
                        f"{', '.join(f'{OPS_KEYSPACE}.{t}' for t in missing)} missing: run the "
                        "schema_migrations DAG first, then this one again"
                    )
                store = _Stores(
                    repair_lease.LeaseStore(session), repair_lease.InFlightStore(session)
                )
                if claim.try_number > 1:
                    result["leftovers"] = self._settle(jolokia, topology, store, claim)
                for target in targets:
                    try:
                        repaired[target.keyspace] = self._repair(
                            jolokia, topology, session, store, metrics, target, run_id, claim
                        )
                    except (RepairRefused, ConfigError) as exc:
                        refused[target.keyspace] = str(exc)
                        self.log.error("%s: repair REFUSED: %s", target.keyspace, exc)
                    except (RepairError, JolokiaError) as exc:
                        failed[target.keyspace] = str(exc)
                        self.log.error("%s: repair FAILED: %s", target.keyspace, exc)
        finally:
            jolokia.close()
        if failed or refused:
            message = (
                "repair failed for "
                + "; ".join(f"{ks}: {why}" for ks, why in (failed | refused).items())
                + (f" (succeeded and recorded: {', '.join(repaired)})" if repaired else "")
            )
            # Retried only if a retry can change something (a lease held, a node down).
            raise RepairError(message) if failed else AirflowFailException(message)
        return result | {"repaired": repaired}

    def _settle(
        self,
        jolokia: Jolokia,
        topology: Topology,
        store: _Stores,
        claim: repair_lease.Claim,
    ) -> dict[str, Any]:
        """What the earlier tries left running, waited for (or terminated) before any new
        session; under the keyspace's lease when a session is known to be left."""
        left = store.inflight.get(claim.owner)
        if left is not None and left.try_number >= claim.try_number:
            left = None  # not an earlier try's (cannot happen with one try at a time)
        self.log.info(
            "try %d: checking for repair sessions the failed try left running (%s)",
            claim.try_number,
            f"it had started #{left.command} on {left.node}: {left.what}" if left else "none known",
        )
        settle = functools.partial(
            repair_lease.settle_leftovers,
            jolokia,
            topology,
            timeout=self.leftover_timeout,
            terminate=self.terminate_leftovers,
            say=self.log.info,
        )
        if left is None:
            return settle(None)
        lease = self._lease(store, left.keyspace, claim, "leftover check")
        lease.acquire()
        try:
            found = settle(left)
            store.inflight.clear(claim.owner)
        finally:
            lease.release()
        return found

    def _lease(
        self, store: _Stores, keyspace: str, claim: repair_lease.Claim, scope: str
    ) -> repair_lease.Lease:
        assert isinstance(self.lease_wait_seconds, int)
        return repair_lease.Lease(
            store.leases,
            keyspace,
            claim,
            scope,
            wait_seconds=self.lease_wait_seconds,
            poll_seconds=min(15.0, max(self.lease_wait_seconds / 4, 1.0)),
            say=self.log.info,
        )

    def _repair(
        self,
        jolokia: Jolokia,
        topology: Topology,
        session: Session,
        store: _Stores,
        metrics: Metrics,
        target: _Target,
        run_id: str,
        claim: repair_lease.Claim,
    ) -> dict[str, Any]:
        ks = target.keyspace
        assert isinstance(self.subranges, int)
        label = repair.scope_label(target.scope, target.dc)
        lease = self._lease(store, ks, claim, label)
        lease.acquire()
        self.log.info("%s: repair lease held by %s (try %d)", ks, claim.owner, claim.try_number)
        running: list[tuple[str, int]] = []  # the session started and not seen finished
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

            def started(step: repair.RepairStep, command: int) -> None:
                running[:] = [(step.node, command)]
                store.inflight.record(claim, step, command, datetime.now(UTC))

            def progress(done: int, total: int, result: repair.StepResult, elapsed: float) -> None:
                running.clear()
                self.log.info(
                    "%s: %s in %.1fs [%d/%d sessions, %.1fs elapsed]",
                    "done" if result.command else "nothing to repair",
                    result.step.describe(),
                    result.seconds,
                    done,
                    total,
                    elapsed,
                )

            repair.run(
                jolokia,
                topology,
                steps,
                progress,
                before_step=lease.check,
                on_start=started,
                timeout=self.step_timeout,
            )
            store.inflight.clear(claim.owner)
        except (RepairError, JolokiaError):
            metrics.timing(f"repair.{ks}.duration.failed", (time.monotonic() - start) * 1000)
            raise
        finally:
            self._end_lease(jolokia, topology, lease, running)
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
                scope=label,
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
                label,
            )
        return {
            "tables": tables,
            "scope": label,
            "reason": target.reason,
            "sessions": len(steps),
            "seconds": round(duration_ms / 1000, 3),
            "finished_at": finished.isoformat(),
        }

    def _end_lease(
        self,
        jolokia: Jolokia,
        topology: Topology,
        lease: repair_lease.Lease,
        running: list[tuple[str, int]],
    ) -> None:
        """Release the lease, unless a session this try started may still be running (a step
        timeout, the task's execution_timeout, a node that stopped answering): then the lease
        is left to expire, so that no other repair starts on those ranges meanwhile; a retry
        of this task takes it over and waits for the session first."""
        if running:
            node, command = running[0]
            try:
                state = repair_lease.command_state(jolokia, topology.node(node), command)
            except (RepairError, JolokiaError):
                state = "UNKNOWN (the node did not answer)"
            if state == "IN_PROGRESS" or state.startswith("UNKNOWN ("):
                lease.abandon()
                self.log.warning(
                    "%s: repair #%d on %s is %s: the lease is kept until it expires (%ds after "
                    "its last renewal); a retry takes it over and waits for the session",
                    lease.keyspace,
                    command,
                    node,
                    state,
                    lease.store.ttl,
                )
                return
        if not lease.release():
            self.log.warning(
                "%s: the repair lease was no longer this task's when released", lease.keyspace
            )


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
