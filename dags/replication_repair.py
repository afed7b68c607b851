"""
### Replication check and repair

Runs daily, and from the UI for one keyspace, table or DC. Three tasks:

1. **check_replication**: compares the live replication of `retail`, `retail_ops`,
   `system_auth` and `system_distributed` with the topology (NetworkTopologyStrategy, one
   replication factor per DC) and reports any drift in the task log, in XCom and as
   `retail_replication_drift{keyspace}`. With **fix_drift** on, a drifted keyspace is altered to
   the topology's replication (nothing typed in the form reaches the statement) and then
   repaired in full, because new replicas hold no data until a repair streams it there.
2. **repair**: Cassandra's full (not incremental) anti-entropy repair, through the StorageService
   MBean of each node, one subrange at a time; the log shows node, subrange i/n and elapsed time.
   - scope **primary_range** (`nodetool repair -full -pr` on every node in turn): every range is
     compared between all its replicas in every DC. This is the repair that counts for
     `gc_grace_seconds`; dc must be `all`.
   - scope **datacenter** (`-full -dc DC`): the same inside one DC (or each DC in turn with
     `all`), with no cross-DC traffic; it does not sync the DCs with each other. A DC with
     replication factor 1 (the test stack) has nothing to compare inside, and is skipped.
   Each success is recorded in `retail_ops.repair_history`; the duration goes to
   `retail_repair_duration_seconds{keyspace,outcome}`.
3. **report_repair_state** (after a successful repair): sends every table's last
   cluster-wide repair and its `gc_grace_seconds`, which the **TableRepairOverdue** alert
   compares, and lists the overdue tables.

**How long**: on the 3-node test stack a keyspace takes seconds (about 0.5 s per session:
nodes x subranges sessions, more if a table is big). On a loaded cluster expect roughly the time
to read every replica's data once (validation compaction) plus streaming of what differs; use
more subranges to make each session, and a retry after a failure, smaller. Every node must be up
(UN): a repair with a replica down fails and says so; bring the node back and trigger again (a
repeated repair is harmless).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from retail.catalog import catalog
from retail.ops.repair import MAX_SUBRANGES, SCOPES
from retail.topology import REGIONS
from retail_airflow.defaults import DEFAULT_ARGS, START_DATE
from retail_airflow.operators.repair import (
    RepairOperator,
    RepairStateOperator,
    ReplicationCheckOperator,
)

CATALOG = catalog()
TABLES = sorted({t for ks in CATALOG.keyspaces for t in CATALOG.tables_of(ks)})

with DAG(
    dag_id="replication_repair",
    doc_md=__doc__,
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    # Two repairs of the same ranges at once only compete for the same disks and streams.
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    dagrun_timeout=timedelta(hours=12),
    tags=["cassandra", "repair", "replication"],
    render_template_as_native_obj=True,
    params={
        "keyspace": Param(
            "all",
            type="string",
            enum=["all", *CATALOG.keyspaces],
            description="Keyspace to repair; all repairs every platform keyspace.",
        ),
        "table": Param(
            "all",
            type="string",
            enum=["all", *TABLES],
            description="One table of the chosen keyspace, or all of its tables.",
        ),
        "dc": Param(
            "all",
            type="string",
            enum=["all", *(r.dc for r in REGIONS)],
            description="With scope datacenter: the DC to repair inside (all: each in turn).",
        ),
        "scope": Param(
            "primary_range",
            type="string",
            enum=list(SCOPES),
            description="primary_range: -pr on every node, across all DCs (counts for "
            "gc_grace_seconds). datacenter: -dc, replicas inside one DC only.",
        ),
        "subranges": Param(
            4,
            type="integer",
            minimum=1,
            maximum=MAX_SUBRANGES,
            description="Pieces each node's ranges are repaired in (one repair session each).",
        ),
        "fix_drift": Param(
            False,
            type="boolean",
            description="Alter a keyspace whose replication differs from the topology, then "
            "repair it in full.",
        ),
    },
) as dag:
    check = ReplicationCheckOperator(
        task_id="check_replication", fix_drift="{{ params.fix_drift }}"
    )
    repair = RepairOperator(
        task_id="repair",
        keyspace="{{ params.keyspace }}",
        table="{{ params.table }}",
        dc="{{ params.dc }}",
        scope="{{ params.scope }}",
        subranges="{{ params.subranges }}",
        check_task_id="check_replication",
    )
    # After a successful repair only: a leaf task that ran anyway would mark a failed repair's
    # run successful (a run's state is its leaves'), hiding it from the DagRunFailed alert. The
    # gauges of the last run stay in statsd_exporter meanwhile.
    state = RepairStateOperator(task_id="report_repair_state")
    check >> repair >> state
