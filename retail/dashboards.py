"""Grafana dashboards as code: ``python -m retail.dashboards`` writes the committed JSON in
``monitoring/grafana/dashboards/`` (``--check`` fails if it is stale), and :func:`panel_queries`
lists every panel's PromQL from that JSON for tests to run against a live Prometheus.

Built with grafana-foundation-sdk (pinned in pyproject.toml: the builders for Grafana 11.6, whose
dashboard JSON Grafana 12 loads as it is). Every query uses the Prometheus datasource uid
``prometheus`` (monitoring/grafana/provisioning/datasources) and only metric names that exist:
the statsd_exporter mapping's, the JMX exporter rules', and Prometheus's own (``up``,
``ALERTS``). Queries use fixed ranges (``[1m]``, ``[5m]``) rather than Grafana's
``$__rate_interval``, so that each one runs unchanged against Prometheus's HTTP API; and where
a counter only appears once something happens (a dead letter, an error), ``or ... * 0`` gives a
zero series instead of "no data".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row, ThresholdsConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef, Threshold, ThresholdsMode

from retail.settings import PROJECT_ROOT

DASHBOARD_DIR = PROJECT_ROOT / "monitoring" / "grafana" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")

# Counters that exist only once something happened: `or` this, scaled to zero, onto them.
_WRITTEN = 'retail_consumer_events_total{outcome="written"}'


@dataclass(frozen=True)
class PanelQuery:
    """One PromQL query of one panel, as committed in the dashboards' JSON."""

    dashboard: str
    panel: str
    expr: str


class _Board:
    """A dashboard under construction: rows of panels, ids in order, one datasource."""

    def __init__(self, title: str, uid: str, description: str) -> None:
        self.builder = (
            Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(["retail", "generated"])
            .refresh("10s")
            .time("now-30m", "now")
            .timezone("utc")
            .readonly()
        )
        self.next_id = 1

    def row(self, title: str) -> None:
        self.builder.with_row(Row(title).id(self._id()))

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def series(
        self,
        title: str,
        description: str,
        targets: list[tuple[str, str]],
        unit: str = "short",
        width: int = 12,
    ) -> None:
        """A time series panel; targets are (PromQL, legend) pairs."""
        panel = (
            Timeseries()
            .id(self._id())
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .unit(unit)
            .span(width)
            .height(8)
            .min(0)
            .legend(
                VizLegendOptions()
                .display_mode(LegendDisplayMode.TABLE)
                .placement(LegendPlacement.BOTTOM)
                .show_legend(True)
                .calcs(["lastNotNull", "max"])
            )
        )
        for ref, (expr, legend) in zip("ABCDEFGH", targets, strict=False):
            panel.with_target(
                Dataquery().ref_id(ref).datasource(DATASOURCE).expr(expr).legend_format(legend)
            )
        self.builder.with_panel(panel)

    def stat(
        self,
        title: str,
        description: str,
        expr: str,
        legend: str = "",
        unit: str = "short",
        red_from: float | None = None,
        width: int = 6,
    ) -> None:
        """A single-value panel, red from ``red_from`` on (when given)."""
        steps = [Threshold(None, "green")]
        if red_from is not None:
            steps.append(Threshold(red_from, "red"))
        self.builder.with_panel(
            Stat()
            .id(self._id())
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .unit(unit)
            .span(width)
            .height(5)
            .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
            .with_target(
                Dataquery()
                .ref_id("A")
                .datasource(DATASOURCE)
                .expr(expr)
                .legend_format(legend)
                .instant()
            )
        )

    def build(self) -> object:
        return self.builder.build()


def _zero_if_absent(expr: str, by: str) -> str:
    """``expr``, or 0 for every ``by`` group the pipeline has written for."""
    return f"{expr} or sum by ({by}) (rate({_WRITTEN}[5m])) * 0"


