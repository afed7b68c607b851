"""Schema migrations from Airflow, with the same code as ``retail migrate``."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from retail import migrations
from retail.connections import CASSANDRA_CONN_ID
from retail_airflow.hooks import RetailCassandraHook


class SchemaMigrationsOperator(BaseOperator):
    """Apply the pending ``include/cql`` migrations in order under the cluster-wide lock,
    refusing to go on if an applied file has changed; ``dry_run`` only lists what would run."""

    template_fields = ("dry_run",)

    def __init__(
        self, *, dry_run: bool | str = False, cassandra_conn_id: str = CASSANDRA_CONN_ID, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.dry_run = dry_run
        self.cassandra_conn_id = cassandra_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        if not isinstance(self.dry_run, bool):
            raise TypeError(f"dry_run must be a boolean, got {self.dry_run!r}")
        hook = RetailCassandraHook(self.cassandra_conn_id)
        with hook.session(consistency_level="QUORUM") as (cluster, session):
            try:
                report = migrations.migrate(
                    cluster,
                    session,
                    hook.topology(),
                    dry_run=self.dry_run,
                    on_statement=lambda m, stmt: self.log.info(
                        "%s: %s", m.path.name, stmt.splitlines()[0]
                    ),
                )
            except migrations.MigrationError as exc:
                # An edited or missing migration: a retry would fail the same way.
                raise AirflowFailException(str(exc)) from exc
        self.log.info("%s", report.summary())
        return {
            "applied_before": report.applied_before,
            "pending": [m.version for m in report.pending],
            "applied_now": report.applied_now,
            "dry_run": report.dry_run,
        }
