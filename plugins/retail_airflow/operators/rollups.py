"""The rollup repair from Airflow: recount a window's rollup buckets from the base rows."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from cassandra import Unavailable

from retail.connections import CASSANDRA_CONN_ID, STATSD_CONN_ID
from retail.errors import ConfigError
from retail.ops import rollups
from retail_airflow.hooks import RetailCassandraHook, RetailStatsdHook
from retail_airflow.operators.views import NodesDownError


class RollupRepairOperator(BaseOperator):
    """Recompute the application-maintained rollups (sales_by_store_hour, sales_by_region_day,
    stock_by_store) of the last ``window_hours`` hours from the base rows at consistency ALL,
    overwrite the buckets that differ, and report them. Sends
    ``retail.rollups.<table>.corrected``. Skipped unless ``fix_rollups`` is true."""

    template_fields = ("window_hours", "fix_rollups")

    def __init__(
        self,
        *,
        window_hours: int | str = 3,
        fix_rollups: bool | str = False,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.window_hours = window_hours
        self.fix_rollups = fix_rollups
        self.cassandra_conn_id = cassandra_conn_id
        self.statsd_conn_id = statsd_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        if not isinstance(self.fix_rollups, bool):
            raise AirflowFailException(f"fix_rollups must be a boolean, got {self.fix_rollups!r}")
        if not self.fix_rollups:
            raise AirflowSkipException("fix_rollups is off")
        try:
            window = rollups.Window.last(self.window_hours)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from exc
        hook = RetailCassandraHook(self.cassandra_conn_id)
        with hook.session(consistency_level="ALL") as (_, session):
            try:
                report = rollups.repair_rollups(
                    session,
                    [dc.name for dc in hook.topology().datacenters],
                    window,
                    progress=lambda msg: self.log.info("%s", msg),
                )
            except Unavailable as exc:
                raise NodesDownError(exc) from exc
        metrics = RetailStatsdHook(self.statsd_conn_id).metrics
        result = report.to_dict()
        for table, t in result["tables"].items():
            metrics.incr(f"rollups.{table}.corrected", t["buckets_corrected"])
            self.log.info(
                "%s: %d buckets checked, %d corrected",
                table,
                t["buckets_checked"],
                t["buckets_corrected"],
            )
        return result