def pipeline() -> object:
    b = _Board(
        "Retail / Pipeline",
        "retail-pipeline",
        "Kafka to Cassandra: events per region and topic, latency, lag, dead letters.",
    )
    b.row("Throughput")
    b.series(
        "Events written per second, by region",
        "Rows written to the region's local DC (retail_consumer_events_total, outcome=written).",
        [(f"sum by (region) (rate({_WRITTEN}[1m]))", "{{region}}")],
        unit="ops",
    )
    b.series(
        "Events per second, by topic and outcome",
        "consumed = written + deadlettered + duplicate (a version already stored, or older).",
        [
            (
                "sum by (topic, outcome) (rate(retail_consumer_events_total[1m]))",
                "{{topic}} {{outcome}}",
            )
        ],
        unit="ops",
    )
    b.row("Latency")
    b.series(
        "End-to-end latency (event time to written), by region",
        "Summary quantiles of a sample of each batch's events.",
        [
            (
                "max by (region, quantile) "
                '(retail_consumer_e2e_latency_seconds{quantile=~"0.5|0.99"})',
                "{{region}} p{{quantile}}",
            )
        ],
        unit="s",
    )
    b.series(
        "Batch write latency, by region",
        "One Cassandra flush (writes, rollups, commit) per batch.",
        [
            (
                "max by (region, quantile) "
                '(retail_consumer_write_latency_seconds{quantile=~"0.5|0.99"})',
                "{{region}} p{{quantile}}",
            )
        ],
        unit="s",
    )
    b.row("Backlog and failures")
    b.series(
        "Consumer lag, by region and topic",
        "Messages between the group's position and the end of each partition, summed.",
        [("sum by (region, topic) (retail_consumer_lag)", "{{region}} {{topic}}")],
    )
    b.series(
        "Dead letters per second, by region and topic",
        "Events that could not be decoded or validated, sent to the dead-letter topic.",
        [
            (
                _zero_if_absent(
                    "sum by (region, topic) "
                    '(rate(retail_consumer_events_total{outcome="deadlettered"}[5m]))',
                    "region, topic",
                ),
                "{{region}} {{topic}}",
            )
        ],
        unit="ops",
    )
    b.series(
        "Errors and write retries per second, by region",
        "Kafka errors and Cassandra write retries (backoff while the local DC refuses).",
        [
            (
                _zero_if_absent(
                    "sum by (region) (rate(retail_consumer_errors_total[5m]))", "region"
                ),
                "{{region}} errors",
            ),
            (
                _zero_if_absent(
                    "sum by (region) (rate(retail_consumer_retries_total[5m]))", "region"
                ),
                "{{region}} retries",
            ),
        ],
        unit="ops",
    )
    b.series(
        "Batch size, by region",
        "Events written per batch (the last batch each consumer reported).",
        [("avg by (region) (retail_consumer_batch_size)", "{{region}}")],
    )
    return b.build()


def cassandra() -> object:
    b = _Board(
        "Retail / Cassandra",
        "retail-cassandra",
        "The three-DC cluster per DC and node: requests, latency, compactions, load, ring, hints.",
    )
    b.row("Nodes")
    b.stat(
        "Nodes up, by DC",
        "Nodes whose JMX exporter answers Prometheus.",
        'sum by (dc) (up{job="cassandra"})',
        "{{dc}}",
        width=12,
    )
    b.stat(
        "Peers seen down (gossip)",
        "The most peers any node of the DC sees down.",
        "max by (dc) (cassandra_failuredetector_down_endpoints)",
        "{{dc}}",
        red_from=1,
        width=12,
    )
    b.row("Client requests (coordinator)")
    b.series(
        "Requests per second, by DC",
        "Reads and writes coordinated by the DC's nodes.",
        [("sum by (dc, scope) (rate(cassandra_client_requests_total[1m]))", "{{dc}} {{scope}}")],
        unit="ops",
    )
    b.series(
        "Write latency p99, by node",
        "Cassandra's recent coordinator write latency; CassandraWriteLatencyHigh fires over 250ms.",
        [
            (
                'cassandra_client_request_latency_seconds{scope="Write", quantile="0.99"}',
                "{{node}}",
            )
        ],
        unit="s",
    )
    b.series(
        "Read latency p99, by node",
        "Cassandra's recent coordinator read latency.",
        [
            (
                'cassandra_client_request_latency_seconds{scope="Read", quantile="0.99"}',
                "{{node}}",
            )
        ],
        unit="s",
    )
    b.series(
        "Timeouts and unavailables per second, by DC",
        "Requests that did not reach their consistency level.",
        [
            (
                "sum by (dc, scope) (rate(cassandra_client_request_timeouts_total[5m]))",
                "{{dc}} {{scope}} timeouts",
            ),
            (
                "sum by (dc, scope) (rate(cassandra_client_request_unavailables_total[5m]))",
                "{{dc}} {{scope}} unavailable",
            ),
        ],
        unit="ops",
    )
    b.row("Storage and ring")
    b.series(
        "Pending compactions, by node",
        "Compactions waiting to run.",
        [("cassandra_compaction_pending_tasks", "{{node}}")],
    )
    b.series(
        "Load, by node",
        "Live data on disk.",
        [("cassandra_storage_load_bytes", "{{node}}")],
        unit="bytes",
    )
    b.series(
        "Token ownership, by node (balance DAG)",
        "Each node's share of its DC's ring; even is 1 / nodes in the DC.",
        [("retail_balance_cassandra_ownership_ratio", "{{node}}")],
        unit="percentunit",
    )
    b.series(
        "Hints: in progress and created per second, by node",
        "Hints are writes kept for a replica that was down; they replay when it returns.",
        [
            ("cassandra_storage_hints_in_progress", "{{node}} in progress"),
            ("rate(cassandra_storage_hints_total[5m])", "{{node}} created/s"),
        ],
    )
    return b.build()


