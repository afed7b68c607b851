"""The pipeline audit from Airflow: Kafka's window against Cassandra's rows, failing on loss."""

from __future__ import annotations

import re
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from cassandra.cluster import NoHostAvailable, Session

from retail.connections import CASSANDRA_CONN_ID, KAFKA_CONN_ID, STATSD_CONN_ID
from retail.kafka import Topics
from retail.ops import audit
from retail.ops.balance import metric_topic
from retail_airflow.hooks import RetailCassandraHook, RetailKafkaHook, RetailStatsdHook
from retail_airflow.operators.balance import PREFIX_PATTERN

# Kinds of event topics; every region's topic of each kind is audited, with the unrouted topic
# and the dead letters of them all.
AUDITED_TOPICS = ("orders", "inventory")
WINDOW_MINUTES = (1, 1440)
SCHEDULE = timedelta(hours=1)
SETTLE_MINUTES = (0, 60)


def audit_window(
    interval_start: datetime, interval_end: datetime, settle: int, window: int | None
) -> tuple[int, int]:
    """The window a run audits, in ms: its data interval moved ``settle`` minutes back, or (a
    ``window`` in minutes given) the ``window`` minutes before that end. A run audits the same
    window however late it starts or how often it is retried, and consecutive scheduled runs
    meet without a gap."""
    end_ms = int(interval_end.timestamp() * 1000) - settle * 60_000
    if window is None:
        start_ms = int(interval_start.timestamp() * 1000) - settle * 60_000
    else:
        start_ms = end_ms - window * 60_000
    return start_ms, end_ms


