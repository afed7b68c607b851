"""
### Schema migrations

Applies the versioned CQL files of `include/cql/` in order, the same code as `retail migrate`:

- each applied file is recorded in `retail_ops.schema_migrations` with its checksum, and a run
  **refuses to go on** if an applied file has been edited since (write a new `V<n>__*.cql`);
- a cluster-wide lock (a lightweight transaction on `retail_ops.migration_lock`, with a TTL)
  keeps two runs from racing; a heartbeat renews it while the run lasts, and a run that lost it
  stops before its next statement;
- a file's statements go out without waiting in between; the run waits for the nodes to agree
  on the schema at the end of each file, and before a statement that names an object an earlier
  statement of the file changed (a type before its table, a table before its view, a drop before
  the create of the same name). The log shows file *n* of *N* and each agreement's time;
- before anything runs, every keyspace replication change (from the migrations, and
  `system_auth`/`system_distributed` given the topology's replication) is logged with its before
  and after; one that **removes a DC or lowers a replication factor is refused** unless
  **allow_replication_decrease** is on.

Trigger with **dry_run** on to see what would be applied: it only reads (no keyspace, table or
lock row is created). Retried: a lock held, a lost lock, schema agreement late. Failed at once:
an edited or misnamed file, a statement the cluster rejects, a refused replication change.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from retail_airflow.defaults import DEFAULT_ARGS, START_DATE
from retail_airflow.operators.migrations import SchemaMigrationsOperator

with DAG(
    dag_id="schema_migrations",
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    # Retries after 30, 60 and 120 s outlast the lock's TTL (retail.migrations.LOCK_TTL_SECONDS)
    # of a killed try; statements are IF NOT EXISTS, so a retry redoes a file safely. What a
    # retry cannot fix fails at once (AirflowFailException).
    default_args={
        **DEFAULT_ARGS,
        "retries": 3,
        # Seconds on the demo profile; each agreement waits at most 120 s.
        "execution_timeout": timedelta(minutes=15),
    },
    tags=["cassandra", "schema"],
    render_template_as_native_obj=True,
    params={
        "dry_run": Param(
            False,
            type="boolean",
            description="Only list the migrations (and replication changes) that would be "
            "applied; reads only.",
        ),
        "allow_replication_decrease": Param(
            False,
            type="boolean",
            description="Allow a migration that removes a DC from a keyspace's replication or "
            "lowers a replication factor (fewer copies of the data).",
        ),
    },
) as dag:
    SchemaMigrationsOperator(
        task_id="apply_migrations",
        dry_run="{{ params.dry_run }}",
        allow_replication_decrease="{{ params.allow_replication_decrease }}",
    )
