"""Kafka brokers of the local stack: KRaft mode, each broker also a controller.

A broker's storage is formatted once (``kafka.tools.StorageTool format``) with the cluster id
kept in the stack directory; a single broker uses a dynamic quorum (``--standalone``), three
brokers a static voter set.
"""

from __future__ import annotations

import base64
import string
import subprocess
import uuid
from pathlib import Path

from retail.topology import KafkaBroker, Topology
from stack.errors import ComponentError
from stack.fetch import Artifacts
from stack.process import ManagedProcess

TEMPLATES = Path(__file__).parent / "templates"
MONITORING = Path(__file__).resolve().parent.parent / "monitoring"


def broker_home(stack_dir: Path, broker: KafkaBroker) -> Path:
    return stack_dir / "kafka" / broker.name


def new_cluster_id() -> str:
    """A random KRaft cluster id: a UUID in unpadded base64url.

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with ``-``: one id in 64 would,
    and a command-line tool reads it as an option (``kafka-storage format -t -x...`` fails).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def cluster_id(stack_dir: Path) -> str:
    """The KRaft cluster id, made once per stack directory."""
    path = stack_dir / "kafka" / "cluster-id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_cluster_id())
    return path.read_text().strip()


def write_config(stack_dir: Path, topology: Topology, broker: KafkaBroker) -> Path:
    """Render server.properties and the log4j2 config; returns the broker's home."""
    home = broker_home(stack_dir, broker)
    for sub in ("data", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    brokers = topology.brokers
    if len(brokers) == 1:
        quorum = f"controller.quorum.bootstrap.servers={broker.address}:{broker.controller_port}"
    else:
        voters = ",".join(f"{b.node_id}@{b.address}:{b.controller_port}" for b in brokers)
        quorum = f"controller.quorum.voters={voters}"
    replication = min(3, len(brokers))
    props = string.Template((TEMPLATES / "kafka-server.properties").read_text()).substitute(
        node_id=broker.node_id,
        quorum_line=quorum,
        address=broker.address,
        port=broker.port,
        controller_port=broker.controller_port,
        home=home,
        replication=replication,
        min_isr=max(1, replication - 1),
    )
    (home / "server.properties").write_text(props)
    (home / "log4j2.properties").write_text((TEMPLATES / "kafka-log4j2.properties").read_text())
    return home


def _jvm(home: Path, heap_mb: int) -> list[str]:
    # Kafka's own defaults (kafka-run-class.sh) with a heap sized for this machine.
    return [
        "java",
        f"-Xms{heap_mb}m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:ParallelGCThreads=1",
        "-XX:ConcGCThreads=1",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={home / 'logs'}",
        f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
    ]


def format_storage(
    stack_dir: Path, topology: Topology, broker: KafkaBroker, artifacts: Artifacts
) -> None:
    """Format the broker's log dir once; a formatted dir is left alone."""
    home = broker_home(stack_dir, broker)
    if (home / "data" / "meta.properties").exists():
        return
    argv = [
        *_jvm(home, 256),
        "-cp",
        f"{artifacts.kafka_lib}/*",
        "kafka.tools.StorageTool",
        "format",
        f"--cluster-id={cluster_id(stack_dir)}",
        f"--config={home / 'server.properties'}",
    ]
    if len(topology.brokers) == 1:
        argv.append("--standalone")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        # The tool's last line says why (a test's traceback shows only the message).
        last = output.splitlines()[-1] if output else f"exit code {done.returncode}"
        raise ComponentError(broker.name, f"formatting its storage failed: {last}", output[-3000:])


def broker_process(
    stack_dir: Path, topology: Topology, broker: KafkaBroker, artifacts: Artifacts
) -> ManagedProcess:
    home = broker_home(stack_dir, broker)
    exporter = (
        f"-javaagent:{artifacts.jmx_exporter_jar}="
        f"{broker.address}:{broker.exporter_port}:{MONITORING / 'jmx' / 'kafka.yml'}"
    )
    argv = [
        *_jvm(home, 512),
        exporter,
        "-cp",
        f"{artifacts.kafka_lib}/*",
        "kafka.Kafka",
        str(home / "server.properties"),
    ]
    return ManagedProcess(
        name=broker.name, argv=argv, home=home, log_file=home / "logs" / "server.log"
    )
