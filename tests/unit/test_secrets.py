"""The local stack's secrets: generated once, private from the first byte, kept across restarts."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import SecretStr

from retail.cassandra import ClientOptions
from retail.credentials import (
    CASSANDRA_ANALYST,
    CASSANDRA_CONSUMER,
    CASSANDRA_OPS,
    Credentials,
    kafka_consumer,
)
from retail.errors import ConfigError
from retail.settings import Settings
from retail.topology import Topology, profile_topology
from stack import secrets
from stack.secrets import COMPOSE_DIR


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_logins_and_keys_are_created_readable_by_their_owner_only(tmp_path: Path) -> None:
    topo = profile_topology("test")
    secrets.ensure(tmp_path, topo)
    directory = secrets.secrets_dir(tmp_path)
    assert _mode(directory) == 0o700
    assert _mode(directory / "credentials.json") == 0o600
    assert _mode(directory / "ca.key") == 0o600
    for node in topo.nodes:
        assert _mode(secrets.server_pem(tmp_path, node.name)) == 0o600
    assert not list(directory.glob(".*")), "no temporary file is left behind"


def test_a_second_up_keeps_every_password_and_adds_a_new_dcs_consumer(tmp_path: Path) -> None:
    first = secrets.ensure(tmp_path, profile_topology("test"))
    before = json.loads((secrets.secrets_dir(tmp_path) / "credentials.json").read_text())
    again = secrets.ensure(tmp_path, profile_topology("test"))
    assert again.login("cassandra", CASSANDRA_CONSUMER) == first.login(
        "cassandra", CASSANDRA_CONSUMER
    )
    after = json.loads((secrets.secrets_dir(tmp_path) / "credentials.json").read_text())
    assert after == before
    passwords = [p for users in after.values() for p in users.values()]
    assert len(set(passwords)) == len(passwords), "every login has its own password"


def test_each_server_certificate_chains_to_the_stack_ca_and_names_its_address(
    tmp_path: Path,
) -> None:
    topo = profile_topology("test")
    creds = secrets.ensure(tmp_path, topo)
    ca = x509.load_pem_x509_certificate(creds.ca_file.read_bytes())
    for name, address in [(n.name, n.address) for n in topo.nodes] + [
        (b.name, b.address) for b in topo.brokers
    ]:
        cert = x509.load_pem_x509_certificate(secrets.server_pem(tmp_path, name).read_bytes())
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]


def test_passwords_never_show_in_a_repr_or_the_masked_view(tmp_path: Path) -> None:
    creds = secrets.ensure(tmp_path, profile_topology("test"))
    login = creds.login("kafka", kafka_consumer("eu-west"))
    password = login.password.get_secret_value()
    assert password not in repr(login)
    assert password not in json.dumps(creds.masked())
    assert creds.masked()["kafka"][kafka_consumer("eu-west")] == "***"


def test_a_missing_login_or_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retail stack up"):
        Credentials.load(tmp_path)
    creds = secrets.ensure(tmp_path, profile_topology("test"))
    with pytest.raises(ConfigError, match="cassandra/retail_admin"):
        creds.login("cassandra", "nobody")


def test_compose_secrets_give_every_variable_a_value_and_keep_them(tmp_path: Path) -> None:
    topo = Topology.from_json((COMPOSE_DIR / "consumer" / "topology.json").read_text())
    creds = secrets.compose(tmp_path, topo)
    env_file = tmp_path / "secrets.env"
    assert _mode(env_file) == 0o600
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    example = [
        line.split("=", 1)[0]
        for line in (COMPOSE_DIR / "secrets.example.env").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert sorted(env) == sorted(example)
    assert all(len(v) >= 24 for v in env.values())
    # The Cassandra ones are the logins cassandra-roles sets on the cluster.
    consumer = creds.login("cassandra", CASSANDRA_CONSUMER).password.get_secret_value()
    ops = creds.login("cassandra", CASSANDRA_OPS).password.get_secret_value()
    assert (env["CASSANDRA_CONSUMER_PASSWORD"], env["CASSANDRA_OPS_PASSWORD"]) == (consumer, ops)
    secrets.compose(tmp_path, topo)
    assert env_file.read_text() == "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
    cert = x509.load_pem_x509_certificate((tmp_path / "servers" / "eu-west-2.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "cassandra-eu-west-2" in san.get_values_for_type(x509.DNSName)


def test_a_client_logs_in_as_its_role_unless_the_settings_name_a_login(tmp_path: Path) -> None:
    secrets.ensure(tmp_path, profile_topology("test"))
    settings = Settings(state_dir=tmp_path.parent, secrets_dir=secrets.secrets_dir(tmp_path))
    options = ClientOptions.for_role(CASSANDRA_ANALYST, settings)
    assert options.username == CASSANDRA_ANALYST
    assert options.tls is not None and options.tls.check_hostname
    assert options.tls.ca_certs == str(secrets.secrets_dir(tmp_path) / "ca.pem")
    deployment = Settings(
        secrets_dir=secrets.secrets_dir(tmp_path),
        cassandra_username="reports",
        cassandra_password=SecretStr("from-the-vault"),
        cassandra_tls_check_hostname=False,
    )
    options = ClientOptions.for_role(CASSANDRA_ANALYST, deployment)
    assert options.username == "reports"
    assert options.tls is not None and not options.tls.check_hostname
