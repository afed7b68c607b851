"""Hooks: the platform's endpoints and credentials, from Airflow connections only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk import BaseHook
from cassandra.cluster import Cluster, Session

from retail.cassandra import connect
from retail.connections import (
    CASSANDRA_CONN_ID,
    KAFKA_CONN_ID,
    STATSD_CONN_ID,
    topology_from_extra,
)
from retail.metrics import StatsdMetrics
from retail.settings import Settings
from retail.topology import Topology


class RetailCassandraHook(BaseHook):
    """The three-DC Cassandra cluster: its topology (the desired state) and sessions."""

    conn_name_attr = "cassandra_conn_id"
    default_conn_name = CASSANDRA_CONN_ID
    hook_name = "Retail Cassandra"

    def __init__(self, cassandra_conn_id: str = CASSANDRA_CONN_ID) -> None:
        super().__init__()
        self.conn = self.get_connection(cassandra_conn_id)
        self.extra = self.conn.extra_dejson

    def topology(self) -> Topology:
        return topology_from_extra(self.extra)

    @property
    def local_dc(self) -> str:
        return self.extra.get("local_dc") or self.topology().datacenters[0].name

    @contextmanager
    def session(
        self, *, local_dc: str | None = None, consistency_level: str = "LOCAL_QUORUM"
    ) -> Iterator[tuple[Cluster, Session]]:
        """A token- and DC-aware session, shut down on exit."""
        settings = Settings(
            cassandra_username=self.conn.login or None,
            cassandra_password=self.conn.password or None,
        )
        cluster, session = connect(
            self.topology(),
            local_dc or self.local_dc,
            consistency_level=consistency_level,
            settings=settings,
        )
        try:
            yield cluster, session
        finally:
            cluster.shutdown()


class RetailKafkaHook(BaseHook):
    """Kafka's bootstrap servers, from a connection in the Kafka provider's format."""

    conn_name_attr = "kafka_conn_id"
    default_conn_name = KAFKA_CONN_ID
    hook_name = "Retail Kafka"

    def __init__(self, kafka_conn_id: str = KAFKA_CONN_ID) -> None:
        super().__init__()
        extra = self.get_connection(kafka_conn_id).extra_dejson
        if "bootstrap.servers" not in extra:
            raise ValueError(f"connection {kafka_conn_id} has no 'bootstrap.servers' in its extra")
        self.bootstrap_servers: str = extra["bootstrap.servers"]


class RetailStatsdHook(BaseHook):
    """The platform's StatsD metrics (prefix ``retail``), sent where the connection says."""

    conn_name_attr = "statsd_conn_id"
    default_conn_name = STATSD_CONN_ID
    hook_name = "Retail StatsD"

    def __init__(self, statsd_conn_id: str = STATSD_CONN_ID) -> None:
        super().__init__()
        conn = self.get_connection(statsd_conn_id)
        self.metrics = StatsdMetrics(conn.host or "127.0.0.1", int(conn.port or 8125))
