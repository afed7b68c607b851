"""
### Replication check and repair

Runs daily, and from the UI for one keyspace, table or DC. Three tasks:

1. **check_replication** (at most 10 min): compares the live replication of `retail`,
   `retail_ops`, `system_auth` and `system_distributed` with the topology
   (NetworkTopologyStrategy, one replication factor per DC), logs each keyspace's replication
   and any drift, and reports it in XCom and as `retail_replication_drift{keyspace}`. With
   **fix_drift** on, a drifted keyspace is altered to the topology's replication (nothing typed
   in the form reaches the statement), the log shows its replication before and after, and it
   is then repaired in full, because new replicas hold no data until a repair streams it there.
   A fix that would **remove a DC** from a keyspace or **lower a DC's replication factor** is
   refused before anything is altered, naming what it would remove or lower, unless
   **allow_replication_decrease** is on (a DC retired, a factor lowered on purpose). If the
   topology is what is wrong, correct the `retail_cassandra` connection instead.
2. **repair** (at most 3 h a try): Cassandra's full (not incremental) anti-entropy repair,
   through the StorageService MBean of each node, one subrange at a time; the log shows node,
   subrange i/n and elapsed time.
   - scope **primary_range** (`nodetool repair -full -pr` on every node in turn): every range is
     compared between all its replicas in every DC. This is the repair that counts for
     `gc_grace_seconds`; dc must be `all`.
   - scope **datacenter** (`-full -dc DC`): the same inside one DC (or each DC in turn with
     `all`), with no cross-DC traffic; it does not sync the DCs with each other. A DC with
     replication factor 1 (the test stack) has nothing to compare inside, and is skipped.
   Each success is recorded in `retail_ops.repair_history`; the duration goes to
   `retail_repair_duration_seconds{keyspace,outcome}`.
3. **report_repair_state** (after a successful repair; at most 5 min): sends every table's last
   cluster-wide repair and its `gc_grace_seconds`, which the **TableRepairOverdue** alert
   compares, and lists the overdue tables.

**No two repairs of a keyspace at once**: each keyspace is repaired under a lease in
`retail_ops.repair_lease` (whatever its tables, DC or scope: they all share the keyspace's
ranges), renewed while the repair runs and released at its end. A repair that finds the lease
held waits up to **lease_wait_seconds** with a line per poll, then fails naming the holder and
since when; Airflow retries it. A holder that died lets go when its lease expires (5 min after
its last renewal).

**Retries**: a failure a retry can fix (a lease held, a node down, a Jolokia call timed out)
is retried; the others (unknown keyspace or table, invalid params, a refused replication
change) fail at once with the reason. A retry first logs the repair sessions running on every
node and waits (up to 10 min) for the session the failed try left running, then terminates it
(`forceTerminateAllRepairSessions` on its coordinator), so that it never repairs the same
ranges twice at once.

**How long**: on the 3-node test stack a keyspace takes seconds (about 0.5 s per session:
nodes x subranges sessions, more if a table is big). On a loaded cluster expect roughly the time
to read every replica's data once (validation compaction) plus streaming of what differs; use
more subranges to make each session, and a retry after a failure, smaller, and run a keyspace
or table at a time if `all` needs more than a try's 3 hours. Every node must be up (UN): a
repair with a replica down fails and says so; bring the node back and trigger again (a repeated
repair is harmless).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from retail.catalog import catalog
from retail.ops.repair import MAX_SUBRANGES, SCOPES
from retail.topology import REGIONS
from retail_airflow.defaults import DEFAULT_ARGS, START_DATE
from retail_airflow.operators.repair import (
    MAX_LEASE_WAIT,
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
        "allow_replication_decrease": Param(
            False,
            type="boolean",
            description="With fix_drift: allow a fix that removes a DC from a keyspace or lowers "
            "a DC's replication factor (refused otherwise).",
        ),
        "lease_wait_seconds": Param(
            900,
            type="integer",
            minimum=0,
            maximum=MAX_LEASE_WAIT,
            description="How long the repair waits for another repair of the same keyspace to "
            "finish before it fails (and is retried).",
        ),
    },
) as dag:
    check = ReplicationCheckOperator(
        task_id="check_replication",
        fix_drift="{{ params.fix_drift }}",
        allow_replication_decrease="{{ params.allow_replication_decrease }}",
        # A read of four keyspaces' replication, and at most four ALTERs with schema agreement.
        execution_timeout=timedelta(minutes=10),
    )
    repair = RepairOperator(
        task_id="repair",
        keyspace="{{ params.keyspace }}",
        table="{{ params.table }}",
        dc="{{ params.dc }}",
        scope="{{ params.scope }}",
        subranges="{{ params.subranges }}",
        lease_wait_seconds="{{ params.lease_wait_seconds }}",
        check_task_id="check_replication",
        # Every platform keyspace, node by node: seconds on the test stack, hours on a loaded
        # cluster. Three tries of 3 h and their retry delays fit in the run's 12 h.
        execution_timeout=timedelta(hours=3),
    )
    # After a successful repair only: a leaf task that ran anyway would mark a failed repair's
    # run successful (a run's state is its leaves'), hiding it from the DagRunFailed alert. The
    # gauges of the last run stay in statsd_exporter meanwhile.
    state = RepairStateOperator(
        task_id="report_repair_state",
        # One read of system_schema.tables and of the history per keyspace.
        execution_timeout=timedelta(minutes=5),
    )
    check >> repair >> state
