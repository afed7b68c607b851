"""Hooks: the platform's endpoints and credentials, from Airflow connections only.

Each hook hands on the whole connection: credentials, TLS and every client option in its extra,
translated by a pure function (:func:`cassandra_options`, :func:`kafka_config`) that refuses
what it cannot honour instead of dropping it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from airflow.sdk import BaseHook
from cassandra.cluster import Cluster, Session
from pydantic import SecretStr

from retail.cassandra import ClientOptions, TlsOptions, connect
from retail.connections import (
    CASSANDRA_CONN_ID,
    JOLOKIA_EXTRA,
    KAFKA_CONN_ID,
    STATSD_CONN_ID,
    topology_from_extra,
)
from retail.credentials import Login
from retail.errors import ConfigError
from retail.jolokia import Jolokia
from retail.metrics import StatsdMetrics
from retail.topology import Topology

# Keys of the retail_cassandra extra that describe the platform, not the driver.
PLATFORM_EXTRA = frozenset({"local_dc", "topology", "topology_file", JOLOKIA_EXTRA})
# Keys of Airflow's Cassandra provider the platform decides itself: it routes every request
# token- and DC-aware, to the DC each task names.
PROVIDER_ROUTING_EXTRA = frozenset({"load_balancing_policy", "load_balancing_policy_args"})


class ConnectionLike(Protocol):
    """What the translation reads of an Airflow connection."""

    conn_id: str
    login: str | None
    password: str | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


def cassandra_options(conn: ConnectionLike) -> ClientOptions:
    """The driver options a ``retail_cassandra`` connection carries: login and password (plain
    text authentication), TLS (``ssl_options`` in the extra, the keys of the driver and of
    Airflow's Cassandra provider), and any other ``Cluster()`` option by its argument name
    (``protocol_version``, ``connect_timeout``, ``cql_version``, ...). Contact points and ports
    come from the topology in the extra, which names every DC's nodes (the connection's host
    names the home DC's only)."""
    extra = {k: v for k, v in conn.extra_dejson.items() if k not in PLATFORM_EXTRA}
    routing = sorted(set(extra) & PROVIDER_ROUTING_EXTRA)
    if routing:
        raise ConfigError(
            f"connection {conn.conn_id}: {routing} in its extra: the platform routes every "
            "request token- and DC-aware to the DC each task names; remove them"
        )
    tls = extra.pop("ssl_options", None)
    if tls is not None and not isinstance(tls, Mapping):
        raise ConfigError(
            f"connection {conn.conn_id}: ssl_options must be an object (ca_certs, certfile, "
            f"keyfile, check_hostname, cert_reqs), got {tls!r}"
        )
    if conn.password and not conn.login:
        raise ConfigError(f"connection {conn.conn_id} has a password but no login")
    try:
        return ClientOptions(
            username=conn.login or None,
            password=SecretStr(conn.password) if conn.password else None,
            tls=TlsOptions.from_dict(tls) if tls is not None else None,
            cluster=extra,
        )
    except ConfigError as exc:
        raise ConfigError(f"connection {conn.conn_id}: {exc}") from exc


def jolokia_login(conn: ConnectionLike) -> Login | None:
    """The Jolokia agents' login a ``retail_cassandra`` connection carries in its extra
    (``"jolokia": {"login": ..., "password": ...}``), or None when it has none (the agents
    then answer 401, which the client reports as such)."""
    raw = conn.extra_dejson.get(JOLOKIA_EXTRA)
    if raw is None:
        return None
    if (
        not isinstance(raw, Mapping)
        or not isinstance(raw.get("login"), str)
        or not isinstance(raw.get("password"), str)
        or not raw["login"]
        or not raw["password"]
    ):
        # Never the value itself: it holds a password.
        raise ConfigError(
            f"connection {conn.conn_id}: '{JOLOKIA_EXTRA}' in its extra must be an object with "
            "a non-empty 'login' and 'password' (generate it with `retail airflow-env`)"
        )
    return Login(raw["login"], SecretStr(raw["password"]))


def kafka_config(conn: ConnectionLike) -> dict[str, Any]:
    """The librdkafka client config a ``retail_kafka`` connection carries: its whole extra (the
    format of Airflow's Kafka provider: ``bootstrap.servers``, ``security.protocol``,
    ``ssl.*``, ``sasl.*``, any client property), and its login and password as the SASL
    credentials. The operations add their own group id and offsets handling to it."""
    config = dict(conn.extra_dejson)
    if not config.get("bootstrap.servers"):
        raise ConfigError(
            f"connection {conn.conn_id} has no 'bootstrap.servers' in its extra; generate it "
            "with `retail airflow-env`"
        )
    if conn.login or conn.password:
        for key, value in (("sasl.username", conn.login), ("sasl.password", conn.password)):
            if key in config and config[key] != value:
                raise ConfigError(
                    f"connection {conn.conn_id}: its {key.split('.')[1]} and '{key}' in its "
                    "extra disagree; keep one of them"
                )
            config[key] = value or ""
    if "sasl.username" in config and not str(
        config.get("security.protocol", "")
    ).upper().startswith("SASL"):
        raise ConfigError(
            f"connection {conn.conn_id} has SASL credentials, but its extra's security.protocol "
            f"is {config.get('security.protocol', 'unset (PLAINTEXT)')!r}: set it to SASL_SSL "
            "(and sasl.mechanism, e.g. SCRAM-SHA-256), or the credentials are never sent"
        )
    return config


class RetailCassandraHook(BaseHook):
    """The three-DC Cassandra cluster: its topology (the desired state) and sessions with the
    connection's credentials, TLS and driver options (:func:`cassandra_options`)."""

    conn_name_attr = "cassandra_conn_id"
    default_conn_name = CASSANDRA_CONN_ID
    hook_name = "Retail Cassandra"

    def __init__(self, cassandra_conn_id: str = CASSANDRA_CONN_ID) -> None:
        super().__init__()
        self.conn = self.get_connection(cassandra_conn_id)
        self.extra = self.conn.extra_dejson
        self.options = cassandra_options(self.conn)

    def topology(self) -> Topology:
        return topology_from_extra(self.extra)

    @property
    def jolokia_login(self) -> Login | None:
        """The nodes' Jolokia agents' login (:func:`jolokia_login`)."""
        return jolokia_login(self.conn)

    def jolokia(self, timeout: float = 10.0) -> Jolokia:
        """A client of the nodes' Jolokia agents, logged in with the connection's login."""
        return Jolokia(timeout, self.jolokia_login)

    @property
    def local_dc(self) -> str:
        return self.extra.get("local_dc") or self.topology().datacenters[0].name

    @contextmanager
    def session(
        self, *, local_dc: str | None = None, consistency_level: str = "LOCAL_QUORUM"
    ) -> Iterator[tuple[Cluster, Session]]:
        """A token- and DC-aware session, shut down on exit."""
        cluster, session = connect(
            self.topology(),
            local_dc or self.local_dc,
            consistency_level=consistency_level,
            options=self.options,
        )
        try:
            yield cluster, session
        finally:
            cluster.shutdown()


class RetailKafkaHook(BaseHook):
    """Kafka's client config, from a connection in the Kafka provider's format
    (:func:`kafka_config`)."""

    conn_name_attr = "kafka_conn_id"
    default_conn_name = KAFKA_CONN_ID
    hook_name = "Retail Kafka"

    def __init__(self, kafka_conn_id: str = KAFKA_CONN_ID) -> None:
        super().__init__()
        self.config: dict[str, Any] = kafka_config(self.get_connection(kafka_conn_id))

    @property
    def bootstrap_servers(self) -> str:
        """For the logs: where the client connects (the config itself may hold secrets)."""
        return str(self.config["bootstrap.servers"])


class RetailStatsdHook(BaseHook):
    """The platform's StatsD metrics (prefix ``retail``), sent where the connection says."""

    conn_name_attr = "statsd_conn_id"
    default_conn_name = STATSD_CONN_ID
    hook_name = "Retail StatsD"

    def __init__(self, statsd_conn_id: str = STATSD_CONN_ID) -> None:
        super().__init__()
        conn = self.get_connection(statsd_conn_id)
        self.metrics = StatsdMetrics(conn.host or "127.0.0.1", int(conn.port or 8125))
