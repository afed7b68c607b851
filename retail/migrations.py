"""Versioned CQL schema migrations: ``include/cql/V<nnn>__<name>.cql``, applied in order.

Each applied file is recorded with its checksum in ``retail_ops.schema_migrations``; a file that
changed after it was applied stops the run (write a new migration instead). A cluster-wide lock,
a lightweight transaction on ``retail_ops.migration_lock``, keeps two runs from racing; a
heartbeat renews it while the run lasts, and a run that lost it stops before its next statement.

**Schema agreement, once per file.** A file's statements go to one coordinator (the control
connection's node, which applied each change before answering) and the run waits for every node
to agree at the end of the file, and before a statement that names an object (keyspace, table,
type, view, index) that an earlier statement of the file changed since the last agreement: a
``CREATE TYPE`` before the table using it, a ``CREATE TABLE`` before a view on it, a ``DROP``
before the ``CREATE`` of the same name (:func:`agreement_groups`). The driver's own wait after
every DDL answer is switched off for the run: it put an agreement after every statement.

**Replication rails.** Before anything is executed, every ``CREATE``/``ALTER KEYSPACE`` the run
would send (rendered from the topology) is compared with the live replication; the task log
shows the before and after of each keyspace it changes, and a change that removes a DC or
lowers a replication factor is refused unless ``allow_replication_decrease`` says so.

**A dry run only reads**: no keyspace, no table, no lock row.

Errors: :class:`MigrationError` is final (an edited file, a bad name, a statement the cluster
rejects, a refused replication change); its ``retryable`` subclasses (the lock held or lost,
schema agreement late) may succeed on the next try.

``retail migrate`` and the ``schema_migrations`` DAG both call :func:`migrate`.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cassandra import ConsistencyLevel, RequestValidationException
from cassandra.cluster import Cluster, Session
from cassandra.query import SimpleStatement

from retail.cassandra import AGREEMENT_TIMEOUT_SECONDS, wait_for_schema_agreement
from retail.errors import RetailError
from retail.ops import replication
from retail.roles import KEYSPACE_GRANTS
from retail.rows import KEYSPACE
from retail.topology import Topology

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "include" / "cql"
OPS_KEYSPACE = "retail_ops"
_FILE = re.compile(r"^V(\d{3,})__([a-z0-9_]+)\.cql$")
# A killed run's lock expires after LOCK_TTL_SECONDS; a live run renews it every
# LOCK_RENEW_SECONDS, so it never expires under it. Airflow's retries (30 s, 60 s, 120 s) outlast
# the TTL, so a retry after a killed try finds the lock free.
LOCK_TTL_SECONDS = 120
LOCK_RENEW_SECONDS = 20
DDL_TIMEOUT_SECONDS = 60


class MigrationError(RetailError):
    """A migration cannot be applied; the message says which file and what to do. Final: a
    retry would fail the same way."""

    retryable = False


class LockHeldError(MigrationError):
    """Another run holds the migration lock."""

    retryable = True


class LockLostError(MigrationError):
    """The lock could not be renewed: the run stopped before its next statement."""

    retryable = True


class SchemaAgreementError(MigrationError):
    """The nodes did not agree on the schema in time (a node slow or down)."""

    retryable = True


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


# --- when to wait for schema agreement -------------------------------------------------------

_IDENT = r'(?:"[^"]+"|\w+)'
_DDL = re.compile(
    r"^(CREATE|ALTER|DROP)\s+(?:OR\s+REPLACE\s+)?(?:CUSTOM\s+)?"
    r"(KEYSPACE|TABLE|COLUMNFAMILY|TYPE|MATERIALIZED\s+VIEW|INDEX|FUNCTION|AGGREGATE|TRIGGER)\s+"
    rf"(?:IF\s+(?:NOT\s+)?EXISTS\s+)?({_IDENT}(?:\s*\.\s*{_IDENT})?)",
    re.IGNORECASE,
)
_ON = re.compile(rf"\bON\s+({_IDENT}(?:\s*\.\s*{_IDENT})?)", re.IGNORECASE)
_WORD = re.compile(r'"([^"]+)"|([A-Za-z_]\w*)')


def _last_name(qualified: str) -> str:
    return qualified.split(".")[-1].strip().strip('"').lower()


def changed_names(statement: str) -> set[str]:
    """The schema objects a DDL statement creates, alters or drops, by unqualified name
    (lower case); empty for a statement that changes no schema. An index or trigger also
    changes the table it is ``ON``."""
    match = _DDL.match(statement.strip())
    if not match:
        return set()
    names = set()
    if match.group(3).upper() != "ON":  # `CREATE INDEX ON t (c)`: an index without a name
        names.add(_last_name(match.group(3)))
    if match.group(2).upper() in ("INDEX", "TRIGGER") and (on := _ON.search(statement)):
        names.add(_last_name(on.group(1)))
    return names


def names_in(statement: str) -> set[str]:
    """Every word of a statement, lower case: a superset of the objects it names (a column
    that shares a table's name only adds a wait, it never removes one)."""
    return {(quoted or word).lower() for quoted, word in _WORD.findall(statement)}


def agreement_groups(statements: list[str]) -> list[list[str]]:
    """Split a file's statements into groups sent one after the other without waiting; the
    runner waits for schema agreement after each group.

    A statement starts a new group when it names an object that a statement of the current
    group creates, alters or drops (a type and the table using it, a table and a view or index
    on it, a keyspace and its tables, a ``DROP`` and the ``CREATE`` of the same name). A file
    whose statements are independent is one group: one agreement.
    """
    groups: list[list[str]] = []
    changed: set[str] = set()
    for statement in statements:
        if not groups or changed & names_in(statement):
            groups.append([])
            changed = set()
        groups[-1].append(statement)
        changed |= changed_names(statement)
    return groups


# --- replication rails -----------------------------------------------------------------------

_KEYSPACE_REPLICATION = re.compile(
    rf"^(CREATE|ALTER)\s+KEYSPACE\s+(?:IF\s+NOT\s+EXISTS\s+)?({_IDENT})\s+WITH\s+.*?"
    r"\breplication\s*=\s*\{([^}]*)\}",
    re.IGNORECASE | re.DOTALL,
)
_DROP_KEYSPACE = re.compile(rf"^DROP\s+KEYSPACE\s+(?:IF\s+EXISTS\s+)?({_IDENT})", re.IGNORECASE)
_OPTION = re.compile(r"'([^']*)'\s*:\s*(?:'([^']*)'|([\w./]+))")


def _keyspace_name(text: str) -> str:
    return text[1:-1] if text.startswith('"') else text.lower()


def keyspace_replication(statement: str) -> tuple[str, str, dict[str, str]] | None:
    """``(verb, keyspace, replication)`` of a ``CREATE``/``ALTER KEYSPACE`` with a replication
    map (normalized as :func:`retail.ops.replication.normalize` does), else ``None``."""
    match = _KEYSPACE_REPLICATION.match(statement.strip())
    if not match:
        return None
    options = {key: quoted or bare for key, quoted, bare in _OPTION.findall(match.group(3))}
    return match.group(1).upper(), _keyspace_name(match.group(2)), replication.normalize(options)


def render_replication(replication_map: Mapping[str, str] | None) -> str:
    """``NetworkTopologyStrategy {eu-west: 2, us-east: 2}``, or ``(none)`` for no keyspace."""
    return replication.render(replication_map, missing="(none)")


@dataclass(frozen=True)
class ReplicationChange:
    """A keyspace whose replication a run changes: before (``None``: the keyspace is new) and
    after, and the statement's origin (a file name, the bootstrap, the system keyspaces)."""

    keyspace: str
    before: dict[str, str] | None
    after: dict[str, str]
    source: str

    @property
    def decreases(self) -> list[str]:
        return replication.replication_decreases(self.before, self.after)

    def describe(self) -> str:
        return (
            f"{self.keyspace} ({self.source}): {render_replication(self.before)} -> "
            f"{render_replication(self.after)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyspace": self.keyspace,
            "before": self.before,
            "after": self.after,
            "source": self.source,
            "decreases": self.decreases,
        }


def replication_changes(
    planned: Iterable[tuple[str, str]], live: Mapping[str, Mapping[str, Any]]
) -> list[ReplicationChange]:
    """The keyspace replication changes of ``planned`` (``(source, statement)`` in the order
    they would run) against ``live`` (keyspace -> replication map as the cluster reports it),
    following the statements' effect: a keyspace a statement creates is the ``before`` of a
    later ``ALTER``. A ``CREATE KEYSPACE`` of a keyspace that exists changes nothing (``IF NOT
    EXISTS``; without it the cluster refuses the statement)."""
    state: dict[str, dict[str, str]] = {k: replication.normalize(v) for k, v in live.items()}
    changes = []
    for source, statement in planned:
        if drop := _DROP_KEYSPACE.match(statement.strip()):
            state.pop(_keyspace_name(drop.group(1)), None)
            continue
        parsed = keyspace_replication(statement)
        if parsed is None:
            continue
        verb, keyspace, after = parsed
        before = state.get(keyspace)
        if (verb == "CREATE" and before is not None) or before == after:
            continue
        state[keyspace] = after
        changes.append(ReplicationChange(keyspace, before, after, source))
    return changes


def check_replication(changes: list[ReplicationChange], *, allow_decrease: bool) -> None:
    """Log the before and after of every change; refuse one that takes replicas away unless
    ``allow_decrease``."""
    for change in changes:
        log.info("replication of %s", change.describe())
    lowered = [c for c in changes if c.decreases]
    if not lowered:
        return
    detail = "; ".join(f"{c.describe()} [{', '.join(c.decreases)}]" for c in lowered)
    if not allow_decrease:
        raise MigrationError(
            f"refusing to lower replication: {detail}. A DC removed or a lower factor means "
            "fewer copies (and, for a DC, none of its local reads). If that is intended, run "
            "again with allow_replication_decrease (DAG param) or --allow-replication-decrease"
        )
    log.warning(
        "lowering replication as allowed: %s; the nodes that lost replicas keep the "
        "data until `nodetool cleanup`",
        detail,
    )


# --- what the cluster holds ------------------------------------------------------------------


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
    replication_changes: list[ReplicationChange] = field(default_factory=list)
    system_statements: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.pending:
            return f"schema up to date ({len(self.applied_before)} migrations applied)"
        names = ", ".join(m.path.name for m in self.pending)
        if self.dry_run:
            return f"dry run: would apply {names}"
        return f"applied {names}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied_before": self.applied_before,
            "pending": [m.version for m in self.pending],
            "applied_now": self.applied_now,
            "dry_run": self.dry_run,
            "replication_changes": [c.to_dict() for c in self.replication_changes],
        }


