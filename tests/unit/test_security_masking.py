"""Secrets stay out of what is printed: the connections `retail airflow-env` shows, the Jolokia
login the hooks hand on (and Airflow masks), the Airflow users and their passwords file."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from plugins.retail_airflow.hooks import RetailCassandraHook, jolokia_login
from retail import cli
from retail.connections import CASSANDRA_CONN_ID, JOLOKIA_EXTRA, connections, masked
from retail.credentials import JOLOKIA_USER, Credentials
from retail.errors import ConfigError
from retail.settings import Settings, get_settings
from retail.topology import profile_topology
from stack import secrets
from stack.airflow import ROLES, AirflowServers

TOPOLOGY = profile_topology("test")


@pytest.fixture
def stack_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Credentials]:
    """A state dir of its own with a generated stack's credentials and topology."""
    monkeypatch.setenv("RETAIL_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    stack_dir = get_settings().stack_dir
    stack_dir.mkdir(parents=True)
    (stack_dir / "topology.json").write_text(TOPOLOGY.to_json())
    try:
        yield secrets.ensure(stack_dir, TOPOLOGY)
    finally:
        get_settings.cache_clear()


def _passwords(creds: Credentials) -> list[str]:
    raw = json.loads((creds.directory / "credentials.json").read_text())
    return [pw for users in raw.values() for pw in users.values()]


def test_masked_hides_every_password_at_any_depth() -> None:
    conn = {
        "conn_type": "cassandra",
        "login": "ops",
        "password": "p1",
        "extra": {
            "local_dc": "eu-west",
            JOLOKIA_EXTRA: {"login": "monitor", "password": "p2"},
            "ssl_options": {"ca_certs": "/ca.pem", "keyfile_password": "p3"},
            "sasl.password": "p4",
            "client_secret": "p5",
            "hosts": [{"password": "p6"}],
        },
    }
    shown = json.dumps(masked(conn))
    assert not any(f'"p{i}"' in shown for i in range(1, 7))
    assert masked(conn)["extra"][JOLOKIA_EXTRA] == {"login": "monitor", "password": "***"}
    assert masked(conn)["extra"]["local_dc"] == "eu-west"


def test_the_cassandra_connection_carries_the_jolokia_login(stack_state: Credentials) -> None:
    extra = connections(TOPOLOGY, get_settings())[CASSANDRA_CONN_ID]["extra"]
    login = stack_state.login("jolokia", JOLOKIA_USER)
    assert extra[JOLOKIA_EXTRA] == {
        "login": JOLOKIA_USER,
        "password": login.password.get_secret_value(),
    }


def test_without_credentials_the_connection_has_no_jolokia_login(tmp_path: Path) -> None:
    extra = connections(TOPOLOGY, Settings(state_dir=tmp_path))[CASSANDRA_CONN_ID]["extra"]
    assert JOLOKIA_EXTRA not in extra


def test_airflow_env_prints_no_password_and_sources_a_private_file(
    stack_state: Credentials,
) -> None:
    result = CliRunner().invoke(cli.app, ["airflow-env"])
    assert result.exit_code == 0, result.output
    for password in _passwords(stack_state):
        assert password not in result.output
    assert '"password": "***"' in result.output
    private = stack_state.directory / cli.AIRFLOW_ENV_FILE
    assert result.output.rstrip().splitlines()[-1] == f". {private}"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    jolokia_password = stack_state.login("jolokia", JOLOKIA_USER).password.get_secret_value()
    assert jolokia_password in private.read_text()


def test_the_hook_hands_on_the_jolokia_login_and_airflow_masks_it(
    stack_state: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk._shared.secrets_masker import redact

    conn = connections(TOPOLOGY, get_settings())[CASSANDRA_CONN_ID]
    monkeypatch.setenv("AIRFLOW_CONN_RETAIL_CASSANDRA_JOLOKIA", json.dumps(conn))
    hook = RetailCassandraHook("retail_cassandra_jolokia")
    login = hook.jolokia_login
    assert login is not None and login.username == JOLOKIA_USER
    password = login.password.get_secret_value()
    assert password == conn["extra"][JOLOKIA_EXTRA]["password"]
    assert password not in repr(login)
    assert JOLOKIA_EXTRA not in hook.options.cluster  # not handed to the driver
    assert password not in str(redact(f"the extra says {hook.conn.extra_dejson}"))
    client = hook.jolokia()
    try:
        assert client.client.auth is not None
    finally:
        client.close()


@pytest.mark.parametrize(
    "value", ["monitor:pw", {"login": "monitor"}, {"login": "", "password": "x"}]
)
def test_a_malformed_jolokia_login_is_refused_without_showing_it(value: object) -> None:
    conn = SimpleNamespace(
        conn_id="c", login=None, password=None, extra_dejson={JOLOKIA_EXTRA: value}
    )
    with pytest.raises(ConfigError) as err:
        jolokia_login(conn)
    assert "pw" not in str(err.value) and "'x'" not in str(err.value)


def test_airflow_knows_three_users_with_passwords_from_a_private_file(
    stack_state: Credentials,
) -> None:
    servers = AirflowServers(TOPOLOGY, get_settings().stack_dir)
    assert servers.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == (
        "admin:admin,operator:user,viewer:viewer"
    )
    servers.home.mkdir(parents=True)
    servers.write_passwords()
    assert stat.S_IMODE(servers.passwords_file.stat().st_mode) == 0o600
    written = json.loads(servers.passwords_file.read_text())
    assert set(written) == set(ROLES)
    for user, password in written.items():
        assert password == stack_state.login("airflow", user).password.get_secret_value()
