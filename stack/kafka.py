"""Kafka brokers of the local stack: KRaft mode, each broker also a controller.

A broker's storage is formatted once (``kafka.tools.StorageTool format``) with the cluster id
kept in the stack directory; a single broker uses a dynamic quorum (``--standalone``), three
brokers a static voter set.

Secure by default: clients and the brokers themselves connect over SASL_SSL with SCRAM-SHA-512
(the brokers as the admin), the controllers over mutual TLS with the brokers' certificates; the
StandardAuthorizer denies whatever no ACL allows. Every Kafka login's SCRAM credential is written
into the metadata log at the format step (KIP-900), so the brokers can authenticate each other
from their first start.
"""

from __future__ import annotations

import base64
import string
import subprocess
import uuid
from pathlib import Path

from retail import credentials as cred
from retail.topology import KafkaBroker, Topology
from stack import secrets
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


SCRAM_MECHANISM = "SCRAM-SHA-512"


def super_users(topology: Topology) -> list[str]:
    """The principals the authorizer lets do anything: the admin (the inter-broker login over
    SASL) and every broker's certificate subject (what a controller sees over mutual TLS)."""
    return [
        f"User:{cred.KAFKA_ADMIN}",
        *(f"User:{secrets.tls_subject(b.name)}" for b in topology.brokers),
    ]


def write_config(stack_dir: Path, topology: Topology, broker: KafkaBroker) -> Path:
    """Render server.properties (mode 0600: it holds the admin's password) and the log4j2
    config; returns the broker's home. The stack's secrets must exist (``secrets.ensure``)."""
    home = broker_home(stack_dir, broker)
    for sub in ("data", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    creds = _credentials(stack_dir)
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
        admin_user=cred.KAFKA_ADMIN,
        admin_password=creds.login("kafka", cred.KAFKA_ADMIN).password.get_secret_value(),
        server_pem=secrets.server_pem(stack_dir, broker.name),
        ca_file=creds.ca_file,
        super_users=";".join(super_users(topology)),
    )
    secrets.write_private(home / "server.properties", props.encode())
    (home / "log4j2.properties").write_text((TEMPLATES / "kafka-log4j2.properties").read_text())
    return home


def _credentials(stack_dir: Path) -> cred.Credentials:
    return cred.Credentials.load(secrets.secrets_dir(stack_dir))


def scram_arguments(stack_dir: Path, topology: Topology) -> str:
    """The format step's ``--add-scram`` options, one SCRAM credential per Kafka login, as the
    lines of an argument file: the tool reads ``@FILE`` (argparse4j's file prefix), so no
    password is ever on a command line that ``ps`` shows."""
    creds = _credentials(stack_dir)
    lines = []
    for user in secrets.wanted_logins(topology)["kafka"]:
        password = creds.login("kafka", user).password.get_secret_value()
        lines += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
    return "".join(f"{line}\n" for line in lines)


def admin_config(stack_dir: Path, topology: Topology) -> dict[str, object]:
    """The client config of the admin login: the stack's own, for its probes and set-up."""
    from retail.kafka import client_config

    return client_config(topology, cred.KAFKA_ADMIN, _credentials(stack_dir))


def secure(stack_dir: Path, topology: Topology) -> None:
    """Once the brokers answer: give every Kafka login its SCRAM credential if the metadata has
    none yet (a login made after the format step, e.g. a DC added later), then create the
    platform's topics and their ACLs (:func:`retail.kafka.ensure_topics`). Idempotent."""
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    from retail.kafka import Topics, ensure_topics

    creds = _credentials(stack_dir)
    admin = AdminClient(admin_config(stack_dir, topology))
    users = secrets.wanted_logins(topology)["kafka"]
    have = {
        user
        for user, future in admin.describe_user_scram_credentials(users).items()
        if _described(future)
    }
    missing = [u for u in users if u not in have]
    if missing:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
        upserts = [
            UserScramCredentialUpsertion(
                u, info, creds.login("kafka", u).password.get_secret_value().encode()
            )
            for u in missing
        ]
        for future in admin.alter_user_scram_credentials(upserts).values():
            future.result(timeout=30)
    ensure_topics(topology, Topics.from_settings(), credentials=creds)


def _described(future: object) -> bool:
    """Whether a user's SCRAM description came back (it fails for a user without any)."""
    from confluent_kafka import KafkaException

    try:
        future.result(timeout=30)  # type: ignore[attr-defined]
    except KafkaException:
        return False
    return True


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


# Written once the storage is formatted with the logins' SCRAM credentials.
SCRAM_FORMATTED = "formatted-with-scram"


def format_storage(
    stack_dir: Path, topology: Topology, broker: KafkaBroker, artifacts: Artifacts
) -> None:
    """Format the broker's log dir once, with every login's SCRAM credential; a dir formatted
    so is left alone, one formatted without them (a stack from before Kafka's logins, where no
    client could ever authenticate) is refused with what to do."""
    home = broker_home(stack_dir, broker)
    marker = home / SCRAM_FORMATTED
    if (home / "data" / "meta.properties").exists():
        if marker.exists():
            return
        raise ComponentError(
            broker.name,
            "its storage was formatted before Kafka had logins (SASL/SCRAM), so no client can "
            "authenticate to it. Start a new stack with `retail stack up --fresh` (the stack's "
            "Kafka and Cassandra data are lost), or `retail stack down --purge` first.",
        )
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
    args_file = home / ".format-scram-args"
    secrets.write_private(args_file, scram_arguments(stack_dir, topology).encode())
    try:
        done = subprocess.run([*argv, f"@{args_file}"], capture_output=True, text=True, check=False)
    finally:
        args_file.unlink(missing_ok=True)
    if done.returncode != 0:
        # Its output lists the SCRAM records it would write (salted keys, no passwords): keep
        # the reason only.
        output = "\n".join(
            line for line in (done.stdout + done.stderr).splitlines() if "Scram" not in line
        ).strip()
        # The tool's last line says why (a test's traceback shows only the message).
        last = output.splitlines()[-1] if output else f"exit code {done.returncode}"
        raise ComponentError(broker.name, f"formatting its storage failed: {last}", output[-3000:])
    marker.touch()


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
