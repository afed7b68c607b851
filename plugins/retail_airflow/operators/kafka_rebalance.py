"""The Kafka rebalance from Airflow: a proposal that evens replicas and preferred leaders over
the brokers, applied through Kafka's reassignment tool with a throttle (or only shown)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from retail.connections import KAFKA_ADMIN_CONN_ID, STATSD_CONN_ID
from retail.ops import kafka_reassign, kafka_rebalance
from retail.ops.balance import DEFAULT_PREFIX
from retail_airflow.hooks import RetailKafkaHook, RetailStatsdHook
from retail_airflow.operators.balance import PREFIX_PATTERN

# 1 KiB/s would take days for a real partition; 1 GiB/s is no throttle on any broker's disk.
THROTTLE = (1024, 1024**3)
DEFAULT_THROTTLE = 10 * 1024**2


def kafka_lib() -> Path:
    """The lib dir of Kafka's jars: ``RETAIL_KAFKA_LIB``, else the one `retail stack fetch`
    put in the cache."""
    from retail.settings import get_settings
    from stack.fetch import Artifacts

    settings = get_settings()
    return settings.kafka_lib or Artifacts(settings.cache_dir).kafka_lib


class KafkaRebalanceOperator(BaseOperator):
    """Propose an even placement of the replicas and preferred leaders of the topics
    ``<topic_prefix>.*`` over the live brokers (:func:`retail.ops.kafka_rebalance.propose`),
    log it and return it (XCom); unless ``dry_run``, apply it with Kafka's reassignment tool
    under ``throttle_bytes_per_second``, with progress until every partition has moved, then
    elect the preferred leaders. Logs in with the Kafka admin connection."""

    template_fields = ("dry_run", "throttle_bytes_per_second", "topic_prefix")

    def __init__(
        self,
        *,
        dry_run: bool | str = True,
        throttle_bytes_per_second: int | str = DEFAULT_THROTTLE,
        topic_prefix: str = DEFAULT_PREFIX,
        kafka_conn_id: str = KAFKA_ADMIN_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        poll_seconds: float = 2.0,
        follow_seconds: float = 11 * 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dry_run = dry_run
        self.throttle_bytes_per_second = throttle_bytes_per_second
        self.topic_prefix = topic_prefix
        self.kafka_conn_id = kafka_conn_id
        self.statsd_conn_id = statsd_conn_id
        self.poll_seconds = poll_seconds
        self.follow_seconds = follow_seconds

    def _validate(self) -> tuple[bool, int, str]:
        dry, throttle, prefix = self.dry_run, self.throttle_bytes_per_second, self.topic_prefix
        if not isinstance(dry, bool):
            raise AirflowFailException(f"dry_run must be true or false, got {dry!r}")
        if isinstance(throttle, bool) or not isinstance(throttle, int):
            raise AirflowFailException(
                f"throttle_bytes_per_second must be an integer, got {throttle!r}"
            )
        if not THROTTLE[0] <= throttle <= THROTTLE[1]:
            raise AirflowFailException(
                f"throttle_bytes_per_second {throttle} outside {THROTTLE} (bytes per second)"
            )
        if not isinstance(prefix, str) or not re.fullmatch(PREFIX_PATTERN, prefix):
            raise AirflowFailException(
                f"topic_prefix {prefix!r} must match {PREFIX_PATTERN} (e.g. 'retail')"
            )
        return dry, throttle, prefix

    def execute(self, context: Any) -> dict[str, Any]:
        dry_run, throttle, prefix = self._validate()
        hook = RetailKafkaHook(self.kafka_conn_id)
        tools = kafka_reassign.KafkaTools(kafka_lib(), hook.config)
        active = tools.active()
        if active:
            # Their replicas are in flux (the metadata lists old and new together): a proposal
            # made from them would be wrong. Retrying does not help until they are done.
            raise AirflowFailException(
                f"{len(active)} partition reassignment(s) are running in Kafka, e.g. "
                f"{active[0]}; wait until they finish (`--list` shows none), then run again"
            )
        assignment, brokers = kafka_reassign.current_assignment(hook.config, prefix)
        if not assignment:
            raise AirflowFailException(
                f"no topic named {prefix}.* on Kafka at {hook.bootstrap_servers}: check "
                "topic_prefix (`retail topics` creates the platform's)"
            )
        self.log.info(
            "Kafka %s: %d topic(s) under %s., brokers %s",
            hook.bootstrap_servers,
            len(assignment),
            prefix,
            brokers,
        )
        sizes = tools.partition_sizes(assignment)
        proposal = kafka_rebalance.propose(assignment, brokers, sizes)
        for line in kafka_rebalance.summary_lines(proposal):
            self.log.info("%s", line)
        result: dict[str, Any] = {
            "dry_run": dry_run,
            "topic_prefix": prefix,
            "throttle_bytes_per_second": throttle,
            "summary": kafka_rebalance.summary_lines(proposal),
            **kafka_rebalance.to_dict(proposal),
        }
        metrics = RetailStatsdHook(self.statsd_conn_id).metrics
        if dry_run:
            off = kafka_reassign.not_led_by_preferred(hook.config, prefix)
            result["not_led_by_preferred"] = len(off)
            if off:
                self.log.info(
                    "%d partition(s) are not led by their preferred replica now (e.g. %s[%d]); "
                    "a run with dry_run=false elects them too",
                    len(off),
                    *off[0],
                )
            self.log.info(
                "dry run: nothing changed. Trigger with dry_run=false to apply these %d move(s)",
                len(proposal.moves),
            )
            metrics.gauge(kafka_reassign.BYTES_TO_MOVE_GAUGE, proposal.bytes_to_move)
            return result
        applied = kafka_reassign.apply(
            proposal,
            tools,
            metrics,
            throttle_bytes_per_second=throttle,
            poll_seconds=self.poll_seconds,
            timeout=self.follow_seconds,
            on_progress=self.log.info,
        )
        # Partitions led by another than their preferred replica though the proposal left them
        # alone (a broker restarted since, or an earlier run stopped before its election).
        rest = kafka_reassign.not_led_by_preferred(hook.config, prefix)
        if rest:
            self.log.info("electing the preferred leaders of %d more partition(s)", len(rest))
            applied.election_failures += kafka_reassign.elect_preferred_leaders(hook.config, rest)
        after, _ = kafka_reassign.current_assignment(hook.config, prefix)
        result["applied"] = {
            "partitions": applied.partitions,
            "seconds": round(applied.seconds, 1),
            "checks": applied.checks,
            "election_failures": applied.election_failures,
            "placement": {
                t: {k: {str(b): n for b, n in v.items()} for k, v in c.items()}
                for t, c in kafka_rebalance.counts_summary(after, brokers).items()
            },
        }
        self.log.info("applied: %d partition(s) in %.0fs", applied.partitions, applied.seconds)
        return result
