"""Versioned CQL schema migrations: ``include/cql/V<nnn>__<name>.cql``, applied in order.

Each applied file is recorded with its checksum in ``retail_ops.schema_migrations``; a file that
changed after it was applied stops the run (write a new migration instead). A cluster-wide lock,
a lightweight transaction on ``retail_ops.migration_lock``, keeps two runs from racing, and the
runner waits for schema agreement after every statement so the next one never reaches a node
that has not seen the previous change.

``retail migrate`` and the ``schema_migrations`` DAG both call :func:`migrate`.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster, Session
from cassandra.query import SimpleStatement

from retail.errors import RetailError
from retail.topology import Topology

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "include" / "cql"
OPS_KEYSPACE = "retail_ops"
_FILE = re.compile(r"^V(\d{3,})__([a-z0-9_]+)\.cql$")
LOCK_TTL_SECONDS = 600


class MigrationError(RetailError):
    """A migration cannot be applied; the message says which file and what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def statements(self, topology: Topology) -> list[str]:
        """The file's CQL statements with ``{replication}`` rendered from the topology."""
        body = "\n".join(
            line for line in self.text.splitlines() if not line.strip().startswith("--")
        )
        body = body.replace("{replication}", topology.replication_cql())
        return [s.strip() for s in body.split(";") if s.strip()]


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file in version order; rejects misnamed files and duplicate versions."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.cql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration files are named V<nnn>__<lower_snake_name>.cql"
            )
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"{path.name} and {found[version].path.name} both claim version {version}"
            )
        found[version] = Migration(version, match.group(2), path, path.read_text())
    return [found[v] for v in sorted(found)]


@dataclass(frozen=True)
class Applied:
    version: int
    name: str
    checksum: str


@dataclass
class MigrationReport:
    """What a run found and did."""

    applied_before: list[int]
    pending: list[Migration]
    applied_now: list[int]
    dry_run: bool

    def summary(self) -> str:
        if not self.pending:
            return f"schema up to date ({len(self.applied_before)} migrations applied)"
        names = ", ".join(m.path.name for m in self.pending)
        if self.dry_run:
            return f"dry run: would apply {names}"
        return f"applied {names}"


def _bootstrap(session: Session, topology: Topology) -> None:
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {OPS_KEYSPACE} "
        f"WITH replication = {topology.replication_cql()}"
    )
    session.execute(
        f"CREATE TABLE IF NOT EXISTS {OPS_KEYSPACE}.schema_migrations ("
        "version int PRIMARY KEY, name text, checksum text, applied_at timestamp, "
        "applied_by text)"
    )
    session.execute(
        f"CREATE TABLE IF NOT EXISTS {OPS_KEYSPACE}.migration_lock ("
        "name text PRIMARY KEY, owner text, acquired_at timestamp)"
    )


def _replicate_system_keyspaces(cluster: Cluster, session: Session, topology: Topology) -> None:
    """Give system_auth and system_distributed the topology's replication (Cassandra creates
    them with SimpleStrategy, blind to DCs; see retail.ops.replication for why they matter).
    On a new cluster there is nothing to stream; on one that has data, the replication_repair
    DAG must run after, and the log says so."""
    from retail.ops import replication

    keyspaces = replication.SYSTEM_KEYSPACES
    for drift in replication.check(session, topology, keyspaces):
        if drift.fixable:
            replication.fix(cluster, session, drift, topology, keyspaces)
            log.warning(
                "%s replicated as the topology says (was %s); run the replication_repair DAG "
                "with keyspace=%s so that existing data reaches its new replicas",
                drift.keyspace,
                "; ".join(drift.differences()),
                drift.keyspace,
            )


def applied(session: Session) -> dict[int, Applied]:
    rows = session.execute(
        SimpleStatement(
            f"SELECT version, name, checksum FROM {OPS_KEYSPACE}.schema_migrations",
            consistency_level=ConsistencyLevel.QUORUM,
        )
    )
    return {r.version: Applied(r.version, r.name, r.checksum) for r in rows}