def _live_replication(session: Session) -> dict[str, dict[str, Any]]:
    rows = session.execute("SELECT keyspace_name, replication FROM system_schema.keyspaces")
    return {row.keyspace_name: dict(row.replication) for row in rows}


def _ops_tables(session: Session) -> set[str]:
    rows = session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", [OPS_KEYSPACE]
    )
    return {row.table_name for row in rows}


def _bootstrap_statements(topology: Topology, has_keyspace: bool, tables: set[str]) -> list[str]:
    """What creates ``retail_ops`` and the runner's own tables, for those missing only."""
    wanted = {
        "schema_migrations": "version int PRIMARY KEY, name text, checksum text, "
        "applied_at timestamp, applied_by text",
        "migration_lock": "name text PRIMARY KEY, owner text, acquired_at timestamp",
    }
    statements = []
    if not has_keyspace:
        statements.append(
            f"CREATE KEYSPACE IF NOT EXISTS {OPS_KEYSPACE} "
            f"WITH replication = {topology.replication_cql()}"
        )
    statements += [
        f"CREATE TABLE IF NOT EXISTS {OPS_KEYSPACE}.{name} ({columns})"
        for name, columns in wanted.items()
        if name not in tables
    ]
    return statements


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


def plan(
    session: Session, topology: Topology, migrations: list[Migration], *, dry_run: bool = True
) -> MigrationReport:
    """What a run would do, from reads only: the applied and pending migrations, the system
    keyspaces' replication fix, and every keyspace replication change on the way."""
    live = _live_replication(session)
    tables = _ops_tables(session) if OPS_KEYSPACE in live else set()
    done = applied(session) if "schema_migrations" in tables else {}
    check_unchanged(migrations, done)
    pending = [m for m in migrations if m.version not in done]
    # system_auth and system_distributed get the topology's replication (Cassandra creates
    # them with SimpleStrategy, blind to DCs; see retail.ops.replication for why they matter).
    # Rendered here from the topology alone, as replication.alter_statement does, so that the
    # rails below judge them with the migrations' own statements.
    system = [
        f'ALTER KEYSPACE "{ks}" WITH replication = {topology.replication_cql()}'
        for ks in replication.SYSTEM_KEYSPACES
        if replication.compare(ks, live.get(ks), topology).fixable
    ]
    planned = [
        (OPS_KEYSPACE, s) for s in _bootstrap_statements(topology, OPS_KEYSPACE in live, tables)
    ]
    planned += [("system keyspaces", s) for s in system]
    planned += [(m.path.name, s) for m in pending for s in m.statements(topology)]
    return MigrationReport(
        sorted(done), pending, [], dry_run, replication_changes(planned, live), system
    )


