"""The local stack's secrets: generated once, private from the first byte, kept across restarts."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from retail.credentials import CASSANDRA_CONSUMER, Credentials, kafka_consumer
from retail.errors import ConfigError
from retail.topology import profile_topology
from stack import secrets


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
