"""Applying a Kafka rebalance: Kafka's own reassignment tool, a throttle, progress until done,
then a preferred leader election.

confluent-kafka's AdminClient has no partition reassignment (it has ``elect_leaders``), so the
moves go through the tool Kafka ships for it, ``org.apache.kafka.tools.reassign.
ReassignPartitionsCommand`` from the ``kafka-tools`` jar, run on the JVM with the lib dir of
Kafka's jars on its classpath:

1. ``--execute --throttle B``: the controller starts every move at once; the throttle caps the
   replication traffic of the moving replicas (leaders and followers) at B bytes/s per broker,
   so the copies never starve the producers and consumers.
2. ``--verify``, every few seconds: which partitions are done; it also removes the throttle
   once all are (which is why it must run until then). Progress goes to the log and to the
   gauges ``retail.kafka.reassignments_in_progress`` and ``retail.kafka.rebalance.
   bytes_to_move`` (Prometheus: ``retail_kafka_reassignments_in_progress``,
   ``retail_kafka_rebalance_bytes_to_move``).
3. A preferred leader election on the changed partitions (``AdminClient.elect_leaders``): the
   controller does not move a leader that is still in the replica set by itself, and the new
   first replicas are the even leaders of the proposal.

Partition sizes come from ``org.apache.kafka.tools.LogDirsCommand`` (bytes on disk of every
replica), the same tool jar. The tools log in with the client config the DAG's connection
carries (SASL_SSL, SCRAM): it is written as a Java properties file of mode 0600 in a private
temporary directory, removed after each run, and never logged.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from retail.credentials import write_private
from retail.kafka import ClientConfig
from retail.metrics import Metrics
from retail.ops.kafka_rebalance import Proposal, RebalanceError, human_bytes, reassignment_json

log = logging.getLogger(__name__)

REASSIGN_TOOL = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"
LOG_DIRS_TOOL = "org.apache.kafka.tools.LogDirsCommand"
IN_PROGRESS_GAUGE = "kafka.reassignments_in_progress"
BYTES_TO_MOVE_GAUGE = "kafka.rebalance.bytes_to_move"

_JAAS_MODULES = {
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
}


def _properties_value(value: str) -> str:
    # java.util.Properties reads a backslash as an escape.
    return value.replace("\\", "\\\\")


def _jaas_quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def java_client_properties(config: ClientConfig) -> str:
    """The Java admin client properties of a librdkafka ``config``: bootstrap servers, security
    protocol, the SASL login as a JAAS line, the CA as a PEM trust store. Refuses what it
    cannot translate rather than drop it (a tool that then fails to log in says less)."""
    props = {"bootstrap.servers": str(config["bootstrap.servers"])}
    protocol = str(config.get("security.protocol", "PLAINTEXT")).upper()
    props["security.protocol"] = protocol
    if protocol.startswith("SASL"):
        mechanism = str(config.get("sasl.mechanism", "GSSAPI")).upper()
        if mechanism not in _JAAS_MODULES:
            raise RebalanceError(
                f"sasl.mechanism {mechanism} cannot be handed to Kafka's tools here; use one of "
                f"{sorted(_JAAS_MODULES)} in the Kafka connection"
            )
        user, password = config.get("sasl.username"), config.get("sasl.password")
        if not user or not password:
            raise RebalanceError(
                "the Kafka connection uses SASL but has no login or password; give it the "
                "admin login (`retail airflow-env`)"
            )
        props["sasl.mechanism"] = mechanism
        props["sasl.jaas.config"] = (
            f"{_JAAS_MODULES[mechanism]} required username={_jaas_quoted(str(user))} "
            f"password={_jaas_quoted(str(password))};"
        )
    if protocol.endswith("SSL"):
        if config.get("ssl.certificate.location") or config.get("ssl.key.location"):
            raise RebalanceError(
                "client certificates (ssl.certificate.location) are not handed to Kafka's "
                "tools; log in with SASL over TLS instead"
            )
        ca = config.get("ssl.ca.location")
        if ca:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = str(ca)
    return "".join(f"{k}={_properties_value(v)}\n" for k, v in props.items())


@dataclass
class VerifyResult:
    """What ``--verify`` says about each partition of a reassignment."""

    completed: set[tuple[str, int]] = field(default_factory=set)
    in_progress: set[tuple[str, int]] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)


_VERIFY_LINE = re.compile(
    r"^Reassignment of partition (\S+)-(\d+) is (completed|still in progress)"
)


def parse_verify(output: str) -> VerifyResult:
    """``ReassignPartitionsCommand --verify`` output -> which partitions are done, which are
    moving, and the lines that say one ended elsewhere than asked (``There is no active
    reassignment of partition t-0, but replica set is [..] rather than [..]``)."""
    result = VerifyResult()
    for line in output.splitlines():
        m = _VERIFY_LINE.match(line.strip())
        if m:
            tp = (m.group(1), int(m.group(2)))
            (result.completed if m.group(3) == "completed" else result.in_progress).add(tp)
        elif line.startswith("There is no active reassignment") or "failed" in line.lower():
            result.failed.append(line.strip())
    return result


def parse_log_dirs(output: str) -> dict[tuple[str, int], int]:
    """``LogDirsCommand --describe`` output -> bytes of each (topic, partition): the largest of
    its replicas (a follower that lags holds less; the move copies what the leader has)."""
    line = next((s for s in output.splitlines() if s.startswith("{")), None)
    if line is None:
        raise RebalanceError(f"Kafka's log dirs tool printed no JSON: {output[-500:]!r}")
    sizes: dict[tuple[str, int], int] = {}
    for broker in json.loads(line)["brokers"]:
        for log_dir in broker.get("logDirs", []):
            for part in log_dir.get("partitions", []):
                if part.get("isFuture"):
                    continue
                topic, _, number = part["partition"].rpartition("-")
                key = (topic, int(number))
                sizes[key] = max(sizes.get(key, 0), int(part["size"]))
    return sizes


def parse_active(output: str) -> list[str]:
    """``ReassignPartitionsCommand --list`` output -> one line per active reassignment
    (``t-0: replicas: 1,2,3. adding: 3. removing: 1.``); none when it says it found none."""
    if "No partition reassignments found" in output:
        return []
    return [
        s.strip()
        for s in output.splitlines()
        if s.strip() and not s.startswith("Current partition reassignments")
    ]


def _without_secrets(text: str) -> str:
    return "\n".join(s for s in text.splitlines() if "password" not in s.lower())


@dataclass
class KafkaTools:
    """Kafka's command-line tools on the JVM, logged in as ``config`` says. ``lib``: the lib
    dir of Kafka's jars (``kafka-tools`` and its dependencies)."""

    lib: Path
    config: ClientConfig
    java: str = "java"
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if not (self.lib.is_dir() and any(self.lib.glob("kafka-tools-*.jar"))):
            raise RebalanceError(
                f"no kafka-tools jar in {self.lib}: fetch Kafka's jars (`retail stack fetch`) "
                "or set RETAIL_KAFKA_LIB to the lib dir of a Kafka 4 installation"
            )

    def run(self, main: str, *args: str) -> str:
        """Run tool ``main`` with ``args``; its standard output. Raises RebalanceError with
        the tool's own reason (never a password) when it fails."""
        with tempfile.TemporaryDirectory(prefix="retail-kafka-tools-") as tmp:
            props = Path(tmp) / "admin.properties"
            write_private(props, java_client_properties(self.config).encode())
            argv = [
                self.java,
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-Djava.awt.headless=true",
                "-cp",
                f"{self.lib}/*",
                main,
                "--bootstrap-server",
                str(self.config["bootstrap.servers"]),
                "--command-config",
                str(props),
                *args,
            ]
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=self.timeout, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise RebalanceError(
                    f"{main.rsplit('.', 1)[-1]} did not finish within {self.timeout:.0f}s; is "
                    "Kafka reachable?"
                ) from exc
            except FileNotFoundError as exc:
                raise RebalanceError(f"no {self.java} here: install a Java 17 runtime") from exc
        if done.returncode != 0:
            output = _without_secrets(done.stdout + done.stderr).strip()
            raise RebalanceError(
                f"{main.rsplit('.', 1)[-1]} {' '.join(a for a in args if a.startswith('--'))} "
                f"failed (exit {done.returncode}): {output[-1500:]}"
            )
        return done.stdout

    def partition_sizes(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """Bytes of each partition of ``topics`` (the largest replica's)."""
        names = sorted(topics)
        if not names:
            return {}
        out = self.run(LOG_DIRS_TOOL, "--describe", "--topic-list", ",".join(names))
        return parse_log_dirs(out)

    def _with_file(self, reassignment: Mapping[str, Any], *args: str) -> str:
        with tempfile.TemporaryDirectory(prefix="retail-reassign-") as tmp:
            path = Path(tmp) / "reassignment.json"
            path.write_text(json.dumps(reassignment))
            return self.run(REASSIGN_TOOL, "--reassignment-json-file", str(path), *args)

    def execute(self, reassignment: Mapping[str, Any], throttle_bytes_per_second: int) -> str:
        return self._with_file(
            reassignment, "--execute", "--throttle", str(int(throttle_bytes_per_second))
        )

    def verify(self, reassignment: Mapping[str, Any]) -> VerifyResult:
        return parse_verify(self._with_file(reassignment, "--verify"))

    def active(self) -> list[str]:
        """``--list``: the reassignments Kafka is running now (any tool's), one line each."""
        return parse_active(self.run(REASSIGN_TOOL, "--list"))


def current_assignment(
    config: ClientConfig, prefix: str, timeout: float = 10.0
) -> tuple[dict[str, dict[int, list[int]]], list[int]]:
    """The replica assignment of every topic named ``<prefix>.*`` and the live brokers, from
    the cluster's metadata."""
    admin = AdminClient(dict(config))
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise RebalanceError(
            f"Kafka at {config.get('bootstrap.servers')} did not answer within {timeout:.0f}s "
            f"({exc}); is it up? (`retail stack status`)"
        ) from exc
    assignment = {
        name: {p: list(pm.replicas) for p, pm in t.partitions.items()}
        for name, t in meta.topics.items()
        if name.startswith(f"{prefix}.") and t.error is None
    }
    return assignment, sorted(meta.brokers)


def not_led_by_preferred(
    config: ClientConfig, prefix: str, timeout: float = 10.0
) -> list[tuple[str, int]]:
    """The partitions of the topics ``<prefix>.*`` whose leader now is not their preferred one
    (first replica): what a preferred leader election would change."""
    admin = AdminClient(dict(config))
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise RebalanceError(f"Kafka did not answer within {timeout:.0f}s ({exc})") from exc
    return sorted(
        (name, p)
        for name, t in meta.topics.items()
        if name.startswith(f"{prefix}.") and t.error is None
        for p, pm in t.partitions.items()
        if pm.replicas and pm.leader != pm.replicas[0]
    )


def elect_preferred_leaders(
    config: ClientConfig, partitions: Iterable[tuple[str, int]], timeout: float = 30.0
) -> list[str]:
    """Make each partition's first replica its leader; returns the partitions that could not
    (with why). An election Kafka finds not needed (the leader is already the preferred one)
    is no failure."""
    from confluent_kafka import ElectionType, KafkaError

    wanted = [TopicPartition(t, p) for t, p in sorted(set(partitions))]
    if not wanted:
        return []
    admin = AdminClient(dict(config))
    # No request_timeout/operation_timeout: confluent-kafka 2.16.1's elect_leaders documents
    # them but refuses either (SystemError: more argument specifiers than keyword list
    # entries); the wait on the future bounds it instead.
    future = admin.elect_leaders(ElectionType.PREFERRED, wanted)
    try:
        results = future.result(timeout=timeout)
    except KafkaException as exc:
        raise RebalanceError(f"the preferred leader election failed: {exc}") from exc
    failed = []
    for tp, error in results.items():
        if error is None:
            continue
        kerr = error.args[0] if isinstance(error, KafkaException) and error.args else error
        if isinstance(kerr, KafkaError) and kerr.code() == KafkaError.ELECTION_NOT_NEEDED:
            continue
        failed.append(f"{tp.topic}[{tp.partition}]: {error}")
    return failed


@dataclass
class ApplyResult:
    """How applying a proposal went."""

    partitions: int
    seconds: float
    checks: int
    election_failures: list[str]


def apply(
    proposal: Proposal,
    tools: KafkaTools,
    metrics: Metrics,
    *,
    throttle_bytes_per_second: int,
    poll_seconds: float = 2.0,
    timeout: float = 3600.0,
    on_progress: Callable[[str], None] | None = None,
) -> ApplyResult:
    """Start ``proposal``'s reassignment with the throttle, report progress until every
    partition has completed (which also removes the throttle), then elect the preferred
    leaders of the changed partitions. Raises RebalanceError if a partition ends elsewhere
    than asked, or if the moves outlast ``timeout`` (they go on in Kafka: run again to
    follow them, or cancel with the tool's ``--cancel``)."""
    say = on_progress or log.info
    plan = reassignment_json(proposal)
    total = len(plan["partitions"])
    start = time.monotonic()
    if not total:
        metrics.gauge(IN_PROGRESS_GAUGE, 0)
        metrics.gauge(BYTES_TO_MOVE_GAUGE, 0)
        return ApplyResult(0, 0.0, 0, [])
    bytes_of: dict[tuple[str, int], int] = {}
    for m in proposal.moves:
        bytes_of[(m.topic, m.partition)] = bytes_of.get((m.topic, m.partition), 0) + m.bytes
    metrics.gauge(BYTES_TO_MOVE_GAUGE, proposal.bytes_to_move)
    metrics.gauge(IN_PROGRESS_GAUGE, total)
    say(
        f"starting the reassignment of {total} partition(s), {human_bytes(proposal.bytes_to_move)}"
        f" to copy, throttled at {human_bytes(throttle_bytes_per_second)}/s"
    )
    started = tools.execute(plan, throttle_bytes_per_second)
    # The tool prints the assignment as it was, as a reassignment file: what puts it back.
    rollback = next((s for s in started.splitlines() if s.startswith('{"version"')), None)
    if rollback:
        say(f"to put the replicas back as they were, reassign with: {rollback}")
    checks = 0
    while True:
        status = tools.verify(plan)
        checks += 1
        if status.failed:
            metrics.gauge(IN_PROGRESS_GAUGE, len(status.in_progress))
            raise RebalanceError(
                "the reassignment ended elsewhere than planned (another reassignment or a "
                "broker change meanwhile?); rerun the DAG for a fresh proposal: "
                + "; ".join(status.failed)
            )
        left = sum(bytes_of.get(tp, 0) for tp in status.in_progress)
        metrics.gauge(IN_PROGRESS_GAUGE, len(status.in_progress))
        metrics.gauge(BYTES_TO_MOVE_GAUGE, left)
        elapsed = time.monotonic() - start
        say(
            f"{total - len(status.in_progress)} of {total} partition(s) reassigned, "
            f"{len(status.in_progress)} in progress, about {human_bytes(left)} left "
            f"({elapsed:.0f}s)"
        )
        if not status.in_progress:
            break
        if elapsed > timeout:
            raise RebalanceError(
                f"{len(status.in_progress)} partition(s) still moving after {timeout:.0f}s; the "
                "moves go on in Kafka under the throttle, which the tool's --verify removes once "
                "they are done. Run the DAG again when they are (it refuses while any is "
                "active), or give it a higher throttle_bytes_per_second"
            )
        time.sleep(poll_seconds)
    failures = elect_preferred_leaders(tools.config, [(t, p) for t, p in proposal.changed])
    for line in failures:
        log.warning("preferred leader election: %s", line)
    return ApplyResult(total, time.monotonic() - start, checks, failures)