class PipelineAuditOperator(BaseOperator):
    """Reconcile the messages of the run's data interval (moved back ``settle_minutes``, or the
    last ``window_minutes`` of it) with the rows in Cassandra and the dead-letter topic; send
    ``retail.audit.<topic>.missing`` and ``.deadlettered``; fail (without retry) with counts and
    example ids if anything consumed was lost."""

    template_fields = ("topic_prefix", "window_minutes", "settle_minutes", "topics")

    def __init__(
        self,
        *,
        topic_prefix: str = "retail",
        window_minutes: int | str | None = None,
        settle_minutes: int | str = 5,
        topics: list[str] | str | None = None,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        kafka_conn_id: str = KAFKA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.topic_prefix = topic_prefix
        self.window_minutes = window_minutes
        self.settle_minutes = settle_minutes
        self.topics = list(AUDITED_TOPICS) if topics is None else topics
        self.cassandra_conn_id = cassandra_conn_id
        self.kafka_conn_id = kafka_conn_id
        self.statsd_conn_id = statsd_conn_id

    def _validate(self) -> tuple[str, int | None, int, list[str]]:
        prefix, window, topics = self.topic_prefix, self.window_minutes, self.topics
        settle = self.settle_minutes
        if not isinstance(prefix, str) or not re.fullmatch(PREFIX_PATTERN, prefix):
            raise AirflowFailException(
                f"topic_prefix {prefix!r} must match {PREFIX_PATTERN} (e.g. 'retail')"
            )
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)):
            raise AirflowFailException(f"window_minutes must be an integer, got {window!r}")
        if window is not None and not WINDOW_MINUTES[0] <= window <= WINDOW_MINUTES[1]:
            raise AirflowFailException(f"window_minutes {window} outside {WINDOW_MINUTES}")
        if isinstance(settle, bool) or not isinstance(settle, int):
            raise AirflowFailException(f"settle_minutes must be an integer, got {settle!r}")
        if not SETTLE_MINUTES[0] <= settle <= SETTLE_MINUTES[1]:
            raise AirflowFailException(f"settle_minutes {settle} outside {SETTLE_MINUTES}")
        if not isinstance(topics, list) or not topics:
            raise AirflowFailException(f"topics must be a non-empty list, got {topics!r}")
        unknown = [t for t in topics if t not in AUDITED_TOPICS]
        if unknown:
            raise AirflowFailException(f"unknown topics {unknown}; choose from {AUDITED_TOPICS}")
        return prefix, window, settle, list(dict.fromkeys(topics))

    def execute(self, context: Any) -> dict[str, Any]:
        prefix, window, settle, short = self._validate()
        hook = RetailCassandraHook(self.cassandra_conn_id)
        kafka = RetailKafkaHook(self.kafka_conn_id)
        topics = Topics.named(prefix)
        # Every region's topics of the chosen kinds, and the unrouted topic (all dead letters).
        audited = [topics.topic(r, kind) for r in topics.regions for kind in short]
        audited.append(topics.unrouted)
        # The data interval, settle_minutes back: by the time the run starts the consumers have
        # had settle_minutes to commit what the window holds.
        # A run without a data interval (triggered without a logical date) audits the hour
        # before it was triggered, as a scheduled run at that moment would.
        interval_end = context.get("data_interval_end") or context["dag_run"].run_after
        interval_start = context.get("data_interval_start") or interval_end - SCHEDULE
        start_ms, end_ms = audit_window(interval_start, interval_end, settle, window)
        if end_ms > time.time() * 1000:
            raise AirflowFailException(
                "the window ends in the future; the audit runs after its data interval"
            )
        self.log.info(
            "auditing %s from %s to %s UTC; dead letters from %s",
            audited,
            datetime.fromtimestamp(start_ms / 1000, UTC).isoformat(timespec="seconds"),
            datetime.fromtimestamp(end_ms / 1000, UTC).isoformat(timespec="seconds"),
            topics.deadletter,
        )

        with ExitStack() as stack:
            opened: dict[str, Session] = {}

            def session(region: str) -> Session:
                # The region's own DC at LOCAL_QUORUM: the quorum its consumer wrote at.
                if region not in opened:
                    try:
                        _, opened[region] = stack.enter_context(
                            hook.session(local_dc=region, consistency_level="LOCAL_QUORUM")
                        )
                    except NoHostAvailable as exc:
                        raise audit.AuditError(
                            f"no node of {region} answered ({exc}); the audit reads each "
                            f"region's events in its own DC: `retail stack status`"
                        ) from exc
                return opened[region]

            try:
                report = audit.audit(
                    client=kafka.config,
                    topics=topics,
                    audited=audited,
                    sessions=session,
                    start_ms=start_ms,
                    end_ms=end_ms,
                    progress=lambda msg: self.log.info("%s", msg),
                )
            except audit.AuditError as exc:
                if "does not exist" in str(exc):
                    raise AirflowFailException(str(exc)) from exc
                raise  # Kafka or a DC unreachable: a retry may succeed

        metrics = RetailStatsdHook(self.statsd_conn_id).metrics
        for name, t in report.topics.items():
            label = metric_topic(name, prefix)
            metrics.gauge(f"audit.{label}.missing", t.missing)
            metrics.gauge(f"audit.{label}.deadlettered", t.deadlettered)
        result = report.to_dict()
        self.log.info("%s", report.summary())
        for name, t in report.topics.items():
            for line in t.pending_examples:
                self.log.warning("%s: pending: %s", name, line)
        # Kept in XCom under "report" even when the task fails below.
        context["ti"].xcom_push(key="report", value=result)
        if report.missing:
            lines = [
                f"{name}: {line}"
                for name, t in report.topics.items()
                for line in t.missing_examples
            ]
            for line in lines:
                self.log.error("LOST: %s", line)
            # Data loss is not transient: a retry would find the same hole and delay the alarm.
            raise AirflowFailException(
                f"pipeline audit found {report.missing} lost message(s) "
                f"({report.summary()}). Examples:\n"
                + "\n".join(lines)
                + "\nReplay them from Kafka (the writes are idempotent) and find why the consumer "
                "committed past them."
            )
        return result
