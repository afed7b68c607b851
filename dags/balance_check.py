"""
### Balance check

Every five minutes, how evenly the platform carries its load:

- **Kafka**, for the event and dead-letter topics: each partition's rate over the last
  `window_seconds` (from `offsets_for_times`, so the whole interval counts and nothing waits)
  and its size, the **skew** (busiest partition over the mean) per topic, the keys of the
  hottest partition (a sample that names a **hot store**), consumer **lag** per regional group
  (`<prefix>-<region>`) and partition, and partition leaders per broker;
- **Cassandra**, through each node's Jolokia: each node's share of its DC's token ring and its
  load, their skew per DC, the largest partition of every table, and the free space of each
  node's data directory when it is on this machine (otherwise the summary says it was not
  visible; watch it with the host's own disk metrics).

The gauges go to StatsD (`retail_balance_*` in Prometheus, labelled by topic, partition, group,
DC and node), and a summary with **recommendations** (for example *partition 3 of
retail.eu-west.orders carries 41% of the traffic; hot key store-0017*) goes to the task log and
XCom.

`topic_prefix` checks topics under another prefix (staging, tests); their metric label is
`<prefix>_<topic>`, so they never mix with the platform's.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from retail_airflow.defaults import DEFAULT_ARGS, START_DATE
from retail_airflow.operators.balance import PREFIX_PATTERN, BalanceCheckOperator

with DAG(
    dag_id="balance_check",
    doc_md=__doc__,
    schedule=timedelta(minutes=5),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=4),
    default_args=DEFAULT_ARGS,
    tags=["kafka", "cassandra", "balance"],
    render_template_as_native_obj=True,
    params={
        "window_seconds": Param(
            300,
            type="integer",
            minimum=10,
            maximum=3600,
            description="Rates are measured over this many recent seconds (the schedule: 300).",
        ),
        "skew_threshold": Param(
            8.0,
            type="number",
            minimum=1.0,
            maximum=100.0,
            description="A topic whose busiest partition exceeds this many times the mean rate "
            "gets a recommendation (the KafkaPartitionSkew alert uses 8: on a region's topic its "
            "few popular stores alone give 4 to 7 on 12 partitions).",
        ),
        "topic_prefix": Param(
            "retail",
            type="string",
            pattern=PREFIX_PATTERN,
            description="Check the topics PREFIX.orders, PREFIX.inventory, PREFIX.deadletter "
            "and the groups PREFIX-<region>; 'retail' is the platform.",
        ),
    },
) as dag:
    BalanceCheckOperator(
        task_id="check_balance",
        # Metadata and Prometheus reads: seconds. Ends before the next run (every 5 minutes).
        execution_timeout=timedelta(minutes=4),
        topic_prefix="{{ params.topic_prefix }}",
        window_seconds="{{ params.window_seconds }}",
        skew_threshold="{{ params.skew_threshold }}",
    )