# --- the lock --------------------------------------------------------------------------------


class MigrationLock:
    """A cluster-wide lock held through a lightweight transaction (Paxos at SERIAL).

    The row is written with a TTL so that a run killed mid-way cannot block the next one for
    more than ``ttl`` seconds; a heartbeat thread renews the TTL every ``renew_every`` seconds
    while the owner is still this run (``UPDATE ... IF owner = ?``). When a renewal finds
    another owner or no row, or renewals fail until the row may have expired, the lock is lost
    and :meth:`ensure_held` raises, so the run stops before its next statement.
    """

    def __init__(
        self,
        session: Session,
        name: str = "schema",
        *,
        ttl: int = LOCK_TTL_SECONDS,
        renew_every: float | None = None,
    ) -> None:
        self.session = session
        self.name = name
        self.ttl = ttl
        self.renew_every = (
            renew_every if renew_every is not None else min(LOCK_RENEW_SECONDS, ttl / 4)
        )
        self.owner = f"{getpass.getuser()}@{socket.gethostname()}/{uuid.uuid4().hex[:8]}"
        self.renewals = 0
        self._acquired_at = datetime.now(UTC)
        self._renewed = time.monotonic()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _lwt(self, cql: str) -> SimpleStatement:
        return SimpleStatement(
            cql,
            consistency_level=ConsistencyLevel.QUORUM,
            serial_consistency_level=ConsistencyLevel.SERIAL,
        )

    def __enter__(self) -> MigrationLock:
        stmt = self._lwt(
            f"INSERT INTO {OPS_KEYSPACE}.migration_lock (name, owner, acquired_at) "
            f"VALUES (%s, %s, %s) IF NOT EXISTS USING TTL {int(self.ttl)}"
        )
        self._acquired_at = datetime.now(UTC)
        row = self.session.execute(stmt, [self.name, self.owner, self._acquired_at]).one()
        if not row.applied:
            raise LockHeldError(
                f"another migration run holds the lock (owner {row.owner}, since "
                f"{row.acquired_at}); wait for it, or if it died, the lock expires at most "
                f"{self.ttl}s after its last renewal"
            )
        self._renewed = time.monotonic()
        self._thread = threading.Thread(
            target=self._heartbeat, name="migration-lock-heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Extend the row's TTL if this run still owns it; ``False`` if it does not."""
        row = self.session.execute(
            self._lwt(
                f"UPDATE {OPS_KEYSPACE}.migration_lock USING TTL {int(self.ttl)} "
                "SET owner = %s, acquired_at = %s WHERE name = %s IF owner = %s"
            ),
            [self.owner, self._acquired_at, self.name, self.owner],
        ).one()
        if not row.applied:
            holder = getattr(row, "owner", None)
            self._lost = f"now held by {holder}" if holder else "the lock row expired"
            return False
        self._renewed = time.monotonic()
        self.renewals += 1
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # any failure is a missed renewal, counted below
                log.warning("could not renew the migration lock: %s", exc)
            unrenewed = time.monotonic() - self._renewed
            if unrenewed >= self.ttl - self.renew_every:
                # The row may expire before the next attempt: stop instead of racing it.
                self._lost = f"not renewed for {unrenewed:.0f}s of its {self.ttl}s TTL"
                return

    def ensure_held(self, before: str = "the next statement") -> None:
        """Raise :class:`LockLostError` if the heartbeat lost the lock."""
        if self._lost:
            raise LockLostError(
                f"lost the migration lock ({self._lost}); stopped before {before}. Statements "
                "already sent stay applied and are idempotent (IF NOT EXISTS); run again"
            )

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.session.execute(
                self._lwt(
                    f"DELETE FROM {OPS_KEYSPACE}.migration_lock WHERE name = %s IF owner = %s"
                ),
                [self.name, self.owner],
            )
        except Exception as error:
            if exc_type is None:
                raise
            # Keep the run's own failure as the one reported; the row expires with its TTL.
            log.warning(
                "could not release the migration lock (it expires in %ss): %s", self.ttl, error
            )


# --- running statements ----------------------------------------------------------------------


def _agree(cluster: Cluster, what: str, timeout: float = AGREEMENT_TIMEOUT_SECONDS) -> float:
    return wait_for_schema_agreement(
        cluster,
        what,
        timeout=timeout,
        then=", then run the migration again",
        error=SchemaAgreementError,
    )


@dataclass
class _Applier:
    """Sends statements in agreement groups to one coordinator, with the lock checked before
    each statement."""

    cluster: Cluster
    session: Session
    on_statement: Callable[[Migration, str], None] | None = None
    lock: MigrationLock | None = None
    waits: list[float] = field(default_factory=list)

    def run(self, label: str, statements: list[str], migration: Migration | None = None) -> None:
        sent = 0
        for group in agreement_groups(statements):
            # The control connection's node coordinates the group: it has applied each change
            # before it answers, so the next statement sees it, and the agreement check (asked
            # on that node) compares every peer with the newest schema, not an older one.
            host = self.cluster.get_control_connection_host()
            for statement in group:
                if self.lock is not None:
                    self.lock.ensure_held(f"{label}: {_first_line(statement)}")
                if migration is not None and self.on_statement is not None:
                    self.on_statement(migration, statement)
                else:
                    log.info("%s: %s", label, _first_line(statement))
                self._execute(label, statement, host)
            sent += len(group)
            seconds = _agree(self.cluster, f"{label}, statement {sent} of {len(statements)}")
            self.waits.append(seconds)
            log.info(
                "%s: schema agreement after statement %d of %d in %.2fs",
                label,
                sent,
                len(statements),
                seconds,
            )

    def _execute(self, label: str, statement: str, host: Any) -> None:
        try:
            self.session.execute(statement, timeout=DDL_TIMEOUT_SECONDS, host=host)
        except RequestValidationException as exc:
            # Invalid, a syntax error, unauthorized, already exists: the same text fails again.
            raise MigrationError(
                f"{label}: the cluster rejected `{_first_line(statement)}`: {exc}. Fix the "
                "file if it was never applied anywhere, or put the fix in a new migration"
            ) from exc


def _first_line(statement: str) -> str:
    return statement.splitlines()[0][:80]


def _record(session: Session, migration: Migration) -> None:
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


def grant_keyspace_permissions(session: Session) -> None:
    """Hand the consumers and the analyst their permissions on the platform's keyspace
    (:mod:`retail.roles`): after every run, since a GRANT needs its keyspace to exist, and
    repeating one changes nothing."""
    if KEYSPACE not in _live_replication(session):
        return
    for grant in KEYSPACE_GRANTS:
        session.execute(grant.cql)
    log.info("granted %d permissions on keyspace %s", len(KEYSPACE_GRANTS), KEYSPACE)


def migrate(
    cluster: Cluster,
    session: Session,
    topology: Topology,
    *,
    dry_run: bool = False,
    allow_replication_decrease: bool = False,
    directory: Path = MIGRATIONS_DIR,
    on_statement: Callable[[Migration, str], None] | None = None,
    lock_ttl: int = LOCK_TTL_SECONDS,
) -> MigrationReport:
    """Apply the pending migrations in order (or, with ``dry_run``, only report them, from
    reads alone). Refuses a replication decrease unless ``allow_replication_decrease``."""
    started = time.monotonic()
    migrations = load(directory)
    if dry_run:
        report = plan(session, topology, migrations)
        check_replication(report.replication_changes, allow_decrease=allow_replication_decrease)
        log.info("%s", report.summary())
        return report
    # The driver waits up to max_schema_agreement_wait after every DDL answer; this run waits
    # where agreement_groups says instead.
    driver_wait = cluster.max_schema_agreement_wait
    cluster.max_schema_agreement_wait = 0
    applier = _Applier(cluster, session, on_statement)
    try:
        live = _live_replication(session)
        has_keyspace = OPS_KEYSPACE in live
        bootstrap = _bootstrap_statements(
            topology, has_keyspace, _ops_tables(session) if has_keyspace else set()
        )
        if bootstrap:
            check_replication(
                replication_changes([(OPS_KEYSPACE, s) for s in bootstrap], live),
                allow_decrease=False,
            )
            applier.run(OPS_KEYSPACE, bootstrap)
        with MigrationLock(session, ttl=lock_ttl) as lock:
            applier.lock = lock
            report = plan(session, topology, migrations, dry_run=False)
            check_replication(report.replication_changes, allow_decrease=allow_replication_decrease)
            if report.system_statements:
                applier.run("system keyspaces", report.system_statements)
                log.warning(
                    "system keyspaces replicated as the topology says; on a cluster that has "
                    "data, run the replication_repair DAG for them so that existing data "
                    "reaches its new replicas"
                )
            for n, migration in enumerate(report.pending, start=1):
                statements = migration.statements(topology)
                log.info(
                    "migration %d of %d: %s (%d statements, %d schema agreements)",
                    n,
                    len(report.pending),
                    migration.path.name,
                    len(statements),
                    len(agreement_groups(statements)),
                )
                applier.run(migration.path.name, statements, migration)
                lock.ensure_held(f"recording {migration.path.name} as applied")
                _record(session, migration)
                report.applied_now.append(migration.version)
            grant_keyspace_permissions(session)
    finally:
        cluster.max_schema_agreement_wait = driver_wait
    log.info(
        "%s in %.1fs (%d schema agreements, %.1fs of them waiting)",
        report.summary(),
        time.monotonic() - started,
        len(applier.waits),
        sum(applier.waits),
    )
    return report
