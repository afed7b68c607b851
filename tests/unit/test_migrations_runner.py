"""The migration runner without a cluster: when it waits for schema agreement, the replication
rails, the lock's heartbeat, what a dry run sends, and which failures are final."""

from __future__ import annotations

import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from cassandra import InvalidRequest

from retail import migrations
from retail.migrations import (
    LockHeldError,
    LockLostError,
    MigrationError,
    MigrationLock,
    ReplicationChange,
    SchemaAgreementError,
    agreement_groups,
    changed_names,
    keyspace_replication,
    replication_changes,
)
from retail.ops.replication import replication_decreases
from retail.topology import build_topology

TOPOLOGY = build_topology(2)  # the demo shape: RF 2 in each of the three DCs
NTS = "NetworkTopologyStrategy"
LIVE_NTS = f"org.apache.cassandra.locator.{NTS}"
Row = namedtuple("Row", "applied owner acquired_at")


# --- agreement groups --------------------------------------------------------------------------


def test_independent_statements_are_one_group() -> None:
    statements = [
        "CREATE TABLE IF NOT EXISTS retail.a (k int PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS retail.b (k int PRIMARY KEY)",
        "ALTER TABLE retail.c ADD IF NOT EXISTS v text",
    ]
    assert agreement_groups(statements) == [statements]


def test_a_type_is_agreed_before_the_table_that_uses_it() -> None:
    type_ = "CREATE TYPE IF NOT EXISTS retail.line_item (sku text)"
    table = "CREATE TABLE retail.orders (k int PRIMARY KEY, lines frozen<list<frozen<line_item>>>)"
    other = "CREATE TABLE retail.other (k int PRIMARY KEY)"
    assert agreement_groups([type_, table, other]) == [[type_], [table, other]]


def test_a_table_is_agreed_before_a_view_or_index_on_it() -> None:
    table = "CREATE TABLE IF NOT EXISTS retail.orders (order_id text PRIMARY KEY, c text)"
    view = (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS retail.by_c AS SELECT * FROM retail.orders "
        "WHERE c IS NOT NULL AND order_id IS NOT NULL PRIMARY KEY (c, order_id)"
    )
    index = "CREATE INDEX ON retail.orders (c)"
    assert agreement_groups([table, view]) == [[table], [view]]
    assert agreement_groups([table, index]) == [[table], [index]]


def test_a_drop_is_agreed_before_the_create_of_the_same_name() -> None:
    drops = [f"DROP TABLE IF EXISTS retail.{t}" for t in ("a", "b")]
    creates = [f"CREATE TABLE IF NOT EXISTS retail.{t} (k int PRIMARY KEY)" for t in ("a", "b")]
    assert agreement_groups(drops + creates) == [drops, creates]


def test_a_keyspace_is_agreed_before_its_tables() -> None:
    keyspace = "CREATE KEYSPACE IF NOT EXISTS shop WITH replication = {'class': 'X'}"
    table = "CREATE TABLE shop.t (k int PRIMARY KEY)"
    assert agreement_groups([keyspace, table]) == [[keyspace], [table]]


def test_changed_names() -> None:
    assert changed_names('ALTER TABLE retail."Orders" ADD v text') == {"orders"}
    assert changed_names("CREATE INDEX IF NOT EXISTS by_c ON retail.orders (c)") == {
        "by_c",
        "orders",
    }
    assert changed_names("CREATE INDEX ON orders (c)") == {"orders"}
    assert changed_names("CREATE OR REPLACE FUNCTION retail.f (x int) ...") == {"f"}
    assert changed_names("INSERT INTO retail.orders (k) VALUES (1)") == set()


def test_the_repository_files_wait_only_where_a_statement_depends_on_another() -> None:
    files = {m.path.name: m for m in migrations.load()}
    counts = {
        name: len(agreement_groups(files[name].statements(TOPOLOGY)))
        for name in (
            "V001__keyspace.cql",
            "V002__orders.cql",  # the type; the tables; the view on orders
            "V003__inventory.cql",
            "V006__identity_and_incremental_rollups.cql",  # the drops; the creates
        )
    }
    assert counts == {
        "V001__keyspace.cql": 1,
        "V002__orders.cql": 3,
        "V003__inventory.cql": 1,
        "V006__identity_and_incremental_rollups.cql": 2,
    }


