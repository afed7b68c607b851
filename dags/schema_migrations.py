"""
### Schema migrations

Applies the versioned CQL files of `include/cql/` in order, the same code as `retail migrate`:

- each applied file is recorded in `retail_ops.schema_migrations` with its checksum, and a run
  **refuses to go on** if an applied file has been edited since (write a new `V<n>__*.cql`);
- a cluster-wide lock (a lightweight transaction on `retail_ops.migration_lock`) keeps two
  runs from racing;
- after every statement the run waits for the nodes to agree on the schema.

Trigger with **dry_run** on to see what would be applied without changing anything.
"""

from __future__ import annotations

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
    # One retry, for a timeout: statements are IF NOT EXISTS and the lock expires. An edited
    # migration fails the same way twice and needs a person.
    default_args={**DEFAULT_ARGS, "retries": 1},
    tags=["cassandra", "schema"],
    render_template_as_native_obj=True,
    params={
        "dry_run": Param(
            False, type="boolean", description="Only list the migrations that would be applied."
        ),
    },
) as dag:
    SchemaMigrationsOperator(task_id="apply_migrations", dry_run="{{ params.dry_run }}")
