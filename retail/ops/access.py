"""Cassandra's logins as K8ssandra sets them up: never the default superuser.

A new cluster starts with PasswordAuthenticator and CassandraAuthorizer on, and one role,
``cassandra``/``cassandra``, that Cassandra creates itself. On the first ``up`` this module, as
that role: replicates ``system_auth`` (and ``system_distributed``) per the topology, so that
every DC holds the logins and a login does not depend on one node of another DC; creates the
``retail_admin`` superuser with the generated password; then, as ``retail_admin``, takes the
superuser status and the login away from ``cassandra`` and creates the platform's roles
(:mod:`retail.roles`). Every later ``up`` logs in as ``retail_admin`` and only makes sure the
roles and their passwords match the credentials file.

The local stack runs it after every ``up``; a deployment runs ``retail roles`` once its nodes
are up (the Compose file's ``cassandra-roles`` job), with the logins in ``RETAIL_SECRETS_DIR``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from cassandra import AuthenticationFailed
from cassandra.cluster import NoHostAvailable, Session
from pydantic import SecretStr

from retail import credentials as cred
from retail.cassandra import ClientOptions, TlsOptions, connect, wait_for_schema_agreement
from retail.errors import RetailError
from retail.migrations import OPS_KEYSPACE
from retail.ops.replication import SYSTEM_KEYSPACES, live_replication, normalize
from retail.roles import KEYSPACE_GRANTS, ROLE_GRANTS
from retail.rows import KEYSPACE
from retail.settings import get_settings
from retail.topology import Topology

log = logging.getLogger(__name__)


class AccessError(RetailError):
    """The cluster's logins cannot be set up as the credentials say; the message says why."""


AUTH_KEYSPACE = "system_auth"
OWNED_BY_OPS = (KEYSPACE, OPS_KEYSPACE)
_KEYSPACES = "SELECT keyspace_name FROM system_schema.keyspaces"

DEFAULT_ROLE = "cassandra"
# Cassandra creates the default role superuser_setup_delay_ms after start-up (the nodes get
# -Dcassandra.superuser_setup_delay_ms=0); a login can still race it by a few seconds.
DEFAULT_ROLE_WAIT = 60.0


def _refused(exc: Exception) -> bool:
    """Whether a connection failed because the login was refused (and not for another reason)."""
    if isinstance(exc, AuthenticationFailed):
        return True
    errors = getattr(exc, "errors", {}) or {}
    return bool(errors) and all(isinstance(e, AuthenticationFailed) for e in errors.values())


