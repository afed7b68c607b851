"""
### Ring maintenance: cleanup after a node joins

**When to run it**: after a Cassandra node has joined a DC (`retail stack add-node DC`, or a
bootstrap in production) and shows **UN** everywhere (`retail stack status`). The new node took
over token ranges from the other nodes of its DC, but they keep that data on disk until a
**cleanup** rewrites their SSTables without it: their load stays high, and the copies would come
back as stale data if those ranges ever moved back (a later decommission). Run it once per join,
with **dcs** set to the DC that grew; running it again, or with no join, only costs compaction
I/O. Manual trigger only: it has no schedule.

**What it does** (one task, **ring_maintenance**):

1. **Pre-flight**: refuses to start, saying what to do, while any node is not UN (down, still
   joining, leaving or moving: Cassandra itself refuses a cleanup with ranges pending), while
   the ring holds a node the `retail_cassandra` connection's topology does not list (refresh it
   with `retail airflow-env`), or while a **repair** runs on any node (the replication_repair DAG
   or a `nodetool repair`: wait for it). A refusal is not retried.
2. **Before**: every node's ownership (its share of its DC's token ring) and load, read through
   each node's Jolokia, to the task log and StatsD (`retail_ring_owns{phase="before",dc,node}`,
   `retail_ring_load_bytes{phase="before",dc,node}`).
3. **Cleanup** (`nodetool cleanup -j 2`, StorageService `forceKeyspaceCleanup`) of `retail` and
   `retail_ops` on every node of **dcs**, or only on **nodes** when given, **one node at a
   time**; the log shows *cleanup 1 of 2: eu-west-1, keyspace retail ...* with elapsed times,
   and `retail_ring_cleanup_in_progress` is 1 (0 after, also after a failure) with
   `retail_ring_cleanup_nodes_remaining` counting down (dashboard *Retail / Operations*, panel
   *Ring changes and reassignments*).
4. **After**: ownership and load again (`phase="after"`); the summary, one line per node with
   its load before and after, goes to the log and XCom.

**dry_run** reports the ring, the nodes that would be cleaned up and any reason a run would be
refused, and changes nothing.

**How long**: a cleanup reads and rewrites every SSTable of the node: seconds on the test stack,
roughly a full compaction of the node's data on a loaded cluster. A failed cleanup (a node
stopped answering, a compaction aborted) is retried; it loses nothing, and the nodes already
done are only compacted again.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from retail.topology import REGIONS
from retail_airflow.defaults import DEFAULT_ARGS, START_DATE
from retail_airflow.operators.ring import NAME_PATTERN, RingMaintenanceOperator

DCS = [r.dc for r in REGIONS]

with DAG(
    dag_id="ring_maintenance",
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    # Two cleanups at once would compact the same nodes twice over.
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    dagrun_timeout=timedelta(hours=24),
    tags=["cassandra", "ring", "maintenance"],
    render_template_as_native_obj=True,
    params={
        "dcs": Param(
            DCS,
            type="array",
            items={"type": "string", "enum": DCS},
            minItems=1,
            uniqueItems=True,
            description="Clean up the nodes of these DCs: after a join, the DC that grew (its "
            "other nodes gave up ranges to the new one).",
        ),
        "nodes": Param(
            [],
            type="array",
            items={"type": "string", "pattern": NAME_PATTERN},
            uniqueItems=True,
            description="Only these nodes (e.g. eu-west-1), each in one of dcs; empty: every "
            "node of dcs.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            description="Only report: the ring, the nodes a run would clean up, and any reason "
            "it would be refused. Nothing is cleaned up.",
        ),
    },
) as dag:
    RingMaintenanceOperator(
        task_id="ring_maintenance",
        dcs="{{ params.dcs }}",
        nodes="{{ params.nodes }}",
        dry_run="{{ params.dry_run }}",
        # Each node's cleanup is about a compaction of its data: seconds on the test stack,
        # hours on a loaded node. Three tries fit in the run's 24 h.
        execution_timeout=timedelta(hours=6),
    )
