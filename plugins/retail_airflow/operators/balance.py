"""The balance check from Airflow: Kafka partitions and the Cassandra ring, as gauges and a
readable summary."""

from __future__ import annotations

import re
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from retail.connections import CASSANDRA_CONN_ID, KAFKA_CONN_ID, STATSD_CONN_ID
from retail.kafka import Topics
from retail.ops import balance
from retail_airflow.hooks import RetailCassandraHook, RetailKafkaHook, RetailStatsdHook

# A topic prefix is one name component: no dots, nothing a topic name cannot hold.
PREFIX_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
WINDOW_SECONDS = (10, 3600)
SKEW_THRESHOLD = (1.0, 100.0)


class BalanceCheckOperator(BaseOperator):
    """Measure how evenly Kafka partitions and Cassandra nodes carry the load, send the
    gauges of the metrics contract to StatsD, log a summary with recommendations and return
    it (XCom) with every figure."""

    template_fields = ("topic_prefix", "window_seconds", "skew_threshold")

    def __init__(
        self,
        *,
        topic_prefix: str = balance.DEFAULT_PREFIX,
        window_seconds: float | str = 300,
        skew_threshold: float | str = 8.0,
        cassandra_conn_id: str = CASSANDRA_CONN_ID,
        kafka_conn_id: str = KAFKA_CONN_ID,
        statsd_conn_id: str = STATSD_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.topic_prefix = topic_prefix
        self.window_seconds = window_seconds
        self.skew_threshold = skew_threshold
        self.cassandra_conn_id = cassandra_conn_id
        self.kafka_conn_id = kafka_conn_id
        self.statsd_conn_id = statsd_conn_id

    def _validate(self) -> tuple[str, float, float]:
        prefix, window, threshold = self.topic_prefix, self.window_seconds, self.skew_threshold
        if not isinstance(prefix, str) or not re.fullmatch(PREFIX_PATTERN, prefix):
            raise AirflowFailException(
                f"topic_prefix {prefix!r} must match {PREFIX_PATTERN} (e.g. 'retail')"
            )
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise AirflowFailException(f"window_seconds must be a number, got {window!r}")
        if not WINDOW_SECONDS[0] <= window <= WINDOW_SECONDS[1]:
            raise AirflowFailException(f"window_seconds {window} outside {WINDOW_SECONDS}")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise AirflowFailException(f"skew_threshold must be a number, got {threshold!r}")
        if not SKEW_THRESHOLD[0] <= threshold <= SKEW_THRESHOLD[1]:
            raise AirflowFailException(f"skew_threshold {threshold} outside {SKEW_THRESHOLD}")
        return prefix, float(window), float(threshold)

    def execute(self, context: Any) -> dict[str, Any]:
        prefix, window, threshold = self._validate()
        cassandra_hook = RetailCassandraHook(self.cassandra_conn_id)
        topology = cassandra_hook.topology()
        kafka_hook = RetailKafkaHook(self.kafka_conn_id)
        topics = Topics.named(prefix)
        names = topics.all
        groups = [topics.group(dc.name) for dc in topology.datacenters]
        self.log.info(
            "Kafka %s: topics %s, groups %s, window %.0fs",
            kafka_hook.bootstrap_servers,
            names,
            groups,
            window,
        )
        # Kafka or every Cassandra node unreachable raises BalanceError: worth a retry.
        kafka = balance.check_kafka(kafka_hook.config, names, groups, window_seconds=window)
        self.log.info("Cassandra: %d nodes over Jolokia", len(topology.nodes))
        cassandra = balance.check_cassandra(topology, login=cassandra_hook.jolokia_login)

        metrics = RetailStatsdHook(self.statsd_conn_id).metrics
        sent = balance.gauges(kafka, cassandra, prefix)
        for name, value in sorted(sent.items()):
            metrics.gauge(name, value)
        self.log.info("sent %d gauges to StatsD", len(sent))

        summary = balance.summary_lines(kafka, cassandra)
        advice = balance.recommendations(kafka, cassandra, skew_threshold=threshold)
        for line in summary:
            self.log.info("%s", line)
        for line in advice:
            self.log.warning("RECOMMENDATION: %s", line)
        if not advice:
            self.log.info("balanced: nothing to recommend")
        return {
            "summary": summary,
            "recommendations": advice,
            "skew_threshold": threshold,
            "gauges": len(sent),
            **balance.to_dict(kafka, cassandra),
        }