def kafka() -> object:
    b = _Board(
        "Retail / Kafka",
        "retail-kafka",
        "Per topic and partition rates, partition skew, replication and controller health.",
    )
    b.row("Health")
    b.stat(
        "Under-replicated partitions",
        "Partitions with fewer in-sync replicas than replicas.",
        "sum(kafka_server_replicamanager_underreplicatedpartitions)",
        red_from=1,
    )
    b.stat(
        "Offline partitions",
        "Partitions without a leader: unwritable.",
        "sum(kafka_controller_kafkacontroller_offlinepartitionscount)",
        red_from=1,
    )
    b.stat(
        "Active controllers",
        "Exactly 1 in a healthy cluster.",
        "sum(kafka_controller_kafkacontroller_activecontrollercount)",
    )
    b.stat(
        "Brokers up",
        "Brokers whose JMX exporter answers Prometheus.",
        'sum(up{job="kafka"})',
    )
    b.row("Topics")
    b.series(
        "Messages in per second, by topic",
        "Messages appended, internal topics left out.",
        [
            (
                "sum by (topic) (rate("
                'kafka_server_brokertopicmetrics_messagesinpersec_total{topic!~"__.*"}[1m]))',
                "{{topic}}",
            )
        ],
        unit="ops",
    )
    b.series(
        "Bytes in and out per second, by topic",
        "From producers and to consumers.",
        [
            (
                "sum by (topic) (rate("
                'kafka_server_brokertopicmetrics_bytesinpersec_total{topic!~"__.*"}[1m]))',
                "{{topic}} in",
            ),
            (
                "sum by (topic) (rate("
                'kafka_server_brokertopicmetrics_bytesoutpersec_total{topic!~"__.*"}[1m]))',
                "{{topic}} out",
            ),
        ],
        unit="Bps",
    )
    b.series(
        "Request time p99",
        "Total time of produce, fetch and metadata requests on the brokers.",
        [
            (
                'max by (request) (kafka_network_request_total_time_seconds{quantile="0.99"})',
                "{{request}}",
            )
        ],
        unit="s",
    )
    b.series(
        "Log size, by topic",
        "Bytes on disk, all partitions.",
        [("sum by (topic) (kafka_log_size_bytes)", "{{topic}}")],
        unit="bytes",
    )
    b.row("Partitions (balance DAG)")
    b.series(
        "Message rate, by partition",
        "Measured by the balance DAG; keys are stores, so one hot store shows as one partition.",
        [("retail_balance_kafka_partition_rate", "{{topic}}/{{partition}}")],
        unit="ops",
    )
    b.series(
        "Partition skew (busiest / mean rate), by topic",
        "1.0 is even; a few popular stores give about 3; KafkaPartitionSkew fires over 4.",
        [("retail_balance_kafka_skew_ratio", "{{topic}}")],
    )
    b.series(
        "Consumer group lag, by group and topic",
        "Measured from Kafka by the balance DAG (still grows when a consumer is down).",
        [("sum by (group, topic) (retail_balance_kafka_consumer_lag)", "{{group}} {{topic}}")],
    )
    b.series(
        "Partition leaders, by broker",
        "Leadership spread over the brokers.",
        [("retail_balance_kafka_leaders", "broker {{broker}}")],
    )
    return b.build()