# --- replication rails -------------------------------------------------------------------------


def nts(**factors: int) -> dict[str, str]:
    return {"class": NTS} | {dc.replace("_", "-"): str(rf) for dc, rf in factors.items()}


def test_replication_decreases() -> None:
    three = nts(eu_west=2, us_east=2, ap_southeast=2)
    assert replication_decreases(None, three) == []
    assert replication_decreases(three, three) == []
    assert replication_decreases(nts(eu_west=1), three) == []
    assert replication_decreases(three, nts(eu_west=2, us_east=2)) == [
        "ap-southeast: RF 2 -> 0 (DC removed)"
    ]
    assert replication_decreases(three, nts(eu_west=1, us_east=2, ap_southeast=3)) == [
        "eu-west: RF 2 -> 1"
    ]
    simple3 = {"class": "SimpleStrategy", "replication_factor": "3"}
    assert replication_decreases(simple3, nts(eu_west=1, us_east=1, ap_southeast=1)) == []
    assert replication_decreases(simple3, nts(eu_west=2)) == ["2 replicas in all, 3 before"]
    assert replication_decreases(three, simple3) == [
        f"strategy {NTS} -> SimpleStrategy: placement per DC cannot be compared"
    ]
    # NetworkTopologyStrategy's shorthand: every DC gets the factor.
    assert replication_decreases(three, {"class": NTS, "replication_factor": "1"}) == [
        "ap-southeast: RF 2 -> 1",
        "eu-west: RF 2 -> 1",
        "us-east: RF 2 -> 1",
    ]


def test_a_rendered_replication_is_parsed_like_the_live_one() -> None:
    statement = f'ALTER KEYSPACE "Shop" WITH replication = {TOPOLOGY.replication_cql()}'
    assert keyspace_replication(statement) == (
        "ALTER",
        "Shop",
        nts(eu_west=2, us_east=2, ap_southeast=2),
    )
    assert keyspace_replication("CREATE TABLE retail.t (k int PRIMARY KEY)") is None


def test_replication_changes_follow_the_statements_in_order() -> None:
    live = {"retail": {"class": LIVE_NTS, "eu-west": "2", "us-east": "2", "ap-southeast": "2"}}
    rendered = TOPOLOGY.replication_cql()
    planned = [
        ("V001", f"CREATE KEYSPACE IF NOT EXISTS retail WITH replication = {rendered}"),
        ("V007", f"CREATE KEYSPACE shop WITH replication = {{'class': '{NTS}', 'eu-west': 1}}"),
        ("V008", f"ALTER KEYSPACE shop WITH replication = {{'class': '{NTS}', 'eu-west': 3}}"),
        (
            "V009",
            f"ALTER KEYSPACE retail WITH replication = {{'class': '{NTS}', 'eu-west': 2, "
            "'us-east': 2} AND durable_writes = true",
        ),
    ]
    changes = replication_changes(planned, live)
    assert [(c.keyspace, c.source, c.decreases) for c in changes] == [
        ("shop", "V007", []),
        ("shop", "V008", []),
        ("retail", "V009", ["ap-southeast: RF 2 -> 0 (DC removed)"]),
    ]
    assert changes[1].before == nts(eu_west=1)
    assert changes[2].describe() == (
        f"retail (V009): {NTS} {{ap-southeast: 2, eu-west: 2, us-east: 2}} -> "
        f"{NTS} {{eu-west: 2, us-east: 2}}"
    )


def test_a_decrease_is_refused_with_the_before_and_after_unless_allowed() -> None:
    change = ReplicationChange("retail", nts(eu_west=2, us_east=2), nts(eu_west=2), "V009__x.cql")
    with pytest.raises(MigrationError) as refused:
        migrations.check_replication([change], allow_decrease=False)
    assert not refused.value.retryable
    message = str(refused.value)
    assert f"retail (V009__x.cql): {NTS} {{eu-west: 2, us-east: 2}} -> {NTS} {{eu-west: 2}}" in (
        message
    )
    assert "us-east: RF 2 -> 0 (DC removed)" in message
    assert "allow_replication_decrease" in message
    migrations.check_replication([change], allow_decrease=True)


# --- a fake cluster ----------------------------------------------------------------------------


