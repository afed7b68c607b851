"""
### Materialized views and rollups: audit, rebuild, repair

**Every 30 minutes** (audit only, nothing is changed) and **on demand** from the trigger form.

1. **audit_views**: each selected materialized view (today `retail.orders_by_customer` over
   `retail.orders`) is compared with its base table at consistency **ALL** (every replica
   answers, so a row not yet replicated is not reported as missing, and a missing one is not
   hidden) over the **next slice of the ring**, never the whole table: from a cursor kept in
   `retail_ops.view_audit_cursor`, the next `audit_rows` base rows (in token order, wrapping at
   the ring's end) are looked up in the view (one read per view partition), and the next
   `audit_rows` view rows in the base (view rows without a base row). A run's cost does not grow
   with the table; the log and the XCom show the share of the ring each run covered and where
   the current pass stands. A mismatch is read again `settle_seconds` later and reported only if
   it is still there (a live stream's view writes land asynchronously), and stays reported until
   a whole pass over the ring has found none. Also checks the build status on every node
   (`system_distributed.view_build_status`). Sends `retail.views.<view>.inconsistent` (0/1) and
   `retail.views.<view>.missing_rows` (in the slice audited); the XCom holds the full report.
   Needs every node up.
2. **rebuild_views** (param `rebuild`): `if_inconsistent` rebuilds the views the audit found
   wrong, `always` rebuilds the selected views, `never` skips. A rebuild drops the view,
   recreates it from its migration's DDL, records the new view's id under the run in
   `retail_ops.view_rebuilds`, waits (progress in the log) until every node reports it built,
   and audits it from the ring's start. `build_timeout` seconds from the start of a try, the
   drop and create included; past it the try fails and is **retried without dropping the view
   again**: a retry that finds the view this run created keeps it and waits on (`kept` in the
   XCom). Reads of the view fail while it rebuilds. An unknown view or a bad param fails at once.
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
    AUDIT_ROWS,
    MAX_AUDIT_ROWS,
    MAX_BUILD_TIMEOUT,
    MAX_SETTLE_SECONDS,
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
        "audit_rows": Param(
            AUDIT_ROWS,
            type="integer",
            minimum=1,
            maximum=MAX_AUDIT_ROWS,
            description=(
                "Rows of each ring (the base table's, the view's) one audit reads, from where "
                "the last run stopped: bounds the audit's cost whatever the table holds."
            ),
        ),
        "settle_seconds": Param(
            5,
            type="integer",
            minimum=0,
            maximum=MAX_SETTLE_SECONDS,
            description=(
                "Seconds a mismatch is given before it is read again; reported only if still "
                "there (view writes land asynchronously)."
            ),
        ),
        "build_timeout": Param(
            900,
            type="integer",
            minimum=0,
            maximum=MAX_BUILD_TIMEOUT,
            description=(
                "Seconds a rebuild try may take until every node has built the view; a retry "
                "keeps the view it created and waits on."
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
    audit = ViewAuditOperator(
        task_id="audit_views",
        view="{{ params.view }}",
        rows="{{ params.audit_rows }}",
        settle_seconds="{{ params.settle_seconds }}",
        # Bounded reads per view and a settle delay: minutes at most, whatever the table holds.
        execution_timeout=timedelta(minutes=15),
    )
    rebuild = ViewRebuildOperator(
        task_id="rebuild_views",
        audit_task_id="audit_views",
        view="{{ params.view }}",
        rebuild="{{ params.rebuild }}",
        build_timeout="{{ params.build_timeout }}",
        rows="{{ params.audit_rows }}",
        settle_seconds="{{ params.settle_seconds }}",
        # Above the longest build_timeout, with room for the drop, create and audit.
        execution_timeout=timedelta(seconds=MAX_BUILD_TIMEOUT) + timedelta(minutes=15),
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
