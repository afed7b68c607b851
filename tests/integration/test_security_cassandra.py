"""Cassandra refuses what a role was not given, seen from outside with the real driver: no
login, the default superuser, a role reaching past its grants, a client that does not trust
the stack's CA or does not speak TLS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cassandra import AuthenticationFailed, Unauthorized
from cassandra.cluster import Cluster, NoHostAvailable, Session
from pydantic import SecretStr

from retail.cassandra import ClientOptions, TlsOptions, connect
from retail.credentials import (
    CASSANDRA_ANALYST,
    CASSANDRA_CONSUMER,
    CASSANDRA_OPS,
    stack_credentials,
)
from retail.topology import Topology
from tests.integration.tls import foreign_ca

pytestmark = pytest.mark.usefixtures("schema")


def _ca_file() -> str:
    return str(stack_credentials().ca_file)


def _session(topology: Topology, options: ClientOptions) -> tuple[Cluster, Session]:
    return connect(topology, topology.datacenters[0].name, options=options)


@pytest.fixture
def as_role(topology: Topology) -> Iterator[Callable[[str], Session]]:
    opened: list[Cluster] = []

    def open_as(role: str) -> Session:
        cluster, session = connect(topology, topology.datacenters[0].name, role=role)
        opened.append(cluster)
        return session

    yield open_as
    for cluster in opened:
        cluster.shutdown()


def _refusals(exc: NoHostAvailable) -> list[type[BaseException]]:
    return [type(e) for e in exc.errors.values()]


def test_a_client_without_a_login_is_refused(topology: Topology) -> None:
    with pytest.raises(NoHostAvailable) as refused:
        _session(topology, ClientOptions(tls=TlsOptions(ca_certs=_ca_file())))
    assert "requires authentication" in str(refused.value) or AuthenticationFailed in _refusals(
        refused.value
    )


def test_the_default_superuser_cannot_log_in(topology: Topology) -> None:
    options = ClientOptions("cassandra", SecretStr("cassandra"), TlsOptions(ca_certs=_ca_file()))
    with pytest.raises(NoHostAvailable) as refused:
        _session(topology, options)
    assert set(_refusals(refused.value)) == {AuthenticationFailed}


def test_the_analyst_reads_but_cannot_write_a_row(as_role: Callable[[str], Session]) -> None:
    analyst = as_role(CASSANDRA_ANALYST)
    analyst.execute("SELECT * FROM retail.orders LIMIT 1")
    with pytest.raises(Unauthorized, match="has no MODIFY permission"):
        analyst.execute(
            "INSERT INTO retail.stores_by_region (region, store_id) VALUES ('Europe', 'intruder')"
        )


def test_the_consumer_writes_events_but_cannot_drop_a_table_or_touch_the_operations(
    as_role: Callable[[str], Session],
) -> None:
    consumer = as_role(CASSANDRA_CONSUMER)
    consumer.execute("SELECT store_id FROM retail.stores_by_region WHERE region = 'Europe'")
    with pytest.raises(Unauthorized, match="has no DROP permission"):
        consumer.execute("DROP TABLE retail.stores_by_region")
    with pytest.raises(Unauthorized, match="has no SELECT permission"):
        consumer.execute("SELECT * FROM retail_ops.schema_migrations")


def test_the_operations_cannot_make_roles_or_read_the_logins(
    as_role: Callable[[str], Session],
) -> None:
    ops = as_role(CASSANDRA_OPS)
    with pytest.raises(Unauthorized):
        ops.execute("CREATE ROLE backdoor WITH LOGIN = true AND PASSWORD = 'backdoor-pass'")
    with pytest.raises(Unauthorized):
        ops.execute("SELECT * FROM system_auth.roles")


def test_a_client_that_does_not_trust_the_stacks_ca_cannot_connect(
    topology: Topology, tmp_path: Path
) -> None:
    login = stack_credentials().login("cassandra", CASSANDRA_ANALYST)
    options = ClientOptions(
        login.username, login.password, TlsOptions(ca_certs=str(foreign_ca(tmp_path / "ca.pem")))
    )
    with pytest.raises(NoHostAvailable) as refused:
        _session(topology, options)
    # The driver reports the failed handshake as the connection's error, by its text.
    errors = [str(e) for e in refused.value.errors.values()]
    assert errors and all("CERTIFICATE_VERIFY_FAILED" in e for e in errors), errors


def test_a_client_without_tls_cannot_connect(topology: Topology) -> None:
    login = stack_credentials().login("cassandra", CASSANDRA_ANALYST)
    with pytest.raises(NoHostAvailable):
        _session(topology, ClientOptions(login.username, login.password))