@contextlib.contextmanager
def _quiet_driver() -> Iterator[None]:
    """Mute the driver's log of each refused connection (a warning per node, then an ERROR with
    a traceback: "Control connection failed to connect") while a refusal is an expected answer
    (is this a new cluster?): the log shows only what the stack concluded, and the exception
    still reaches the caller. Every driver logger is muted, not only ``cassandra``: those with
    a level of their own (``retail.logs`` gives ``cassandra.cluster`` one) ignore their parent's."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith("cassandra.")]
    loggers = [logging.getLogger(n) for n in ("cassandra", *names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _options(creds: cred.Credentials, username: str, password: str | None = None) -> ClientOptions:
    secret = SecretStr(password) if password else creds.login("cassandra", username).password
    # As every client: the CA always, the node's name unless the deployment says it cannot be
    # named (Compose: RETAIL_CASSANDRA_TLS_CHECK_HOSTNAME=false).
    check = get_settings().cassandra_tls_check_hostname
    return ClientOptions(
        username, secret, TlsOptions(ca_certs=str(creds.ca_file), check_hostname=check)
    )


def secure(
    topology: Topology,
    creds: cred.Credentials,
    report: Callable[[str], None] = log.info,
) -> None:
    """Make sure the cluster's logins are the platform's (see the module doc); idempotent."""
    admin = _options(creds, cred.CASSANDRA_ADMIN)
    home = topology.datacenters[0].name
    try:
        with _quiet_driver():
            cluster, session = connect(topology, home, consistency_level="QUORUM", options=admin)
    except NoHostAvailable as exc:
        if not _refused(exc):
            raise
        report("Cassandra: first start, replacing the default superuser")
        _first_setup(topology, creds)
        cluster, session = connect(topology, home, consistency_level="QUORUM", options=admin)
    try:
        session.execute(f"ALTER ROLE {DEFAULT_ROLE} WITH SUPERUSER = false AND LOGIN = false")
        _ensure_roles(session, creds, topology)
    finally:
        cluster.shutdown()


def _first_setup(topology: Topology, creds: cred.Credentials) -> None:
    deadline = time.monotonic() + DEFAULT_ROLE_WAIT
    while True:
        try:
            with _quiet_driver():
                cluster, session = connect(
                    topology,
                    topology.datacenters[0].name,
                    consistency_level="QUORUM",
                    options=_options(creds, DEFAULT_ROLE, DEFAULT_ROLE),
                )
            break
        except NoHostAvailable as exc:
            if not _refused(exc):
                raise
            if time.monotonic() > deadline:
                raise AccessError(
                    "Cassandra refuses both the stack's admin role and the default superuser: "
                    f"the logins in {creds.directory} do not belong to this cluster's data. "
                    "On the local stack, start a new one: `retail stack up --fresh` (its data is "
                    "lost); in a deployment, point RETAIL_SECRETS_DIR at the logins it was made "
                    "with."
                ) from exc
            time.sleep(2.0)
    try:
        _check_logins_everywhere(session, topology)
        # Every DC holds the logins before anything depends on them: with the default
        # SimpleStrategy RF 1, a login in one DC could need a node of another.
        for keyspace in SYSTEM_KEYSPACES:
            session.execute(
                f"ALTER KEYSPACE {keyspace} WITH replication = {topology.replication_cql()}"
            )
        wait_for_schema_agreement(cluster, "replicating system_auth")
        admin = creds.login("cassandra", cred.CASSANDRA_ADMIN)
        session.execute(
            f"CREATE ROLE IF NOT EXISTS {admin.username} "
            "WITH SUPERUSER = true AND LOGIN = true AND PASSWORD = %s",
            [admin.password.get_secret_value()],
        )
    finally:
        cluster.shutdown()


def _logs_in(topology: Topology, creds: cred.Credentials, role: str) -> bool:
    """Whether ``role`` logs in with the password the credentials file holds."""
    try:
        with _quiet_driver():
            cluster, _ = connect(
                topology, topology.datacenters[0].name, options=_options(creds, role)
            )
    except NoHostAvailable as exc:
        if not _refused(exc):
            raise
        return False
    cluster.shutdown()
    return True


def logins_stay_put(live: dict[str, str], topology: Topology) -> bool:
    """Whether replicating ``system_auth`` (now ``live``, normalized) per ``topology`` leaves
    every login where a replica will look for it: it is so replicated already, or every node
    holds a copy (SimpleStrategy with a factor of at least the node count)."""
    if live == normalize(topology.replication()):
        return True
    return live.get("class") == "SimpleStrategy" and int(
        live.get("replication_factor", "1")
    ) >= len(topology.nodes)


def _check_logins_everywhere(session: Session, topology: Topology) -> None:
    """Refuse to change ``system_auth``'s replication while a replica it would move to may lack
    the logins: the new replicas would answer "no such role" (even for ``cassandra``'s own
    permission checks) until a repair. The local stack starts its nodes with
    ``-Dcassandra.system_auth.default_rf`` = its node count, so that every node holds every
    login from the first write and the change moves nothing."""
    live = live_replication(session, AUTH_KEYSPACE) or {}
    if logins_stay_put(live, topology):
        return
    raise AccessError(
        f"system_auth is replicated {live} on a cluster of {len(topology.nodes)} nodes: "
        "changing it to the topology's replication would leave logins missing on their new "
        "replicas. Start the nodes of a new cluster with "
        f"-Dcassandra.system_auth.default_rf={len(topology.nodes)}, or replicate system_auth "
        "per the topology and run `nodetool repair system_auth` on every node; then run "
        "`retail roles` again."
    )


def _ensure_roles(session: Session, creds: cred.Credentials, topology: Topology) -> None:
    existing = {r.role for r in session.execute(f"SELECT role FROM {AUTH_KEYSPACE}.roles")}
    # The admin logged in with its own: only the others are made here.
    for role in (r for r in cred.CASSANDRA_ROLES if r != cred.CASSANDRA_ADMIN):
        password = creds.login("cassandra", role).password.get_secret_value()
        if role not in existing:
            session.execute(
                f"CREATE ROLE IF NOT EXISTS {role} WITH LOGIN = true AND PASSWORD = %s", [password]
            )
        elif not _logs_in(topology, creds, role):
            # The credentials file is the truth: a role made by an earlier stack gets its
            # password. Only then: Cassandra refuses a second change of a role's password within
            # a few seconds (role_password_update_min_interval_ms), and an `up` run again soon
            # after another must not fail on it.
            session.execute(f"ALTER ROLE {role} WITH PASSWORD = %s", [password])
    for grant in ROLE_GRANTS:
        session.execute(grant.cql)
    # Keyspaces made before the operations role existed (a stack from before logins) have no
    # owner: hand them to it, as if it had created them.
    existing = {r.keyspace_name for r in session.execute(_KEYSPACES)}
    for keyspace in sorted(existing & set(OWNED_BY_OPS)):
        session.execute(f"GRANT ALL PERMISSIONS ON KEYSPACE {keyspace} TO {cred.CASSANDRA_OPS}")
    if KEYSPACE in existing:
        for grant in KEYSPACE_GRANTS:
            session.execute(grant.cql)
