"""Cassandra nodes of the local stack: one JVM per node, as ccm runs them.

Each node gets a directory of its own (``conf/``, ``data/``, ``commitlog/``, ``logs/`` ...), a
``cassandra.yaml`` and ``cassandra-rackdc.properties`` rendered from the topology, its own JMX
port, and two Java agents on its own address: the Prometheus JMX exporter (metrics) and Jolokia
(JMX over HTTP, read through retail/jolokia.py for gossip state, load and tokens without starting a
nodetool JVM per question; behind a login and an access policy, stack/jolokia.py).
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

from retail.credentials import CA_FILE
from retail.topology import CassandraNode, Topology
from stack import secrets
from stack.fetch import Artifacts
from stack.jolokia import agent_config_path as jolokia_agent_config
from stack.process import ManagedProcess

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
MODULE_ARGS = TEMPLATES / "jdk17-modules.args"


def node_home(stack_dir: Path, node: CassandraNode) -> Path:
    return stack_dir / "cassandra" / node.name


def write_config(stack_dir: Path, topology: Topology, node: CassandraNode) -> Path:
    """Render the node's configuration files; returns the node's home directory."""
    home = node_home(stack_dir, node)
    conf = home / "conf"
    for sub in ("conf", "data", "commitlog", "hints", "saved_caches", "cdc_raw", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    yaml = string.Template((TEMPLATES / "cassandra.yaml").read_text()).substitute(
        cluster_name=topology.cluster_name,
        token=node.token,
        auto_bootstrap="true" if node.auto_bootstrap else "false",
        seeds=",".join(f"{s.address}:{s.storage_port}" for s in topology.seeds),
        address=node.address,
        storage_port=node.storage_port,
        cql_port=node.cql_port,
        home=home,
        server_pem=secrets.server_pem(stack_dir, node.name),
        ca_pem=secrets.secrets_dir(stack_dir) / CA_FILE,
        internode_encryption="all" if topology.internode_tls else "none",
        # Nodes prove to each other that they hold a certificate of the stack's CA.
        internode_client_auth="true" if topology.internode_tls else "false",
    )
    (conf / "cassandra.yaml").write_text(yaml)
    (conf / "cassandra-rackdc.properties").write_text(f"dc={node.dc}\nrack={node.rack}\n")
    (conf / "logback.xml").write_text((TEMPLATES / "cassandra-logback.xml").read_text())
    return home


def jvm_sizing(heap_mb: int) -> list[str]:
    """Heap and GC for a node that shares 2 cores with five to eight other JVMs.

    No ``-XX:+AlwaysPreTouch`` (Cassandra's default): it commits the whole heap at start, which
    costs seconds and RSS for nothing on a test cluster. One GC thread each, and Cassandra told
    it has 2 processors, so that thread pools are sized for the machine we really have.
    """
    return [
        f"-Xms{heap_mb}m",
        f"-Xmx{heap_mb}m",
        "-Xss256k",
        "-XX:MaxDirectMemorySize=256m",
        "-XX:+UseG1GC",
        "-XX:MaxTenuringThreshold=1",
        "-XX:G1RSetUpdatingPauseTimePercent=5",
        "-XX:MaxGCPauseMillis=300",
        "-XX:ParallelGCThreads=1",
        "-XX:ConcGCThreads=1",
        "-XX:CICompilerCount=2",
        "-XX:ActiveProcessorCount=2",
        "-XX:+HeapDumpOnOutOfMemoryError",
        "-XX:+ExitOnOutOfMemoryError",
    ]


def node_process(
    stack_dir: Path, topology: Topology, node: CassandraNode, artifacts: Artifacts
) -> ManagedProcess:
    """The node's JVM as a managed process (not started)."""
    home = node_home(stack_dir, node)
    conf = home / "conf"
    exporter = (
        f"-javaagent:{artifacts.jmx_exporter_jar}="
        f"{node.address}:{node.exporter_port}:{MONITORING / 'jmx' / 'cassandra.yml'}"
    )
    # Its address, port, login and policy are in a 0600 options file (stack/jolokia.py), written
    # before the start: a password on this line would show in `ps`.
    jolokia = f"-javaagent:{artifacts.jolokia_jar}=config={jolokia_agent_config(conf)}"
    argv = [
        "java",
        *jvm_sizing(topology.heap_mb),
        "-ea",
        "-da:net.openhft...",
        "-XX:+UseThreadPriorities",
        "-XX:+PerfDisableSharedMem",
        "-Djava.net.preferIPv4Stack=true",
        f"@{MODULE_ARGS}",
        "-Dio.netty.tryReflectionSetAccessible=true",
        "-Dio.netty.allocator.useCacheForAllThreads=true",
        "-Dio.netty.allocator.maxOrder=11",
        f"-javaagent:{artifacts.jamm_jar}",
        exporter,
        jolokia,
        f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
        f"-Dcassandra-rackdc.properties=file://{conf / 'cassandra-rackdc.properties'}",
        f"-Dlogback.configurationFile={conf / 'logback.xml'}",
        f"-Dcassandra.logdir={home / 'logs'}",
        f"-Dcassandra.storagedir={home}",
        f"-Dcassandra.jmx.local.port={node.jmx_port}",
        # Keep stdout open: otherwise the daemon closes it after start-up and its last words
        # before a crash are lost.
        "-Dcassandra-foreground=yes",
        # Every node of a new cluster starts at once; waiting for gossip to settle (8 s or
        # more per node) buys nothing when the tokens are fixed in advance.
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        # The default superuser exists at once on a new cluster: the stack replaces it
        # (retail/ops/access.py) as soon as the nodes are up, not 10 s later.
        "-Dcassandra.superuser_setup_delay_ms=0",
        # system_auth starts on every node (SimpleStrategy, RF = the node count), so that
        # replicating it per DC (retail/ops/access.py) moves no login away from a node.
        f"-Dcassandra.system_auth.default_rf={len(topology.nodes)}",
        "-Dcassandra.libjemalloc=-",
        "-Dcassandra.available_processors=2",
        "-cp",
        f"{conf}:{artifacts.cassandra_lib}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]
    return ManagedProcess(
        name=node.name, argv=argv, home=home, log_file=home / "logs" / "system.log"
    )


def nodetool_argv(node: CassandraNode, args: list[str], artifacts: Artifacts) -> list[str]:
    """``nodetool ARGS`` against ``node``, run from the same classpath as the server."""
    return [
        "java",
        "-Xmx128m",
        "-XX:ParallelGCThreads=1",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",  # a short-lived client: the C1 compiler alone starts faster
        f"@{MODULE_ARGS}",
        f"-Dlogback.configurationFile={TEMPLATES / 'nodetool-logback.xml'}",
        "-cp",
        f"{artifacts.cassandra_lib}/*",
        "org.apache.cassandra.tools.NodeTool",
        "-h",
        "127.0.0.1",
        "-p",
        str(node.jmx_port),
        *args,
    ]
