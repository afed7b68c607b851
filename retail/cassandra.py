"""Cassandra access: one way to build a DC-aware, token-aware session for the platform."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.concurrent import execute_concurrent
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
    WhiteListRoundRobinPolicy,
)
from pydantic import SecretStr

from retail.credentials import CA_FILE, stack_credentials
from retail.errors import ConfigError, RetailError
from retail.settings import Settings, get_settings
from retail.topology import Topology

log = logging.getLogger(__name__)

RECONNECT_MAX_DELAY = 10.0

# Cluster() arguments the platform sets itself in connect(): where to connect (the topology),
# how to route (token- and DC-aware), credentials and TLS (ClientOptions' own fields).
PLATFORM_CLUSTER_ARGS = frozenset(
    {
        "contact_points",
        "port",
        "execution_profiles",
        "load_balancing_policy",
        "reconnection_policy",
        "auth_provider",
        "ssl_context",
        "ssl_options",
        "endpoint_factory",
        "cloud",
    }
)
# The other arguments of the driver's Cluster() that configuration (a connection's JSON extra)
# can carry: those that take a plain value. The rest take objects (policies, classes).
CLUSTER_ARGS = frozenset(
    {
        "protocol_version",
        "cql_version",
        "compression",
        "connect_timeout",
        "control_connection_timeout",
        "idle_heartbeat_interval",
        "idle_heartbeat_timeout",
        "executor_threads",
        "max_schema_agreement_wait",
        "schema_metadata_enabled",
        "token_metadata_enabled",
        "metrics_enabled",
        "prepare_on_all_hosts",
        "reprepare_on_up",
        "allow_beta_protocol_version",
        "no_compact",
        "application_name",
        "application_version",
        "monitor_reporting_enabled",
        "monitor_reporting_interval",
        "schema_event_refresh_window",
        "topology_event_refresh_window",
        "status_event_refresh_window",
    }
)


@dataclass(frozen=True)
class TlsOptions:
    """Encrypted client traffic: the CA that signs the nodes' certificates (the system's when
    unset), a client certificate for mutual TLS, and whether the node's name must match its
    certificate. The keys are the ones the driver's (and Airflow's Cassandra provider's)
    ``ssl_options`` use."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True
    cert_reqs: str = "CERT_REQUIRED"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TlsOptions:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown TLS option(s) {unknown}; use: {', '.join(sorted(known))}")
        opts = cls(**raw)
        if opts.cert_reqs not in ("CERT_REQUIRED", "CERT_OPTIONAL", "CERT_NONE"):
            raise ConfigError(
                f"cert_reqs {opts.cert_reqs!r}: use CERT_REQUIRED, CERT_OPTIONAL or CERT_NONE"
            )
        if opts.check_hostname and opts.cert_reqs == "CERT_NONE":
            raise ConfigError("check_hostname needs a verified certificate: not with CERT_NONE")
        if opts.keyfile and not opts.certfile:
            raise ConfigError("keyfile without certfile: name the client certificate too")
        return opts

    def context(self) -> ssl.SSLContext:
        """The SSL context the driver wraps its connections in."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = self.check_hostname
        ctx.verify_mode = getattr(ssl, self.cert_reqs)
        if self.ca_certs:
            ctx.load_verify_locations(self.ca_certs)
        else:
            ctx.load_default_certs()
        if self.certfile:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx


@dataclass(frozen=True)
class ClientOptions:
    """How a client reaches the cluster beyond the topology's addresses: credentials, TLS, and
    any other option of the driver's ``Cluster`` (``cluster``, by argument name)."""

    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    tls: TlsOptions | None = None
    cluster: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        refused = sorted(set(self.cluster) & PLATFORM_CLUSTER_ARGS)
        if refused:
            raise ConfigError(
                f"Cluster option(s) {refused} are the platform's: contact points and ports come "
                "from the topology, routing is token- and DC-aware, credentials and TLS have "
                "their own fields"
            )
        unknown = sorted(set(self.cluster) - CLUSTER_ARGS)
        if unknown:
            raise ConfigError(
                f"unknown Cluster option(s) {unknown}; the driver's Cluster() takes: "
                + ", ".join(sorted(CLUSTER_ARGS))
            )

    @classmethod
    def for_role(cls, role: str, settings: Settings | None = None) -> ClientOptions:
        """How a client in ``role`` (:mod:`retail.roles`) logs in: as
        ``RETAIL_CASSANDRA_USERNAME``/``_PASSWORD`` when set (a deployment names its login),
        else with the role's login from the platform's credentials; over TLS either way,
        trusting the platform's CA (the system's CAs when the secrets hold none)."""
        settings = settings or get_settings()
        ca = settings.secrets_path / CA_FILE
        tls = TlsOptions(
            ca_certs=str(ca) if ca.exists() else None,
            check_hostname=settings.cassandra_tls_check_hostname,
        )
        if settings.cassandra_username and settings.cassandra_password:
            return cls(settings.cassandra_username, settings.cassandra_password, tls)
        login = stack_credentials(settings).login("cassandra", role)
        return cls(login.username, login.password, tls)

    def auth_provider(self) -> PlainTextAuthProvider | None:
        if not (self.username and self.password):
            return None
        return PlainTextAuthProvider(self.username, self.password.get_secret_value())


