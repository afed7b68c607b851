"""Materialized-view audits and rebuilds from Airflow."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from cassandra import Unavailable

from retail.catalog import View, catalog
from retail.connections import CASSANDRA_CONN_ID, STATSD_CONN_ID
from retail.errors import RetailError
from retail.ops import views
from retail_airflow.hooks import RetailCassandraHook, RetailStatsdHook

REBUILD_POLICIES = ("if_inconsistent", "always", "never")


class NodesDownError(RetailError):
    """The audit reads at ALL and a replica is down: retried, and the message says why."""

    def __init__(self, cause: Unavailable) -> None:
        super().__init__(
            f"the audit reads at consistency ALL and not every replica is up ({cause}); "
            "bring the node back (`retail stack status` shows which), the task retries"
        )


def selected_views(name: str) -> list[View]:
    """``all`` or one view of the catalogue; anything else fails the task for good."""
    known = catalog().views
    if name == "all":
        return list(known.values())
    if name not in known:
        raise AirflowFailException(
            f"unknown view {name!r}; choose 'all' or one of: {', '.join(known)}"
        )
    return [known[name]]


def _send_view_metrics(statsd_conn_id: str, audits: list[views.ViewAudit]) -> None:
    metrics = RetailStatsdHook(statsd_conn_id).metrics
    for a in audits:
        metrics.gauge(f"views.{a.view}.inconsistent", 0 if a.consistent else 1)
        metrics.gauge(f"views.{a.view}.missing_rows", a.missing_rows)


class ViewAuditOperator(BaseOperator):
    """Compare each selected materialized view with its base table at consistency ALL (counts,
    sampled keys both ways) and check its build status on every node. Sends
    ``retail.views.<view>.inconsistent`` and ``.missing_rows``; returns ``{view: audit}``."""

    template_fields = ("view",)

    def __init__(
        self,
        *,
        view: str = "all",
        sample: int = 200,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 1 <= sample <= 10_000:
            raise ValueError(f"sample must be 1..10000 rows, got {sample}")
        self.view = view
        self.sample = sample
        self.cassandra_conn_id = cassandra_conn_id
        self.statsd_conn_id = statsd_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        selected = selected_views(self.view)
        hook = RetailCassandraHook(self.cassandra_conn_id)
        audits = []
        with hook.session(consistency_level="ALL") as (cluster, session):
            for v in selected:
                self.log.info("auditing %s.%s against %s", v.keyspace, v.name, v.base_table)
                try:
                    audit = views.audit_view(
                        cluster, session, hook.topology(), v, sample=self.sample
                    )
                except Unavailable as exc:
                    raise NodesDownError(exc) from exc
                (self.log.info if audit.consistent else self.log.warning)("%s", audit.summary())
                audits.append(audit)
        _send_view_metrics(self.statsd_conn_id, audits)
        return {a.view: a.to_dict() for a in audits}


class ViewRebuildOperator(BaseOperator):
    """Drop and recreate views from their migration's DDL, then wait until every node reports
    them built and an audit passes. ``rebuild``: ``if_inconsistent`` (by the audit task's
    XCom), ``always``, or ``never`` (the task is skipped)."""

    template_fields = ("view", "rebuild")

    def __init__(
        self,
        *,
        audit_task_id: str,
        view: str = "all",
        rebuild: str = "if_inconsistent",
        timeout: float = 900,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.audit_task_id = audit_task_id
        self.view = view
        self.rebuild = rebuild
        self.timeout = timeout
        self.cassandra_conn_id = cassandra_conn_id
        self.statsd_conn_id = statsd_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        if self.rebuild not in REBUILD_POLICIES:
            raise AirflowFailException(
                f"rebuild must be one of {', '.join(REBUILD_POLICIES)}, got {self.rebuild!r}"
            )
        if self.rebuild == "never":
            raise AirflowSkipException("rebuild=never: audit only")
        selected = selected_views(self.view)
        if self.rebuild == "if_inconsistent":
            audited = context["ti"].xcom_pull(task_ids=self.audit_task_id) or {}
            selected = [v for v in selected if not audited.get(v.name, {}).get("consistent")]
            if not selected:
                raise AirflowSkipException("every audited view is consistent: nothing to rebuild")
        hook = RetailCassandraHook(self.cassandra_conn_id)
        audits = []
        # QUORUM for the schema changes; the audits inside set ALL on every read themselves.
        with hook.session(consistency_level="QUORUM") as (cluster, session):
            for v in selected:
                try:
                    audit = views.rebuild_view(
                        cluster,
                        session,
                        hook.topology(),
                        v,
                        timeout=self.timeout,
                        progress=lambda msg: self.log.info("%s", msg),
                    )
                except views.ViewError:
                    _send_view_metrics(
                        self.statsd_conn_id,
                        [views.audit_view(cluster, session, hook.topology(), v)],
                    )
                    raise
                audits.append(audit)
        _send_view_metrics(self.statsd_conn_id, audits)
        return {
            "rebuilt": [a.view for a in audits],
            "audits": {a.view: a.to_dict() for a in audits},
        }
