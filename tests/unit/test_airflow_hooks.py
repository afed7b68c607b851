"""From an Airflow connection to the driver's and the Kafka client's config: the whole connection
is handed on (credentials, TLS, every client option in the extra), and what cannot be honoured is
refused with the reason, never dropped."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import Connection
from cassandra.auth import PlainTextAuthProvider

from retail.cassandra import CLUSTER_ARGS, ClientOptions, cluster_for
from retail.connections import (
    CASSANDRA_CONN_ID,
    KAFKA_CONN_ID,
    connections,
    topology_from_extra,
)
from retail.credentials import KAFKA_OPS, Credentials
from retail.errors import ConfigError
from retail.kafka import client_config
from retail.settings import Settings
from retail.topology import Topology, profile_topology, with_node_added
from retail_airflow.hooks import (
    RetailCassandraHook,
    RetailKafkaHook,
    cassandra_options,
    kafka_config,
)
from stack import secrets

TOPOLOGY = profile_topology("test")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
NO_SECRETS = Path("/nonexistent/retail-secrets")
# No local stack either: the connection carries the topology inline.
NO_STACK = Settings(secrets_dir=NO_SECRETS, state_dir=Path("/nonexistent/retail-state"))


@pytest.fixture(scope="module")
def stack_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The logins and CA of a stack, generated as `retail stack up` does."""
    stack_dir = tmp_path_factory.mktemp("stack")
    secrets.ensure(stack_dir, TOPOLOGY)
    return secrets.secrets_dir(stack_dir)


@pytest.fixture(autouse=True)
def _secrets_env(stack_secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The generated connections carry the Kafka login of the platform they point at.
    monkeypatch.setenv("RETAIL_SECRETS_DIR", str(stack_secrets))


def conn(conn_id: str, **fields: Any) -> Connection:
    return Connection.from_json(json.dumps(fields), conn_id=conn_id)


def cassandra(extra: dict[str, Any] | None = None, **fields: Any) -> Connection:
    # The connection as generated for a platform without secrets: no login, no TLS.
    base = connections(TOPOLOGY, NO_STACK)[CASSANDRA_CONN_ID]
    return conn(
        CASSANDRA_CONN_ID, **{**base, **fields, "extra": {**base["extra"], **(extra or {})}}
    )


def kafka(extra: dict[str, Any] | None = None, **fields: Any) -> Connection:
    base = {"conn_type": "kafka", "extra": {"bootstrap.servers": "k1:9092,k2:9092"}}
    return conn(KAFKA_CONN_ID, **{**base, **fields, "extra": {**base["extra"], **(extra or {})}})


# --- Cassandra ----------------------------------------------------------------------------------


def test_the_local_stacks_topology_is_named_by_its_file_which_ring_changes_rewrite(
    tmp_path: Path,
) -> None:
    settings = Settings(secrets_dir=NO_SECRETS, state_dir=tmp_path)
    settings.stack_dir.mkdir()
    settings.topology_path.write_text(TOPOLOGY.to_json())
    extra = connections(TOPOLOGY, settings)[CASSANDRA_CONN_ID]["extra"]
    assert extra["topology_file"] == str(settings.topology_path) and "topology" not in extra
    grown, _ = with_node_added(TOPOLOGY, "eu-west")  # what `retail stack add-node` records
    settings.topology_path.write_text(grown.to_json())
    assert topology_from_extra(extra) == grown  # what the DAGs' hook reads at each task
    # Another topology than the stack's (a test's own, a deployment's) is carried inline.
    other = connections(grown, Settings(secrets_dir=NO_SECRETS, state_dir=tmp_path / "x"))
    assert Topology.from_json(json.dumps(other[CASSANDRA_CONN_ID]["extra"]["topology"])) == grown


def test_the_generated_cassandra_connection_adds_nothing_to_the_driver() -> None:
    options = cassandra_options(cassandra())
    assert options == ClientOptions()
    assert options.auth_provider() is None


def test_login_and_password_become_plain_text_authentication() -> None:
    options = cassandra_options(cassandra(login="ops", password="s3cret-enough"))
    assert options.username == "ops"
    assert "s3cret" not in repr(options)  # masked if a log line ever prints it
    auth = options.auth_provider()
    assert isinstance(auth, PlainTextAuthProvider)
    assert (auth.username, auth.password) == ("ops", "s3cret-enough")
    with pytest.raises(ConfigError, match="password but no login"):
        cassandra_options(cassandra(password="s3cret-enough"))


def test_every_driver_option_in_the_extra_reaches_the_cluster() -> None:
    extra = {"protocol_version": 4, "connect_timeout": 20, "compression": False}
    options = cassandra_options(cassandra(extra, login="ops", password="s3cret-enough"))
    assert options.cluster == extra
    cluster = cluster_for(TOPOLOGY, "us-east", options=options)  # built, not connected
    assert (cluster.protocol_version, cluster.connect_timeout, cluster.compression) == (
        4,
        20,
        False,
    )
    assert cluster.contact_points == TOPOLOGY.datacenter("us-east").contact_points
    assert isinstance(cluster.auth_provider, PlainTextAuthProvider)
    # Without options: protocol 5, no credentials, no TLS, as before.
    plain = cluster_for(TOPOLOGY, "eu-west")
    assert (plain.protocol_version, plain.auth_provider, plain.ssl_context) == (5, None, None)


def test_tls_options_build_a_verifying_context() -> None:
    extra = {"ssl_options": {"ca_certs": CA_BUNDLE, "check_hostname": False}}
    options = cassandra_options(cassandra(extra))
    assert options.tls is not None and options.tls.ca_certs == CA_BUNDLE
    assert options.cluster == {}
    ctx = cluster_for(TOPOLOGY, "eu-west", options=options).ssl_context
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.check_hostname
    # The default checks the node's name against its certificate.
    strict = cassandra_options(cassandra({"ssl_options": {"ca_certs": CA_BUNDLE}}))
    assert strict.tls is not None and strict.tls.context().check_hostname


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_client_certificate_is_loaded_for_mutual_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=retail-ops", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    extra = {"ssl_options": {"ca_certs": str(cert), "certfile": str(cert), "keyfile": str(key)}}
    options = cassandra_options(cassandra(extra))
    assert options.tls is not None
    assert isinstance(options.tls.context(), ssl.SSLContext)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"load_balancing_policy": "RoundRobinPolicy"}, "token- and DC-aware"),
        ({"port": 9142}, "the platform's"),
        ({"contact_points": ["x"]}, "the platform's"),
        ({"retry_policy": "x"}, r"unknown Cluster option\(s\) \['retry_policy'\]"),
        ({"ssl_options": "yes"}, "must be an object"),
        ({"ssl_options": {"ca_cert": CA_BUNDLE}}, r"unknown TLS option\(s\) \['ca_cert'\]"),
        ({"ssl_options": {"cert_reqs": "MAYBE"}}, "CERT_REQUIRED, CERT_OPTIONAL or CERT_NONE"),
        ({"ssl_options": {"cert_reqs": "CERT_NONE"}}, "check_hostname needs"),
        ({"ssl_options": {"keyfile": "k.pem"}}, "keyfile without certfile"),
    ],
)
def test_what_the_driver_cannot_honour_is_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        cassandra_options(cassandra(extra))
    assert CASSANDRA_CONN_ID in str(err.value)