def operations() -> object:
    b = _Board(
        "Retail / Operations",
        "retail-operations",
        "Airflow DAG runs, repair recency, views and audits, balance of Kafka and Cassandra, "
        "ring changes and reassignments.",
    )
    b.row("Alerts and DAGs")
    b.stat(
        "Alerts firing",
        "Prometheus alerts in the firing state (details in Alertmanager).",
        'count(ALERTS{alertstate="firing"}) or vector(0)',
        red_from=1,
        width=6,
    )
    b.series(
        "DAG runs finished in the last hour, by DAG and state",
        "From Airflow's own StatsD metrics (dagrun.duration.<state>.<dag_id>), which only its "
        "scheduler sends: runs of `airflow dags test` show in the task panel only.",
        [
            (
                "sum by (dag_id, state) (increase(airflow_dagrun_duration_seconds_count[1h]))",
                "{{dag_id}} {{state}}",
            )
        ],
        width=9,
    )
    b.series(
        "Task instances finished in the last hour, by DAG and state",
        "From Airflow's ti.finish.<dag_id>.<task_id>.<state>.",
        [
            (
                "sum by (dag_id, state) (increase(airflow_ti_finish_total[1h]))",
                "{{dag_id}} {{state}}",
            )
        ],
        width=9,
    )
    b.row("Repair and views")
    b.series(
        "Time since last repair, as a share of gc_grace_seconds",
        "TableRepairOverdue fires over 0.8: repair before tombstones can be purged.",
        [
            (
                "(time() - retail_repair_last_success_timestamp_seconds)"
                " / (retail_table_gc_grace_seconds > 0)",
                "{{keyspace}}.{{table}}",
            )
        ],
        unit="percentunit",
    )
    b.series(
        "Replication drift and view inconsistencies",
        "1 when the repair DAG finds a keyspace's replication differs from the topology, or the "
        "views DAG finds a view disagreeing with its base table.",
        [
            ("retail_replication_drift", "drift {{keyspace}}"),
            ("retail_view_inconsistent", "inconsistent {{view}}"),
        ],
    )
    b.series(
        "Audit: rows missing and events dead-lettered, by topic",
        "From the audit of the views DAG.",
        [
            ("retail_audit_missing_rows", "{{topic}} missing"),
            ("retail_audit_deadlettered", "{{topic}} dead-lettered"),
            ("retail_view_missing_rows", "{{view}} missing in view"),
        ],
    )
    b.row("Balance")
    b.series(
        "Skew ratios (max / mean)",
        "Kafka partitions per topic (alert over 4), Cassandra ownership (over 1.2) and load "
        "(over 1.5) per DC.",
        [
            ("retail_balance_kafka_skew_ratio", "kafka {{topic}}"),
            ("retail_balance_cassandra_ownership_skew_ratio", "ownership {{dc}}"),
            ("retail_balance_cassandra_load_skew_ratio", "load {{dc}}"),
        ],
    )
    b.series(
        "Disk free, by node",
        "DiskNearlyFull warns under 15%, is critical under 5%.",
        [("retail_node_disk_free_ratio", "{{node}}")],
        unit="percentunit",
    )
    b.series(
        "Ring changes and reassignments",
        "While data moves between nodes or brokers: Cassandra nodes joining, leaving or moving "
        "per DC (the balance check's view, every 5 minutes), a cleanup of the ring_maintenance "
        "DAG (1 while it runs) and the nodes it has left, and the partitions whose Kafka "
        "reassignment has not completed (the brokers' own count, e.g. the kafka_rebalance "
        "DAG's moves).",
        [
            ("retail_balance_cassandra_nodes_changing", "nodes changing {{dc}}"),
            ("retail_ring_cleanup_in_progress", "cleanup in progress"),
            ("retail_ring_cleanup_nodes_remaining", "cleanup: nodes remaining"),
            (
                "sum(kafka_server_replicamanager_reassigningpartitions)",
                "Kafka partitions reassigning",
            ),
        ],
    )
    return b.build()