class FakeSession:
    """Answers the runner's reads from a small model of the cluster and records every
    statement sent (text, parameters, host)."""

    def __init__(self, keyspaces: dict[str, dict[str, str]], ops_tables: set[str]) -> None:
        self.keyspaces = keyspaces
        self.ops_tables = ops_tables
        self.applied: dict[int, tuple[str, str]] = {}
        self.sent: list[tuple[str, Any, Any]] = []
        self.lock_owner: str | None = None
        self.steal_lock = False
        self.reject: str | None = None
        self.cluster: FakeCluster | None = None

    def execute(self, query: Any, parameters: Any = None, timeout: Any = None, host: Any = None):
        text = " ".join(getattr(query, "query_string", query).split())
        self.sent.append((text, parameters, host))
        if self.cluster is not None:
            self.cluster.driver_waits_seen.append(self.cluster.max_schema_agreement_wait)
        if self.reject and self.reject in text:
            raise InvalidRequest("Error from server: code=2200 [Invalid query] message=nope")
        if "FROM system_schema.keyspaces" in text:
            KsRow = namedtuple("KsRow", "keyspace_name replication")
            return Result([KsRow(k, v) for k, v in self.keyspaces.items()])
        if "FROM system_schema.tables" in text:
            TableRow = namedtuple("TableRow", "table_name")
            return Result([TableRow(t) for t in sorted(self.ops_tables)])
        if text.startswith("SELECT version, name, checksum"):
            AppliedRow = namedtuple("AppliedRow", "version name checksum")
            return Result([AppliedRow(v, n, c) for v, (n, c) in self.applied.items()])
        if "INTO retail_ops.migration_lock" in text:
            if self.lock_owner is not None:
                return Result([Row(False, self.lock_owner, "earlier")])
            self.lock_owner = parameters[1]
            return Result([Row(True, None, None)])
        if text.startswith("UPDATE retail_ops.migration_lock"):
            if self.steal_lock:
                self.lock_owner = "someone-else"
            ok = self.lock_owner == parameters[3]
            return Result([Row(ok, None if ok else self.lock_owner, None)])
        if text.startswith("DELETE FROM retail_ops.migration_lock"):
            if self.lock_owner == parameters[1]:
                self.lock_owner = None
            return Result([Row(True, None, None)])
        if "INTO retail_ops.schema_migrations" in text:
            self.applied[parameters[0]] = (parameters[1], parameters[2])
            return Result([])
        if parsed := keyspace_replication(text):
            self.keyspaces[parsed[1]] = parsed[2]
        elif text.startswith("CREATE TABLE IF NOT EXISTS retail_ops."):
            self.ops_tables.add(text.split()[5].split(".")[1])
        return Result([])


class Result(list):
    def one(self) -> Any:
        return self[0] if self else None


class FakeControlConnection:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def wait_for_schema_agreement(self, wait_time: float | None = None) -> bool:
        self.cluster.agreements.append(len(self.cluster.session.sent))
        return self.cluster.agrees


class FakeCluster:
    def __init__(self, session: FakeSession) -> None:
        self.session = session
        session.cluster = self
        self.max_schema_agreement_wait = 10
        self.control_connection = FakeControlConnection(self)
        self.agreements: list[int] = []  # statements sent when each agreement was asked
        self.driver_waits_seen: list[float] = []
        self.agrees = True

    def get_control_connection_host(self) -> str:
        return "control-host"


