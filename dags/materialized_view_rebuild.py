"""
### Materialized views and rollups: audit, rebuild, repair

**Every 30 minutes** (audit only, nothing is changed) and **on demand** from the trigger form.

1. **audit_views**: each selected materialized view (today `retail.orders_by_customer` over
   `retail.orders`) is compared with its base table at consistency **ALL** (every replica
   answers, so a row not yet replicated is not reported as missing, and a missing one is not
   hidden): row counts, 200 sampled base rows looked up in the view (same values?), 200 sampled
   view rows looked up in the base, and the build status on every node
   (`system_distributed.view_build_status`). Sends `retail.views.<view>.inconsistent` (0/1) and
   `retail.views.<view>.missing_rows`; the XCom holds the full report. Needs every node up.
2. **rebuild_views** (param `rebuild`): `if_inconsistent` rebuilds the views the audit found
   wrong, `always` rebuilds the selected views, `never` skips. A rebuild drops the view,
   recreates it from its migration's DDL, waits (progress in the log, 15-minute deadline) until
   every node reports it built, and audits it again. Reads of the view fail while it rebuilds.
3. **fix_rollups** (param `fix_rollups`): recomputes `sales_by_store_hour`,
   `sales_by_region_day` and `stock_by_store` for the last `window_hours` hours from the base
   rows, overwrites the buckets that differ (timestamped at the start of the repair, so a
   consumer's newer recompute wins) and reports per table: buckets checked, corrected, examples.
   Sends `retail.rollups.<table>.corrected`.

If the audit task fails with `Unavailable`, a node is down: bring it back (`retail stack
status`) and trigger again.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from retail.catalog import catalog
from retail.ops.rollups import MAX_WINDOW_HOURS
from retail_airflow.defaults import DEFAULT_ARGS, START_DATE
from retail_airflow.operators.rollups import RollupRepairOperator
from retail_airflow.operators.views import (
    REBUILD_POLICIES,
    ViewAuditOperator,
    ViewRebuildOperator,
)

with DAG(
    dag_id="materialized_view_rebuild",
    doc_md=__doc__,
    schedule=timedelta(minutes=30),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["cassandra", "views", "rollups"],
    render_template_as_native_obj=True,
    # The defaults are what the scheduled runs use: audit only.
    params={
        "view": Param(
            "all",
            type="string",
            enum=["all", *catalog().views],
            description="The materialized view to audit (and rebuild), or all of them.",
        ),
        "rebuild": Param(
            "never",
            type="string",
            enum=list(REBUILD_POLICIES),
            description=(
                "Rebuild (drop, recreate, wait until built): if the audit finds it "
                "inconsistent, always, or never (audit only)."
            ),
        ),
        "window_hours": Param(
            3,
            type="integer",
            minimum=1,
            maximum=MAX_WINDOW_HOURS,
            description="Hours back (the current one included) whose rollups are recomputed.",
        ),
        "fix_rollups": Param(
            False,
            type="boolean",
            description="Recompute the rollups of the window and overwrite the wrong buckets.",
        ),
    },
) as dag:
    audit = ViewAuditOperator(task_id="audit_views", view="{{ params.view }}")
    rebuild = ViewRebuildOperator(
        task_id="rebuild_views",
        audit_task_id="audit_views",
        view="{{ params.view }}",
        rebuild="{{ params.rebuild }}",
    )
    fix = RollupRepairOperator(
        task_id="fix_rollups",
        # Reads every registered store's days of the window (at most a week of them).
        execution_timeout=timedelta(minutes=30),
        window_hours="{{ params.window_hours }}",
        fix_rollups="{{ params.fix_rollups }}",
        # After the views, whatever they did (a skipped rebuild is not a reason to skip this).
        trigger_rule="none_failed",
    )
    audit >> rebuild >> fix