def retail() -> object:
    b = _Board(
        "Retail / Business",
        "retail-business",
        "Orders, revenue and inventory movements per region per minute, as the pipeline "
        "writes them.",
    )
    orders = 'retail_consumer_events_total{topic="orders", outcome="written"}'
    b.row("Orders")
    b.stat(
        "Orders per minute",
        "All regions, over the last 5 minutes.",
        f"sum(rate({orders}[5m])) * 60",
        width=8,
    )
    b.stat(
        "Orders in the last hour, by region",
        "Orders written per region.",
        f"sum by (region) (increase({orders}[1h]))",
        "{{region}}",
        width=16,
    )
    b.series(
        "Orders per minute, by region",
        "Orders written to Cassandra per region.",
        [(f"sum by (region) (rate({orders}[1m])) * 60", "{{region}}")],
    )
    b.series(
        "Revenue per minute, by region and currency",
        "Order totals written to Cassandra, in each currency's minor units (cents; whole yen "
        "for JPY), never added up across currencies.",
        [
            (
                "sum by (region, currency) (rate(retail_consumer_revenue_cents_total[1m])) * 60",
                "{{region}} {{currency}}",
            )
        ],
    )
    b.series(
        "Inventory movements per minute, by region",
        "Stock movements written per region.",
        [
            (
                "sum by (region) (rate("
                'retail_consumer_events_total{topic="inventory", outcome="written"}[1m])) * 60',
                "{{region}}",
            )
        ],
    )
    b.series(
        "Orders arriving in Kafka per minute",
        "Order messages appended to the orders topic(s), before any consumer.",
        [
            (
                "sum by (topic) (rate("
                'kafka_server_brokertopicmetrics_messagesinpersec_total{topic=~".+\\\\.orders"}[1m]))'
                " * 60",
                "{{topic}}",
            )
        ],
    )
    b.series(
        "Rejected events per minute, by region",
        "Events dead-lettered as invalid (see the Pipeline dashboard for the reasons).",
        [
            (
                _zero_if_absent(
                    "sum by (region) "
                    '(rate(retail_consumer_events_total{outcome="deadlettered"}[5m])) * 60',
                    "region",
                ),
                "{{region}}",
            )
        ],
    )
    return b.build()


DASHBOARDS: dict[str, Callable[[], object]] = {
    "pipeline": pipeline,
    "cassandra": cassandra,
    "kafka": kafka,
    "operations": operations,
    "retail": retail,
}


def render() -> dict[str, str]:
    """Every dashboard's JSON text, by file name."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {f"{name}.json": encoder.encode(build()) + "\n" for name, build in DASHBOARDS.items()}


def stale(directory: Path = DASHBOARD_DIR) -> list[str]:
    """Names of the dashboard files that differ from what the code generates (or are missing)."""
    return [
        name
        for name, text in render().items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]


def panel_queries(directory: Path = DASHBOARD_DIR) -> list[PanelQuery]:
    """Every PromQL expression of every panel in the committed dashboard JSON."""
    found = []
    for path in sorted(directory.glob("*.json")):
        board = json.loads(path.read_text())
        panels = list(board.get("panels", []))
        while panels:
            panel = panels.pop(0)
            panels.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append(PanelQuery(board["title"], panel["title"], target["expr"]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retail.dashboards",
        description="Write the Grafana dashboards (JSON, generated from code) into "
        f"{DASHBOARD_DIR.relative_to(PROJECT_ROOT)}/, where Grafana's provisioning loads them.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a committed file differs from what the code generates",
    )
    parser.add_argument(
        "--out", type=Path, default=DASHBOARD_DIR, help="directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.check:
        bad = stale(args.out)
        if bad:
            print(
                f"stale dashboards in {args.out}: {', '.join(bad)}; "
                "run `python -m retail.dashboards` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"{len(DASHBOARDS)} dashboards up to date in {args.out}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (args.out / name).write_text(text)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