def check_unchanged(migrations: list[Migration], done: dict[int, Applied]) -> None:
    """Refuse to go on if an applied migration's file changed since (or disappeared)."""
    by_version = {m.version: m for m in migrations}
    for version, record in sorted(done.items()):
        current = by_version.get(version)
        if current is None:
            raise MigrationError(
                f"migration V{version:03d}__{record.name}.cql was applied but its file is gone; "
                "restore it (applied migrations are history)"
            )
        if current.checksum != record.checksum:
            raise MigrationError(
                f"{current.path.name} changed after it was applied (checksum "
                f"{record.checksum[:12]} when applied, {current.checksum[:12]} now). Applied "
                "migrations must not be edited: restore the file and put the change in a new "
                "migration."
            )


class MigrationLock:
    """A cluster-wide lock held through a lightweight transaction (Paxos at SERIAL).

    The row expires after ``LOCK_TTL_SECONDS`` so that a run killed mid-way cannot block the
    next one forever.
    """

    def __init__(self, session: Session, name: str = "schema") -> None:
        self.session = session
        self.name = name
        self.owner = f"{getpass.getuser()}@{socket.gethostname()}/{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> MigrationLock:
        stmt = SimpleStatement(
            f"INSERT INTO {OPS_KEYSPACE}.migration_lock (name, owner, acquired_at) "
            f"VALUES (%s, %s, %s) IF NOT EXISTS USING TTL {LOCK_TTL_SECONDS}",
            consistency_level=ConsistencyLevel.QUORUM,
            serial_consistency_level=ConsistencyLevel.SERIAL,
        )
        row = self.session.execute(stmt, [self.name, self.owner, datetime.now(UTC)]).one()
        if not row.applied:
            raise MigrationError(
                f"another migration run holds the lock (owner {row.owner}, since "
                f"{row.acquired_at}); wait for it, or if it died, the lock expires "
                f"{LOCK_TTL_SECONDS}s after it was taken"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.execute(
            SimpleStatement(
                f"DELETE FROM {OPS_KEYSPACE}.migration_lock WHERE name = %s IF owner = %s",
                consistency_level=ConsistencyLevel.QUORUM,
                serial_consistency_level=ConsistencyLevel.SERIAL,
            ),
            [self.name, self.owner],
        )


def _agree(cluster: Cluster, what: str) -> None:
    if not cluster.control_connection.wait_for_schema_agreement(wait_time=120):
        raise MigrationError(
            f"nodes did not agree on the schema within 120s after {what}; check "
            "`retail stack status` for nodes down, then run the migration again"
        )


def migrate(
    cluster: Cluster,
    session: Session,
    topology: Topology,
    *,
    dry_run: bool = False,
    directory: Path = MIGRATIONS_DIR,
    on_statement: Callable[[Migration, str], None] | None = None,
) -> MigrationReport:
    """Apply the pending migrations in order (or, with ``dry_run``, only report them)."""
    migrations = load(directory)
    _bootstrap(session, topology)
    _agree(cluster, f"creating {OPS_KEYSPACE}")
    with MigrationLock(session):
        done = applied(session)
        check_unchanged(migrations, done)
        pending = [m for m in migrations if m.version not in done]
        report = MigrationReport(sorted(done), pending, [], dry_run)
        if dry_run:
            return report
        _replicate_system_keyspaces(cluster, session, topology)
        for migration in pending:
            log.info("applying %s", migration.path.name)
            for statement in migration.statements(topology):
                if on_statement:
                    on_statement(migration, statement)
                session.execute(statement)
                _agree(cluster, f"{migration.path.name}: {statement.splitlines()[0][:60]}")
            session.execute(
                SimpleStatement(
                    f"INSERT INTO {OPS_KEYSPACE}.schema_migrations "
                    "(version, name, checksum, applied_at, applied_by) VALUES (%s, %s, %s, %s, %s)",
                    consistency_level=ConsistencyLevel.QUORUM,
                ),
                [
                    migration.version,
                    migration.name,
                    migration.checksum,
                    datetime.now(UTC),
                    getpass.getuser(),
                ],
            )
            report.applied_now.append(migration.version)
    return report
