"""The Airflow connections that point the DAGs at a platform, built from its topology.

DAGs never read endpoints from code: they use three Airflow connections, which locally come
from ``AIRFLOW_CONN_*`` environment variables (``retail airflow-env`` prints them for the
running stack) and in a deployment from Airflow's connection store or a secrets backend.

- ``retail_cassandra``: contact points and port, credentials, and in ``extra`` the local DC the
  DAGs coordinate from and the cluster's topology (DCs, nodes, their JMX/Jolokia endpoints): the
  desired state that replication and ring checks compare the live cluster against, and
  ``jolokia``: ``{"login": ..., "password": ...}``, the nodes' Jolokia agents' login (Airflow
  masks a value under a ``password`` key wherever it prints the extra). The extra
  may also carry ``ssl_options`` (TLS) and any plain-valued option of the driver's ``Cluster()``
  (``protocol_version``, ``connect_timeout``, ...): the hook hands them all on.
- ``retail_kafka``: ``extra`` is the librdkafka config (``bootstrap.servers`` and any client
  property: ``security.protocol``, ``ssl.*``, ``sasl.*``), the format of Airflow's Kafka
  provider; a login and password are the SASL credentials. Generated here for the ``ops`` login
  (the DAGs audit and measure, they never produce or commit): SASL_SSL, SCRAM-SHA-512 and the
  platform's CA in the extra, the login and password in the connection's own fields, which
  Airflow masks.
- ``retail_kafka_admin``: the same for the ``admin`` login, used only by the ``kafka_rebalance``
  DAG (reassigning partitions and electing leaders needs ALTER on the cluster).
- ``retail_statsd``: host and port of the StatsD server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from retail.cassandra import ClientOptions
from retail.credentials import CASSANDRA_OPS, JOLOKIA_USER, KAFKA_ADMIN, stack_credentials
from retail.errors import ConfigError
from retail.settings import Settings, get_settings
from retail.topology import Topology

log = logging.getLogger(__name__)

CASSANDRA_CONN_ID = "retail_cassandra"
KAFKA_CONN_ID = "retail_kafka"
# The Kafka admin login, for the one DAG that changes the cluster (kafka_rebalance: partition
# reassignments and leader elections need ALTER on the cluster, which ``ops`` never gets).
KAFKA_ADMIN_CONN_ID = "retail_kafka_admin"
STATSD_CONN_ID = "retail_statsd"
# The key of the retail_cassandra extra that holds the Jolokia agents' login.
JOLOKIA_EXTRA = "jolokia"


def jolokia_extra(settings: Settings) -> dict[str, str] | None:
    """The Jolokia login for a connection's extra, from the platform's credentials; None when
    there are none yet (before the first `retail stack up`)."""
    try:
        login = stack_credentials(settings).login("jolokia", JOLOKIA_USER)
    except ConfigError:
        return None
    return {"login": login.username, "password": login.password.get_secret_value()}


def _topology_extra(topology: Topology, settings: Settings) -> dict[str, Any]:
    """The topology for the Cassandra connection's extra: the file that names it when that file
    holds this very topology (the local stack's, which `retail stack add-node` and `remove-node`
    rewrite: the DAGs' next task then sees the new ring without new connections), else inline."""
    path = settings.topology_path
    try:
        if Topology.from_json(path.read_text()) == topology:
            return {"topology_file": str(path)}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no stack file, or not a topology: the connection carries its own copy
    return {"topology": json.loads(topology.to_json())}


def connections(topology: Topology, settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Connection id -> Airflow's JSON connection form, for ``topology``."""
    settings = settings or get_settings()
    home = topology.datacenters[0]
    cassandra: dict[str, Any] = {
        "conn_type": "cassandra",
        "host": ",".join(home.contact_points),
        "port": home.nodes[0].cql_port,
        "extra": {"local_dc": home.name, **_topology_extra(topology, settings)},
    }
    jolokia = jolokia_extra(settings)
    if jolokia:
        cassandra["extra"][JOLOKIA_EXTRA] = jolokia
    # The DAGs log in as the operations role, over TLS to the platform's CA. Before the
    # platform's credentials exist (no stack yet), the connection carries no login: enough for
    # the DAG integrity tests, and a DAG run then fails with Cassandra's refusal.
    try:
        options = ClientOptions.for_role(CASSANDRA_OPS, settings)
    except ConfigError as exc:
        log.debug("%s: the Cassandra connection carries no login", exc)
        options = ClientOptions()
    if options.username and options.password:
        cassandra["login"] = options.username
        cassandra["password"] = options.password.get_secret_value()
    if options.tls and options.tls.ca_certs:
        cassandra["extra"]["ssl_options"] = {"ca_certs": options.tls.ca_certs}
    return {
        CASSANDRA_CONN_ID: cassandra,
        KAFKA_CONN_ID: kafka_connection(topology, settings),
        KAFKA_ADMIN_CONN_ID: kafka_connection(topology, settings, KAFKA_ADMIN),
        STATSD_CONN_ID: {
            "conn_type": "generic",
            "host": topology.statsd.host,
            "port": topology.statsd.port,
        },
    }


MASK = "***"


def is_secret_key(key: str) -> bool:
    """Whether a connection field or extra key holds a secret (``password``,
    ``sasl.password``, ``ssl.key.password``, ``secret``...): what is masked when shown."""
    key = key.lower()
    return "password" in key or "secret" in key


def masked(value: Any) -> Any:
    """``value`` (a connection, its extra, or any JSON value) with every secret replaced by
    ``***``, at any depth: what may be printed or logged."""
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(str(k)) else masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def kafka_connection(
    topology: Topology, settings: Settings | None = None, user: str | None = None
) -> dict[str, Any]:
    """``retail_kafka`` for the ``ops`` login of the platform (its credentials from
    ``settings``' secrets directory); ``user``: another Kafka login (``admin`` for
    ``retail_kafka_admin``)."""
    from retail.credentials import KAFKA_OPS, stack_credentials
    from retail.kafka import client_config

    try:
        extra = client_config(topology, user or KAFKA_OPS, stack_credentials(settings))
    except ConfigError as exc:
        # As for Cassandra: before the platform's credentials exist, no login.
        log.debug("%s: the Kafka connection carries no login", exc)
        return {"conn_type": "kafka", "extra": {"bootstrap.servers": topology.bootstrap_servers}}
    return {
        "conn_type": "kafka",
        "login": extra.pop("sasl.username"),
        "password": extra.pop("sasl.password"),
        "extra": extra,
    }


def environment(topology: Topology, settings: Settings | None = None) -> dict[str, str]:
    """``AIRFLOW_CONN_<ID>`` variables for ``topology``."""
    return {
        f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)
        for conn_id, conn in connections(topology, settings).items()
    }


def topology_from_extra(extra: dict[str, Any]) -> Topology:
    """The topology carried by a ``retail_cassandra`` connection's extra: inline under
    ``topology``, or in the JSON file named by ``topology_file`` (a deployment's mounted file)."""
    if "topology_file" in extra:
        return Topology.from_json(Path(extra["topology_file"]).read_text())
    if "topology" not in extra:
        raise ValueError(
            f"connection {CASSANDRA_CONN_ID} has neither 'topology' nor 'topology_file' in its "
            "extra; generate it with `retail airflow-env`"
        )
    raw = extra["topology"]
    return Topology.from_json(raw if isinstance(raw, str) else json.dumps(raw))


def airflow_environment(topology: Topology, settings: Settings | None = None) -> dict[str, str]:
    """Everything a local Airflow needs to run the platform's DAGs against ``topology``: its home
    in the state dir, the repo's dags/ and plugins/, StatsD metrics to the stack's exporter, and
    the connections."""
    from retail.settings import PROJECT_ROOT

    settings = settings or get_settings()
    env = {
        "AIRFLOW_HOME": str(settings.state_dir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": topology.statsd.host,
        "AIRFLOW__METRICS__STATSD_PORT": str(topology.statsd.port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
    }
    env.update(environment(topology, settings))
    return env