def fresh_cluster() -> tuple[FakeCluster, FakeSession]:
    simple = {"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "1"}
    session = FakeSession({"system_auth": dict(simple), "system_distributed": dict(simple)}, set())
    return FakeCluster(session), session


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


FILES = {
    "V001__keyspace.cql": "CREATE KEYSPACE IF NOT EXISTS shop WITH replication = {replication};",
    "V002__tables.cql": "CREATE TYPE IF NOT EXISTS shop.item (sku text);\n"
    "CREATE TABLE IF NOT EXISTS shop.orders (k int PRIMARY KEY, items list<frozen<item>>);\n"
    "CREATE TABLE IF NOT EXISTS shop.stock (k int PRIMARY KEY);\n",
}


# --- what a run sends --------------------------------------------------------------------------


def test_a_dry_run_on_a_fresh_cluster_only_reads_and_lists_every_file(tmp_path: Path) -> None:
    cluster, session = fresh_cluster()
    report = migrations.migrate(
        cluster, session, TOPOLOGY, dry_run=True, directory=write(tmp_path, FILES)
    )
    assert [m.path.name for m in report.pending] == list(FILES)
    assert report.applied_before == []
    assert [text.split()[0] for text, _, _ in session.sent] == ["SELECT"] * len(session.sent)
    assert session.keyspaces.keys() == {"system_auth", "system_distributed"}
    assert session.lock_owner is None
    assert [(c.keyspace, c.before is None) for c in report.replication_changes] == [
        ("retail_ops", True),
        ("system_auth", False),
        ("system_distributed", False),
        ("shop", True),
    ]


def test_a_run_waits_once_per_group_on_one_coordinator_without_the_drivers_wait(
    tmp_path: Path,
) -> None:
    cluster, session = fresh_cluster()
    report = migrations.migrate(cluster, session, TOPOLOGY, directory=write(tmp_path, FILES))
    assert report.applied_now == [1, 2]
    assert sorted(session.applied) == [1, 2]
    ddl = [(text, host) for text, _, host in session.sent if text.split()[0] in ("CREATE", "ALTER")]
    assert {host for _, host in ddl} == {"control-host"}
    # bootstrap: keyspace | 2 tables; system keyspaces: 1; V001: 1; V002: type | 2 tables.
    assert len(cluster.agreements) == 2 + 1 + 1 + 2
    # The driver's per-statement wait is off while the run sends DDL, and restored after.
    assert set(cluster.driver_waits_seen) == {0}
    assert cluster.max_schema_agreement_wait == 10
    assert session.lock_owner is None  # released


def test_a_file_is_recorded_only_once_an_agreement_covers_its_statements(tmp_path: Path) -> None:
    cluster, session = fresh_cluster()
    migrations.migrate(cluster, session, TOPOLOGY, directory=write(tmp_path, FILES))
    texts = [text for text, _, _ in session.sent]
    lasts = {1: "CREATE KEYSPACE IF NOT EXISTS shop", 2: "CREATE TABLE IF NOT EXISTS shop.stock"}
    for version, last in lasts.items():
        sent = max(i for i, t in enumerate(texts) if t.startswith(last))
        recorded = next(
            i
            for i, (t, params, _) in enumerate(session.sent)
            if "INTO retail_ops.schema_migrations" in t and params[0] == version
        )
        assert any(sent < agreed <= recorded for agreed in cluster.agreements), version


def test_nothing_pending_sends_no_ddl_and_waits_for_nothing(tmp_path: Path) -> None:
    cluster, session = fresh_cluster()
    directory = write(tmp_path, FILES)
    migrations.migrate(cluster, session, TOPOLOGY, directory=directory)
    cluster.agreements.clear()
    session.sent.clear()
    report = migrations.migrate(cluster, session, TOPOLOGY, directory=directory)
    assert report.pending == [] and report.applied_before == [1, 2]
    assert not [t for t, _, _ in session.sent if t.split()[0] in ("CREATE", "ALTER", "DROP")]
    assert cluster.agreements == []


def test_a_migration_lowering_replication_is_refused_before_any_statement(tmp_path: Path) -> None:
    cluster, session = fresh_cluster()
    directory = write(tmp_path, FILES)
    migrations.migrate(cluster, session, TOPOLOGY, directory=directory)
    session.keyspaces["shop"] = nts(eu_west=2, us_east=2, ap_southeast=2)
    lower = f"ALTER KEYSPACE shop WITH replication = {{'class': '{NTS}', 'eu-west': 2}};"
    (directory / "V003__lower.cql").write_text(lower)
    session.sent.clear()
    for dry_run in (True, False):
        with pytest.raises(MigrationError, match=r"ap-southeast: RF 2 -> 0 \(DC removed\)"):
            migrations.migrate(cluster, session, TOPOLOGY, directory=directory, dry_run=dry_run)
    assert not [t for t, _, _ in session.sent if t.startswith("ALTER")]
    assert 3 not in session.applied and session.lock_owner is None
    report = migrations.migrate(
        cluster, session, TOPOLOGY, directory=directory, allow_replication_decrease=True
    )
    assert report.applied_now == [3]


def test_a_statement_the_cluster_rejects_fails_for_good_naming_the_file(tmp_path: Path) -> None:
    cluster, session = fresh_cluster()
    session.reject = "shop.stock"
    with pytest.raises(MigrationError, match=r"V002__tables\.cql: the cluster rejected") as failed:
        migrations.migrate(cluster, session, TOPOLOGY, directory=write(tmp_path, FILES))
    assert not failed.value.retryable
    assert sorted(session.applied) == [1]  # V001 done; V002 not recorded
    assert cluster.max_schema_agreement_wait == 10 and session.lock_owner is None


def test_late_agreement_and_a_held_lock_are_retryable(tmp_path: Path) -> None:
    cluster, session = fresh_cluster()
    directory = write(tmp_path, FILES)
    cluster.agrees = False
    with pytest.raises(SchemaAgreementError) as late:
        migrations.migrate(cluster, session, TOPOLOGY, directory=directory)
    assert late.value.retryable
    cluster.agrees = True
    session.lock_owner = "other-run"
    with pytest.raises(LockHeldError, match="other-run") as held:
        migrations.migrate(cluster, session, TOPOLOGY, directory=directory)
    assert held.value.retryable


def test_a_misnamed_file_fails_for_good(tmp_path: Path) -> None:
    (tmp_path / "V1_bad.cql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="V<nnn>__") as bad:
        migrations.load(tmp_path)
    assert not bad.value.retryable


# --- the lock's heartbeat ----------------------------------------------------------------------


def test_the_heartbeat_renews_the_lock_while_it_is_held() -> None:
    _, session = fresh_cluster()
    with MigrationLock(session, ttl=2, renew_every=0.05) as lock:
        time.sleep(0.3)
        lock.ensure_held()
    assert lock.renewals >= 2
    updates = [t for t, _, _ in session.sent if t.startswith("UPDATE")]
    assert updates and all("USING TTL 2" in t and "IF owner = %s" in t for t in updates)
    assert session.lock_owner is None


def test_a_lost_lock_stops_the_run_before_its_next_statement(tmp_path: Path) -> None:
    cluster, session = fresh_cluster()
    sent: list[str] = []

    def steal_then_wait(migration: migrations.Migration, statement: str) -> None:
        sent.append(statement)
        session.steal_lock = True
        time.sleep(0.5)  # the heartbeat (every ttl/4 = 0.25 s) notices

    with pytest.raises(LockLostError, match="now held by someone-else") as lost:
        migrations.migrate(
            cluster,
            session,
            TOPOLOGY,
            directory=write(tmp_path, FILES),
            on_statement=steal_then_wait,
            lock_ttl=1,
        )
    assert lost.value.retryable
    assert len(sent) == 1 and session.applied == {}


def test_renewals_that_keep_failing_give_the_lock_up_before_it_can_expire() -> None:
    _, session = fresh_cluster()

    class Down(Exception):
        pass

    with MigrationLock(session, ttl=1, renew_every=0.1) as lock:
        real = session.execute

        def failing(query: Any, parameters: Any = None, **kw: Any) -> Any:
            if getattr(query, "query_string", "").startswith("UPDATE"):
                raise Down("timed out")
            return real(query, parameters, **kw)

        session.execute = failing  # type: ignore[method-assign]
        time.sleep(1.2)
        with pytest.raises(LockLostError, match="not renewed for"):
            lock.ensure_held()
        session.execute = real  # type: ignore[method-assign]


# --- the operator: what Airflow retries --------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "final"),
    [
        (MigrationError("V002__x.cql changed after it was applied"), True),
        (LockHeldError("another migration run holds the lock"), False),
        (SchemaAgreementError("nodes did not agree"), False),
    ],
)
def test_the_operator_fails_at_once_only_when_a_retry_cannot_help(
    monkeypatch: pytest.MonkeyPatch, error: MigrationError, final: bool
) -> None:
    from contextlib import contextmanager

    from airflow.sdk.exceptions import AirflowFailException

    from retail_airflow.operators import migrations as operator_module

    class Hook:
        def __init__(self, conn_id: str) -> None:
            pass

        @contextmanager
        def session(self, **kwargs: Any):
            yield object(), object()

        def topology(self) -> Any:
            return TOPOLOGY

    def fail(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(operator_module, "RetailCassandraHook", Hook)
    monkeypatch.setattr(operator_module.migrations, "migrate", fail)
    task = operator_module.SchemaMigrationsOperator(task_id="apply_migrations")
    expected = AirflowFailException if final else type(error)
    with pytest.raises(expected, match=str(error)):
        task.execute({})
