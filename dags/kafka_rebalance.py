"""
### Kafka rebalance

Evens the Kafka topics `PREFIX.*` over the live brokers: each broker carries an even share
(within one) of every topic's **replicas** and **preferred leaders**, moving as few replicas,
and then as few bytes, as it can; no partition's replication factor changes. Manual trigger.

- **dry_run** (the default, as in Cruise Control): only the proposal, in the task log and XCom:
  replicas and leaders per broker before and after, every move (topic, partition, from, to,
  bytes) and Kafka's reassignment JSON. Nothing changes.
- **dry_run = false**: the proposal goes through Kafka's own reassignment tool
  (`kafka-reassign-partitions --execute --throttle`), the log shows progress until every
  partition has moved (which also removes the throttle), then a preferred leader election makes
  the new first replicas the leaders. Gauges: `retail_kafka_reassignments_in_progress`,
  `retail_kafka_rebalance_bytes_to_move`.

A reassignment moves *replicas* between brokers, never messages between partitions: every
store's events keep their partition and their order. It refuses to start while another
reassignment runs. It logs in with the `retail_kafka_admin` connection.

`throttle_bytes_per_second` caps the replication traffic of the moving replicas on each
broker, so producers and consumers keep their bandwidth.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from retail_airflow.defaults import DEFAULT_ARGS, START_DATE
from retail_airflow.operators.balance import PREFIX_PATTERN
from retail_airflow.operators.kafka_rebalance import (
    DEFAULT_THROTTLE,
    THROTTLE,
    KafkaRebalanceOperator,
)

with DAG(
    dag_id="kafka_rebalance",
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["kafka", "balance"],
    render_template_as_native_obj=True,
    params={
        "dry_run": Param(
            True,
            type="boolean",
            description="Only show the proposal (log and XCom); false applies it.",
        ),
        "throttle_bytes_per_second": Param(
            DEFAULT_THROTTLE,
            type="integer",
            minimum=THROTTLE[0],
            maximum=THROTTLE[1],
            description="Replication traffic of the moving replicas, per broker, in bytes per "
            "second (10 MiB/s by default).",
        ),
        "topic_prefix": Param(
            "retail",
            type="string",
            pattern=PREFIX_PATTERN,
            description="Rebalance the topics PREFIX.*; 'retail' is the platform.",
        ),
    },
) as dag:
    KafkaRebalanceOperator(
        task_id="rebalance",
        # A large move under a low throttle takes hours: the operator follows it for 11 and
        # then fails saying so (the moves go on in Kafka; a new run refuses until they end).
        # A retry after the moves started finds them active and fails for good, without
        # retrying again: retries only help with what failed before (Kafka unreachable).
        execution_timeout=timedelta(hours=12),
        dry_run="{{ params.dry_run }}",
        throttle_bytes_per_second="{{ params.throttle_bytes_per_second }}",
        topic_prefix="{{ params.topic_prefix }}",
    )
