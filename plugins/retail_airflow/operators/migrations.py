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
    refusing to go on if an applied file has changed; ``dry_run`` only lists what would run
    (from reads alone). A change that removes a DC from a keyspace's replication or lowers a
    replication factor is refused unless ``allow_replication_decrease``.

    Failures a retry can fix (the lock held or lost, schema agreement late, a node unreachable)
    raise as they are, so Airflow retries; the others (an edited or misnamed file, a statement
    the cluster rejects, a refused replication change) fail the task at once.
    """

    template_fields = ("dry_run", "allow_replication_decrease")

    def __init__(
        self,
        *,
        dry_run: bool | str = False,
        allow_replication_decrease: bool | str = False,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.dry_run = dry_run
        self.allow_replication_decrease = allow_replication_decrease
        self.cassandra_conn_id = cassandra_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        for name in self.template_fields:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a boolean, got {value!r}")
        hook = RetailCassandraHook(self.cassandra_conn_id)
        with hook.session(consistency_level="QUORUM") as (cluster, session):
            try:
                report = migrations.migrate(
                    cluster,
                    session,
                    hook.topology(),
                    dry_run=self.dry_run,
                    allow_replication_decrease=self.allow_replication_decrease,
                    on_statement=lambda m, stmt: self.log.info(
                        "%s: %s", m.path.name, stmt.splitlines()[0]
                    ),
                )
            except migrations.MigrationError as exc:
                if exc.retryable:
                    raise
                raise AirflowFailException(str(exc)) from exc
        self.log.info("%s", report.summary())
        return report.to_dict()