def consistency(name: str) -> int:
    """A consistency level by name (``LOCAL_QUORUM``), with the valid names in the error."""
    try:
        return ConsistencyLevel.name_to_value[name.upper()]
    except KeyError:
        valid = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"unknown consistency level {name!r}; use one of: {valid}") from None


class StatementsFailed(RetailError):
    """Statements of a concurrent run failed, every one of them tried: ``failures`` maps each
    failed statement's index to its error (the driver's own: Unavailable or a timeout means
    retry later)."""

    def __init__(self, failures: dict[int, BaseException], total: int) -> None:
        self.failures = failures
        self.total = total
        first = self.first
        super().__init__(
            f"{len(failures)} of {total} statements failed; first: {type(first).__name__}: {first}"
        )

    @property
    def first(self) -> BaseException:
        return self.failures[min(self.failures)]


def run_all(
    session: Session,
    statements: Sequence[tuple[Any, Sequence[object]]],
    concurrency: int = 64,
    *,
    stop_on_first_error: bool = True,
) -> list[list[Any]]:
    """Execute ``statements`` concurrently, at most ``concurrency`` in flight, and return every
    result's rows, in order. The first failure raises (the driver's own error: Unavailable or
    a timeout means retry later); with ``stop_on_first_error=False`` every statement is tried
    and the failures are raised together (:class:`StatementsFailed`)."""
    if not statements:
        return []
    results = execute_concurrent(
        session,
        statements,
        concurrency=concurrency,
        raise_on_first_error=stop_on_first_error,
        results_generator=False,
    )
    failures = {i: r for i, (ok, r) in enumerate(results) if not ok}
    if failures:
        raise StatementsFailed(failures, len(statements))
    return [list(rows) for _, rows in results]


AGREEMENT_TIMEOUT_SECONDS = 120.0


class SchemaAgreementError(RetailError):
    """The nodes did not agree on the schema in time (a node slow or down): a retry may
    succeed."""


def wait_for_schema_agreement(
    cluster: Cluster,
    after: str,
    *,
    timeout: float | None = AGREEMENT_TIMEOUT_SECONDS,
    then: str = ", then try again",
    error: type[RetailError] = SchemaAgreementError,
) -> float:
    """Wait until every node that is up reports the same schema version as the control
    connection's node (the one a schema change should be sent to, so that the others are
    compared with the newest schema); returns the seconds it took. Raises ``error`` saying what
    it waited for (``after``) and what to do (``then``) if they do not agree within
    ``timeout`` seconds (None: the driver's ``max_schema_agreement_wait``)."""
    wait = cluster.max_schema_agreement_wait if timeout is None else timeout
    started = time.monotonic()
    if not cluster.control_connection.wait_for_schema_agreement(wait_time=wait):
        raise error(
            f"nodes did not agree on the schema within {wait:.0f}s after {after}; check "
            f"`retail stack status` for a node slow or down{then}"
        )
    return time.monotonic() - started