def test_the_options_allowed_in_the_extra_are_arguments_of_the_drivers_cluster() -> None:
    import inspect

    from cassandra.cluster import Cluster

    assert set(inspect.signature(Cluster.__init__).parameters) >= CLUSTER_ARGS


# --- Kafka ---------------------------------------------------------------------------------------


def test_the_whole_extra_is_the_kafka_client_config(stack_secrets: Path) -> None:
    extra = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "audit",
        "sasl.password": "from-the-extra",
        "ssl.ca.location": CA_BUNDLE,
        "client.id": "airflow",
        "socket.timeout.ms": 30000,
    }
    assert kafka_config(kafka(extra)) == {"bootstrap.servers": "k1:9092,k2:9092", **extra}
    generated = connections(TOPOLOGY, Settings())[KAFKA_CONN_ID]
    assert kafka_config(conn(KAFKA_CONN_ID, **generated)) == client_config(
        TOPOLOGY, KAFKA_OPS, Credentials.load(stack_secrets)
    )


def test_the_generated_kafka_connection_is_the_ops_login_its_password_in_the_masked_field(
    stack_secrets: Path,
) -> None:
    generated = connections(TOPOLOGY, Settings())[KAFKA_CONN_ID]
    password = Credentials.load(stack_secrets).login("kafka", KAFKA_OPS).password
    assert generated["login"] == KAFKA_OPS
    assert generated["password"] == password.get_secret_value()
    # Airflow masks a connection's password field; the extra holds no secret.
    assert password.get_secret_value() not in json.dumps(generated["extra"])
    assert generated["extra"]["security.protocol"] == "SASL_SSL"
    assert generated["extra"]["ssl.ca.location"] == str(stack_secrets / "ca.pem")


def test_login_and_password_are_the_sasl_credentials() -> None:
    extra = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256"}
    config = kafka_config(kafka(extra, login="audit", password="pw-long-enough"))
    assert (config["sasl.username"], config["sasl.password"]) == ("audit", "pw-long-enough")
    same = {**extra, "sasl.username": "audit"}
    assert kafka_config(kafka(same, login="audit", password="pw-long-enough")) == config
    with pytest.raises(ConfigError, match="disagree"):
        kafka_config(kafka({**extra, "sasl.username": "other"}, login="audit"))


def test_credentials_without_a_sasl_protocol_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match="SASL_SSL"):
        kafka_config(kafka(login="audit", password="pw-long-enough"))
    with pytest.raises(ConfigError, match="SASL_SSL"):
        kafka_config(kafka({"security.protocol": "SSL", "sasl.username": "audit"}))


def test_a_kafka_connection_without_brokers_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"no 'bootstrap\.servers'"):
        kafka_config(conn(KAFKA_CONN_ID, conn_type="kafka", extra={"client.id": "x"}))


# --- the hooks, on connections from the environment ---------------------------------------------


def test_the_hooks_read_their_connections_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka_conn = {
        "conn_type": "kafka",
        "extra": {"bootstrap.servers": "k:9093", "security.protocol": "SSL"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_RETAIL_KAFKA_TLS", json.dumps(kafka_conn))
    hook = RetailKafkaHook("retail_kafka_tls")
    assert hook.config == kafka_conn["extra"]
    assert hook.bootstrap_servers == "k:9093"

    # The connection as generated for a platform without secrets: no login, no TLS.
    base = connections(TOPOLOGY, NO_STACK)[CASSANDRA_CONN_ID]
    cassandra_conn = {
        **base,
        "login": "ops",
        "password": "s3cret-enough",
        "extra": {**base["extra"], "connect_timeout": 15},
    }
    monkeypatch.setenv("AIRFLOW_CONN_RETAIL_CASSANDRA_AUTH", json.dumps(cassandra_conn))
    cassandra_hook = RetailCassandraHook("retail_cassandra_auth")
    assert cassandra_hook.options.username == "ops"
    assert cassandra_hook.options.cluster == {"connect_timeout": 15}
    assert cassandra_hook.topology() == TOPOLOGY
