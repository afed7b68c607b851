"""
### Pipeline audit

Every hour, reconciles Kafka with Cassandra for the run's data interval moved `settle_minutes`
back (time for the consumers to commit it), and **fails loudly on any loss**. A late or retried
run audits the same window, and consecutive runs meet without a gap. `window_minutes`, when
set, audits only the last minutes of that window instead (a quick check from the trigger form).

- the window is an offset range per partition of the chosen kinds of topics (every region's
  `<prefix>.<region>.orders` ..., and `<prefix>.unrouted`): from the first message stamped in
  it to the first stamped after it, so a message with a wrong producer clock is still audited;
  every message of the range is read back and decoded, 5,000 at a time;
- a valid event must be stored: its row by store and day holds this version, or its id's table
  (`orders`, `inventory_movements`) holds a later one (a resend replaces an earlier version).
  Each store-day partition is read once with a range read at `LOCAL_ONE` and compared as a
  set; a partition where something is not there is read again at `LOCAL_QUORUM`, the quorum its
  consumer wrote at, in the event's own region's DC; single rows are read only for what is
  still absent, to name it;
- a message the consumers must refuse (invalid, a region header or topic that disagrees with
  the body, unrouted, an id moved to another store) must be in the dead-letter topic (found by
  its `origin.*` headers);
- a message the responsible regional group (`<prefix>-<region>`) has not committed yet is
  reported as *pending*, not lost (consumer lag has its own gauge and alert).

Sends `retail.audit.<topic>.missing` and `.deadlettered`. On a loss the task fails without retry,
naming the lost events (order ids, event ids, offsets) in the log, the error and XCom `report`:
replay them from Kafka (writes are idempotent) and find why the consumer committed past them.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from retail_airflow.defaults import DEFAULT_ARGS, START_DATE
from retail_airflow.operators.audit import AUDITED_TOPICS, PipelineAuditOperator
from retail_airflow.operators.balance import PREFIX_PATTERN

with DAG(
    dag_id="pipeline_audit",
    doc_md=__doc__,
    schedule=timedelta(hours=1),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["kafka", "cassandra", "audit"],
    render_template_as_native_obj=True,
    params={
        "window_minutes": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=1440,
            description="Empty: audit the run's data interval (an hour). A number: audit only "
            "the last this many minutes of it.",
        ),
        "settle_minutes": Param(
            5,
            type="integer",
            minimum=0,
            maximum=60,
            description="The window ends this many minutes ago, so the consumers have had time "
            "to commit what it holds.",
        ),
        "topics": Param(
            list(AUDITED_TOPICS),
            type="array",
            items={"type": "string", "enum": list(AUDITED_TOPICS)},
            minItems=1,
            uniqueItems=True,
            description="Kinds of event topics to audit (every region's, and the unrouted "
            "topic); their dead letters are always checked.",
        ),
        "topic_prefix": Param(
            "retail",
            type="string",
            pattern=PREFIX_PATTERN,
            description="Audit PREFIX.<region>.orders ... and the groups PREFIX-<region>; "
            "'retail' is the platform.",
        ),
    },
) as dag:
    PipelineAuditOperator(
        task_id="audit_window",
        # Reads a window of an hour's messages; at the demo's rates this takes seconds.
        execution_timeout=timedelta(minutes=30),
        topic_prefix="{{ params.topic_prefix }}",
        window_minutes="{{ params.window_minutes }}",
        settle_minutes="{{ params.settle_minutes }}",
        topics="{{ params.topics }}",
    )