def read_level_for(write_level: str, replication_factor: int) -> str:
    """The cheapest consistency a reader in the same DC can use and still see every write
    acknowledged at ``write_level``: R + W > RF. With LOCAL_QUORUM writes that is LOCAL_ONE up
    to two replicas per DC (a quorum of two is both) and LOCAL_QUORUM from three."""
    rf = max(1, replication_factor)
    quorum = rf // 2 + 1
    written = {"ONE": 1, "LOCAL_ONE": 1, "LOCAL_QUORUM": quorum, "QUORUM": quorum, "ALL": rf}
    w = written.get(write_level.upper())
    if w is None:
        return "LOCAL_QUORUM"
    r = rf - w + 1
    return "LOCAL_ONE" if r <= 1 else "LOCAL_QUORUM" if r <= quorum else "ALL"


def cluster_for(
    topology: Topology,
    local_dc: str,
    *,
    consistency_level: str = "LOCAL_QUORUM",
    pin_to_dc: bool = False,
    request_timeout: float = 10.0,
    options: ClientOptions | None = None,
) -> Cluster:
    """The driver's ``Cluster`` for a session in ``local_dc`` (not connected yet): see
    :func:`connect`."""
    options = options or ClientOptions()
    dc = topology.datacenter(local_dc)
    child = (
        WhiteListRoundRobinPolicy(dc.contact_points)
        if pin_to_dc
        else DCAwareRoundRobinPolicy(local_dc=local_dc)
    )
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(child),
        consistency_level=consistency(consistency_level),
        request_timeout=request_timeout,
    )
    return Cluster(
        **{"protocol_version": 5, **options.cluster},
        contact_points=dc.contact_points,
        port=dc.nodes[0].cql_port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        # The driver's default backs off to 10 minutes between tries to reach a node that was
        # down, and gives up after 64 tries: a consumer whose DC came back would wait that long
        # to write again, or forever. A few nodes tried every 10 s at most, for as long as
        # they are down, cost nothing.
        reconnection_policy=ExponentialReconnectionPolicy(
            1.0, RECONNECT_MAX_DELAY, max_attempts=None
        ),
        auth_provider=options.auth_provider(),
        ssl_context=options.tls.context() if options.tls else None,
    )


def connect(
    topology: Topology,
    local_dc: str,
    *,
    keyspace: str | None = None,
    consistency_level: str = "LOCAL_QUORUM",
    pin_to_dc: bool = False,
    request_timeout: float = 10.0,
    role: str | None = None,
    settings: Settings | None = None,
    options: ClientOptions | None = None,
) -> tuple[Cluster, Session]:
    """A session whose coordinators are the nodes of ``local_dc``, chosen by token.

    ``pin_to_dc`` never lets a request leave the DC, even if every local node is down: for
    checks that must read one DC's replicas only (the driver's DC-aware policy does not
    fail over to remote DCs by default either, but this makes it explicit). Who connects:
    ``options`` (credentials, TLS and other driver options, as an Airflow connection gives
    them), else the login of ``role`` (:meth:`ClientOptions.for_role`).
    """
    if options is None:
        if role is None:
            raise ConfigError("connect() needs the role to log in as (retail.roles) or options")
        options = ClientOptions.for_role(role, settings)
    cluster = cluster_for(
        topology,
        local_dc,
        consistency_level=consistency_level,
        pin_to_dc=pin_to_dc,
        request_timeout=request_timeout,
        options=options,
    )
    session = cluster.connect(keyspace)
    log.debug(
        "connected to %s (local DC %s, %s)", cluster.contact_points, local_dc, consistency_level
    )
    return cluster, session
