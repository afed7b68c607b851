"""The statsd_exporter mapping (monitoring/statsd/mapping.yml), fed through a real statsd_exporter.

Each test starts the cached statsd_exporter binary on free loopback ports (never the stack's
9102/9125), sends StatsD lines over UDP, and reads what it exports on /metrics: the platform's
metrics contract, every metric in the installed Airflow's own registry, and the catch-alls.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from retail.settings import get_settings
from stack.fetch import Artifacts

MAPPING = Path(__file__).resolve().parents[2] / "monitoring" / "statsd" / "mapping.yml"
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StatsdExporter:
    """A statsd_exporter process of the test's own, with the committed mapping."""

    def __init__(self, binary: Path, log: Path) -> None:
        self.udp_port = _free_port(socket.SOCK_DGRAM)
        self.url = f"http://127.0.0.1:{_free_port(socket.SOCK_STREAM)}/metrics"
        self.log = log
        argv = [
            str(binary),
            f"--web.listen-address={self.url.split('/')[2]}",
            f"--statsd.listen-udp=127.0.0.1:{self.udp_port}",
            "--statsd.listen-tcp=",
            f"--statsd.mapping-config={MAPPING}",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(self.url, timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                assert self.proc.poll() is None, f"statsd_exporter exited: {log.read_text()}"
                assert time.monotonic() < deadline, "statsd_exporter did not serve /metrics"
                time.sleep(0.05)

    def send(self, lines: list[str]) -> list[Sample]:
        """Send the lines, then a probe; once the probe shows, everything before it has been
        handled (one UDP listener, handled in order). Returns every sample exported."""
        probe = uuid.uuid4().hex[:12]
        for line in [*lines, f"retail.test.probe.{probe}:1|c"]:
            self.sock.sendto(line.encode(), ("127.0.0.1", self.udp_port))
        deadline = time.monotonic() + 10
        while True:
            samples = self.scrape()
            if any(s.labels.get("probe") == probe for s in samples):
                return samples
            assert time.monotonic() < deadline, f"probe never exported; {self.log.read_text()}"
            time.sleep(0.05)

    def scrape(self) -> list[Sample]:
        samples = []
        for line in httpx.get(self.url, timeout=5).text.splitlines():
            if line and not line.startswith("#"):
                m = _SAMPLE_RE.match(line)
                assert m, line
                labels = dict(_LABEL_RE.findall(m.group(2) or ""))
                samples.append(Sample(m.group(1), labels, float(m.group(3))))
        return samples

    def stop(self) -> None:
        self.sock.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[StatsdExporter]:
    art = Artifacts(get_settings().cache_dir)
    if not art.statsd_exporter.exists():
        pytest.fail(
            "statsd_exporter is not in the cache: run `make setup` (or `retail stack fetch`)"
        )
    exp = StatsdExporter(art.statsd_exporter, tmp_path / "statsd_exporter.log")
    yield exp
    exp.stop()


def _series(samples: list[Sample], name: str) -> list[dict[str, str]]:
    return [s.labels for s in samples if s.name == name]


def _own(samples: list[Sample]) -> list[Sample]:
    """The mapped metrics, without the exporter's and the Go runtime's own."""
    skip = ("go_", "process_", "promhttp_", "statsd_exporter_", "statsd_metric_mapper_")
    return [s for s in samples if not s.name.startswith(skip)]


def _exporter_stat(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


# The platform's metrics contract: StatsD line -> Prometheus name and labels. A summary is
# checked through its _count series.
CONTRACT = [
    # streaming consumers
    (
        "retail.consumer.eu-west.orders.3.lag:17|g",
        "retail_consumer_lag",
        {"region": "eu-west", "topic": "orders", "partition": "3"},
    ),
    *[
        (
            f"retail.consumer.us-east.inventory.{outcome}:5|c",
            "retail_consumer_events_total",
            {"region": "us-east", "topic": "inventory", "outcome": outcome},
        )
        for outcome in ("consumed", "written", "deadlettered", "duplicate")
    ],
    (
        "retail.consumer.eu-west.errors.kafka:1|c",
        "retail_consumer_errors_total",
        {"region": "eu-west", "kind": "kafka"},
    ),
    ("retail.consumer.eu-west.retries:2|c", "retail_consumer_retries_total", {"region": "eu-west"}),
    (
        "retail.consumer.eu-west.batch_size:500|g",
        "retail_consumer_batch_size",
        {"region": "eu-west"},
    ),
    (
        "retail.consumer.ap-southeast.write_latency:12.5|ms",
        "retail_consumer_write_latency_seconds_count",
        {"region": "ap-southeast"},
    ),
    (
        "retail.consumer.ap-southeast.e2e_latency:80|ms",
        "retail_consumer_e2e_latency_seconds_count",
        {"region": "ap-southeast"},
    ),
    ("retail.sink.errors.WriteTimeout:1|c", "retail_sink_errors_total", {"kind": "WriteTimeout"}),
    ("retail.sink.concurrent_writer:1|c", "retail_sink_concurrent_writer_total", {}),
    # balance: Kafka
    (
        "retail.balance.kafka.orders.7.rate:12.5|g",
        "retail_balance_kafka_partition_rate",
        {"topic": "orders", "partition": "7"},
    ),
    (
        "retail.balance.kafka.orders.7.messages:1200|g",
        "retail_balance_kafka_partition_messages",
        {"topic": "orders", "partition": "7"},
    ),
    (
        "retail.balance.kafka.orders.skew:1.8|g",
        "retail_balance_kafka_skew_ratio",
        {"topic": "orders"},
    ),
    (
        "retail.balance.kafka.retail-eu-west.inventory.11.lag:40|g",
        "retail_balance_kafka_consumer_lag",
        {"group": "retail-eu-west", "topic": "inventory", "partition": "11"},
    ),
    (
        "retail.balance.kafka.retail-eu-west.orders.2.deleted_unread:120|g",
        "retail_balance_kafka_deleted_unread",
        {"group": "retail-eu-west", "topic": "orders", "partition": "2"},
    ),
    (
        "retail.consumer.eu-west.orders.offset_out_of_range:1|c",
        "retail_consumer_offset_out_of_range_total",
        {"region": "eu-west", "topic": "orders"},
    ),
    ("retail.balance.kafka.broker.1.leaders:36|g", "retail_balance_kafka_leaders", {"broker": "1"}),
    # Kafka rebalance
    ("retail.balance.kafka.rebalance_moves:4|g", "retail_balance_kafka_rebalance_moves", {}),
    (
        "retail.balance.kafka.rebalance_leader_changes:2|g",
        "retail_balance_kafka_rebalance_leader_changes",
        {},
    ),
    ("retail.kafka.reassignments_in_progress:3|g", "retail_kafka_reassignments_in_progress", {}),
    ("retail.kafka.rebalance.bytes_to_move:1048576|g", "retail_kafka_rebalance_bytes_to_move", {}),
    # balance: Cassandra
    (
        "retail.balance.cassandra.eu-west.eu-west-2.ownership:0.5|g",
        "retail_balance_cassandra_ownership_ratio",
        {"dc": "eu-west", "node": "eu-west-2"},
    ),
    (
        "retail.balance.cassandra.us-east.us-east-1.load_bytes:1048576|g",
        "retail_balance_cassandra_load_bytes",
        {"dc": "us-east", "node": "us-east-1"},
    ),
    (
        "retail.balance.cassandra.ap-southeast.ap-southeast-1.disk_free_ratio:0.42|g",
        "retail_node_disk_free_ratio",
        {"dc": "ap-southeast", "node": "ap-southeast-1"},
    ),
    (
        "retail.balance.cassandra.eu-west.ownership_skew:1.0|g",
        "retail_balance_cassandra_ownership_skew_ratio",
        {"dc": "eu-west"},
    ),
    (
        "retail.balance.cassandra.eu-west.load_skew:1.3|g",
        "retail_balance_cassandra_load_skew_ratio",
        {"dc": "eu-west"},
    ),
    (
        "retail.balance.cassandra.orders_by_store.largest_partition_bytes:65536|g",
        "retail_balance_cassandra_largest_partition_bytes",
        {"table": "orders_by_store"},
    ),
    (
        "retail.balance.cassandra.eu-west.nodes_changing:1|g",
        "retail_balance_cassandra_nodes_changing",
        {"dc": "eu-west"},
    ),
    # repair
    (
        "retail.repair.retail.orders.last_success:1790000000|g",
        "retail_repair_last_success_timestamp_seconds",
        {"keyspace": "retail", "table": "orders"},
    ),
    (
        "retail.repair.retail.orders.gc_grace_seconds:864000|g",
        "retail_table_gc_grace_seconds",
        {"keyspace": "retail", "table": "orders"},
    ),
    (
        "retail.repair.retail.duration.success:4200|ms",
        "retail_repair_duration_seconds_count",
        {"keyspace": "retail", "outcome": "success"},
    ),
    (
        "retail.repair.retail.duration.failed:300|ms",
        "retail_repair_duration_seconds_count",
        {"keyspace": "retail", "outcome": "failed"},
    ),
    ("retail.repair.retail.drift:0|g", "retail_replication_drift", {"keyspace": "retail"}),
    # ring maintenance
    (
        "retail.ring.owns.before.eu-west.eu-west-2:0.5|g",
        "retail_ring_owns",
        {"phase": "before", "dc": "eu-west", "node": "eu-west-2"},
    ),
    (
        "retail.ring.owns.after.eu-west.eu-west-2:0.333333|g",
        "retail_ring_owns",
        {"phase": "after", "dc": "eu-west", "node": "eu-west-2"},
    ),
    (
        "retail.ring.load_bytes.after.ap-southeast.ap-southeast-1:1048576|g",
        "retail_ring_load_bytes",
        {"phase": "after", "dc": "ap-southeast", "node": "ap-southeast-1"},
    ),
    ("retail.ring.cleanup.in_progress:1|g", "retail_ring_cleanup_in_progress", {}),
    ("retail.ring.cleanup.nodes_remaining:2|g", "retail_ring_cleanup_nodes_remaining", {}),
    # views, rollups, audits
    (
        "retail.views.orders_by_customer.inconsistent:1|g",
        "retail_view_inconsistent",
        {"view": "orders_by_customer"},
    ),
    (
        "retail.views.orders_by_customer.missing_rows:3|g",
        "retail_view_missing_rows",
        {"view": "orders_by_customer"},
    ),
    (
        "retail.rollups.sales_by_store_hour.corrected:2|c",
        "retail_rollup_corrected_total",
        {"table": "sales_by_store_hour"},
    ),
    ("retail.audit.orders.missing:0|g", "retail_audit_missing_rows", {"topic": "orders"}),
    ("retail.audit.orders.deadlettered:4|g", "retail_audit_deadlettered", {"topic": "orders"}),
]


def test_the_platform_metrics_contract_maps_to_these_names_and_labels(
    exporter: StatsdExporter,
) -> None:
    samples = exporter.send([line for line, _, _ in CONTRACT])
    for line, name, labels in CONTRACT:
        assert labels in _series(samples, name), f"{line} -> {name}{labels}; got {_own(samples)}"
    assert not [s for s in samples if s.name.startswith("statsd_unmapped")]
    # Timers become summaries in seconds.
    summary = [s for s in samples if s.name == "retail_repair_duration_seconds_sum"]
    assert {s.labels["outcome"]: s.value for s in summary} == {"success": 4.2, "failed": 0.3}


def test_a_contract_name_sent_with_the_wrong_type_is_kept_as_unmapped(
    exporter: StatsdExporter,
) -> None:
    """A gauge sent as a counter would otherwise silently change the metric's type."""
    samples = exporter.send(["retail.views.orders_by_customer.inconsistent:1|c"])
    assert _series(samples, "statsd_unmapped_total") == [
        {"stat": "retail.views.orders_by_customer.inconsistent"}
    ]
    assert not _series(samples, "retail_view_inconsistent")


# --- Airflow -----------------------------------------------------------------------------------

# Values for the variables of Airflow's metric names. Airflow turns dots inside a value into
# `__` (a task in a task group arrives as group__task).
AIRFLOW_VALUES = {
    "job_name": "job",
    "job_id": "42",
    "dag_id": "retail_repair",
    "task_id": "tables__repair_orders",
    "return_code": "0",
    "operator_name": "PythonOperator",
    "state": "failed",
    "task_type": "PythonOperator",
    "file_name": "retail_repair",
    "bundle_name": "dags-folder",
    "dag_file": "retail_repair",
    "executor_class_name": "LocalExecutor",
    "pool_name": "default_pool",
    "hostname": "airflow-1",
    "queue": "default",
}
# Metrics of executors and providers this platform does not run (Celery, Kubernetes, Edge, AWS
# executors; OpenLineage): if one ever arrives it is kept as statsd_unmapped*.
AIRFLOW_NOT_USED = (
    "celery.",
    "kubernetes_executor.",
    "edge_worker.",
    "edge_executor.",
    "batch_executor.",
    "ecs_executor.",
    "lambda_executor.",
    "ol.",
)
_STATSD_TYPE = {"counter": "c", "gauge": "g", "timer": "ms"}


def _airflow_registry() -> list[dict]:
    spec = importlib.util.find_spec("airflow")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("apache-airflow is not installed (the `airflow` extra)")
    root = Path(next(iter(spec.submodule_search_locations)))
    template = root / "_shared" / "observability" / "metrics" / "metrics_template.yaml"
    return yaml.safe_load(template.read_text())["metrics"]


def test_every_metric_in_airflows_own_registry_is_mapped(exporter: StatsdExporter) -> None:
    """Every metric the installed Airflow declares, sent as Airflow sends it with the default
    config (legacy names on): the legacy, labelled name is mapped, its unlabelled new name is
    dropped, a metric without a legacy name is mapped; nothing lands in the catch-alls and no
    two names collide."""
    mapped, dropped = [], []
    for metric in _airflow_registry():
        name, legacy = metric["name"], metric.get("legacy_name", "-")
        if name.startswith(AIRFLOW_NOT_USED):
            continue
        kind = _STATSD_TYPE[metric["type"]]
        if legacy == "-":
            mapped.append(f"airflow.{name.format(**AIRFLOW_VALUES)}:1|{kind}")
        else:
            mapped.append(f"airflow.{legacy.format(**AIRFLOW_VALUES)}:1|{kind}")
            dropped.append(f"airflow.{name}:1|{kind}")
    assert len(mapped) > 100, "the Airflow registry looks empty"
    samples = exporter.send(mapped + dropped)

    unmapped = {s.labels["stat"] for s in samples if s.name.startswith("statsd_unmapped")}
    assert unmapped == set(), f"Airflow metrics without a mapping: {sorted(unmapped)}"
    assert _exporter_stat(samples, "statsd_exporter_events_actions_total", action="drop") == len(
        dropped
    )
    # +1: the probe the helper sends.
    assert _exporter_stat(samples, "statsd_exporter_events_actions_total", action="map") == (
        len(mapped) + 1
    )
    assert _exporter_stat(samples, "statsd_exporter_events_conflict_total") == 0


AIRFLOW_CASES = [
    (
        "airflow.dagrun.duration.failed.retail_repair:1500|ms",
        "airflow_dagrun_duration_seconds_count",
        {"dag_id": "retail_repair", "state": "failed"},
    ),
    (
        "airflow.dagrun.duration.success.retail_balance:900|ms",
        "airflow_dagrun_duration_seconds_count",
        {"dag_id": "retail_balance", "state": "success"},
    ),
    (
        "airflow.ti.finish.retail_repair.tables__repair_orders.failed:1|c",
        "airflow_ti_finish_total",
        {"dag_id": "retail_repair", "task_id": "tables__repair_orders", "state": "failed"},
    ),
    (
        "airflow.ti.running.default.retail_repair.check:2|g",
        "airflow_ti_running",
        {"queue": "default", "dag_id": "retail_repair", "task_id": "check"},
    ),
    (
        "airflow.dag.retail_views.audit.duration:2500|ms",
        "airflow_task_duration_seconds_count",
        {"dag_id": "retail_views", "task_id": "audit"},
    ),
    (
        "airflow.operator_failures_PythonOperator:1|c",
        "airflow_operator_failures_total",
        {"operator": "PythonOperator"},
    ),
    (
        "airflow.operator_successes__PythonDecoratedOperator:1|c",
        "airflow_operator_successes_total",
        {"operator": "_PythonDecoratedOperator"},
    ),
    ("airflow.scheduler_heartbeat:1|c", "airflow_scheduler_heartbeat_total", {}),
    ("airflow.ti_failures:1|c", "airflow_ti_failures_total", {}),
    ("airflow.job_start:1|c", "airflow_job_start_total", {"job": "job"}),
    ("airflow.schedulerjobrunner_end:1|c", "airflow_job_end_total", {"job": "schedulerjobrunner"}),
    ("airflow.scheduler.tasks.starving:0|g", "airflow_scheduler_tasks_starving", {}),
    (
        "airflow.scheduler.critical_section_duration:3|ms",
        "airflow_scheduler_critical_section_duration_seconds_count",
        {},
    ),
    (
        "airflow.pool.open_slots.default_pool:128|g",
        "airflow_pool_open_slots",
        {"pool": "default_pool"},
    ),
    (
        "airflow.executor.running_tasks.LocalExecutor:1|g",
        "airflow_executor_running_tasks",
        {"executor": "LocalExecutor"},
    ),
    ("airflow.dag_processing.import_errors:0|g", "airflow_dag_processing_import_errors", {}),
    (
        "airflow.dag_processing.last_duration.dags-folder.retail_repair:800|ms",
        "airflow_dag_processing_last_duration_seconds_count",
        {"bundle": "dags-folder", "file": "retail_repair"},
    ),
    (
        "airflow.local_task_job.task_exit.12345.retail_repair.check.1:1|c",
        "airflow_local_task_job_task_exit_total",
        {"dag_id": "retail_repair", "task_id": "check", "return_code": "1"},
    ),
]


def test_airflow_metrics_carry_dag_task_and_state_labels(exporter: StatsdExporter) -> None:
    samples = exporter.send([line for line, _, _ in AIRFLOW_CASES])
    for line, name, labels in AIRFLOW_CASES:
        assert labels in _series(samples, name), f"{line} -> {name}{labels}; got {_own(samples)}"


def test_airflow_new_names_without_labels_are_dropped(exporter: StatsdExporter) -> None:
    """Airflow also sends dagrun.duration.failed, ti.finish ... without the dag and task: they
    would double every sum over the labelled series."""
    samples = exporter.send(
        [
            "airflow.dagrun.duration.failed:1500|ms",
            "airflow.ti.finish:1|c",
            "airflow.task.duration:10|ms",
            "airflow.pool.open_slots:128|g",
        ]
    )
    assert not [s for s in _own(samples) if s.name.startswith(("airflow_", "statsd_unmapped"))]


def test_nothing_lands_as_an_unlabelled_dotted_name(exporter: StatsdExporter) -> None:
    lines = [
        "retail.consumer.eu-west.orders.unknown_outcome:1|c",
        "retail.something.new:2|g",
        "airflow.some.future.metric:3|ms",
        "another_app.requests:1|c",
    ]
    samples = exporter.send(lines)
    names = {s.name for s in _own(samples)}
    assert names == {
        "retail_test_probe_total",
        "statsd_unmapped_total",
        "statsd_unmapped",
        "statsd_unmapped_seconds",
        "statsd_unmapped_seconds_sum",
        "statsd_unmapped_seconds_count",
    }
    stats = {s.labels["stat"] for s in samples if s.name.startswith("statsd_unmapped")}
    assert stats == {line.split(":")[0] for line in lines}
