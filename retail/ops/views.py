"""Materialized views: a rotating audit against the base table, and a rebuild that a retry
does not repeat.

**The audit reads a bounded slice of the ring per run.** A cursor per view and ring (the base
table's, the view's) in ``retail_ops.view_audit_cursor`` says where the last run stopped; a run
reads on from there, in token order and in pages, until it has read ``rows`` rows (whole
partitions: it stops between two tokens), and wraps from the end of the ring to its start.
Each base row it reads is looked up in the view (the rows are grouped by view partition, and
each partition is read once, ``IN`` its clustering keys); each view row it reads is looked up
in the base (an *orphan*: its base row is gone, or has moved to another view key). So a run
costs at most ``rows`` rows each way whatever the table holds, and ``ceil(table / rows)`` runs
cover the ring; the cursor row counts the completed passes.

**A live stream does not make it flap.** The view is written by the base replicas
asynchronously: a base row written a moment ago may not be in the view yet, and a deleted or
superseded one leaves its view row behind a moment longer. So every mismatch is read again
(both sides) once ``settle`` seconds have passed since it was first read, and reported only if
it is still wrong; the others are counted as *settled*. (``WRITETIME`` cannot tell a fresh
write here: base rows carry their event time as their timestamp, so a late event looks old
and a clock-skewed one would look fresh for ever.) The recheck costs nothing when the slice
agrees, and at most the slice when it does not.

**What a run reports stays reported for a pass.** A mismatch is found only when the cursor
passes over it, so the cursor row keeps the count found in the current pass and in the last
complete one: a view is consistent only when both are zero (and every node has built it).
A rebuild starts the view's passes afresh.

Consistency: every read is made at ``ALL``. A view is written by the base replicas
asynchronously, the consumers write at ``LOCAL_QUORUM`` in their own DC, and the other DCs
catch up later: any level that asks fewer than every replica can report a row as missing that
is only not there *yet* on the replicas it asked, or miss a stale one. ``ALL`` answers from
every replica (the newest cell wins); the price is that the audit needs every node up, and
says so (Unavailable) instead of answering wrong.

**A retried rebuild does not drop the view its first try created**: right after the
``CREATE``, the view's id is recorded in ``retail_ops.view_rebuilds`` under the DAG run; a try
of the same run that finds the view with that id goes on waiting for its build instead.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster, Session
from cassandra.query import SimpleStatement

from retail.cassandra import run_all, wait_for_schema_agreement
from retail.catalog import View
from retail.errors import RetailError
from retail.topology import Topology

log = logging.getLogger(__name__)

MIN_TOKEN, MAX_TOKEN = -(2**63), 2**63 - 1  # Murmur3Partitioner; no key has MIN_TOKEN
RING = 2**64
BUILT = "SUCCESS"
EXAMPLES = 5
CURSOR_TABLE = "retail_ops.view_audit_cursor"
REBUILD_TABLE = "retail_ops.view_rebuilds"
BASE, VIEW = "base", "view"  # the two rings of a view's audit
IN_CHUNK = 100  # clustering keys per IN read of a view partition
CONCURRENCY = 32

_NOT_NULL = re.compile(r"(\w+)\s+IS\s+NOT\s+NULL", re.IGNORECASE)


class ViewError(RetailError):
    """A view could not be audited or rebuilt (the message says what to do)."""


# --- the ring and the cursor (pure) -----------------------------------------------------------


def ring_ranges(after: int) -> list[tuple[int, int]]:
    """The whole ring in reading order from just after ``after``: ``(start, end]`` ranges that
    do not wrap (a token range query cannot)."""
    if after == MIN_TOKEN:
        return [(MIN_TOKEN, MAX_TOKEN)]
    return [(after, MAX_TOKEN), (MIN_TOKEN, after)]


def ring_fraction(start: int, end: int) -> float:
    """The share of the ring in ``(start, end]`` going round from ``start`` (0 if equal)."""
    return ((end - start) % RING) / RING


@dataclass(frozen=True)
class Slice:
    """What one run read of a ring: ``(start, stop]``, going round; ``wrapped``: it went past
    the end of the ring (a pass completed); ``whole``: it read the whole ring."""

    start: int
    stop: int
    rows: list[Row]
    wrapped: bool
    whole: bool

    @property
    def fraction(self) -> float:
        return 1.0 if self.whole else ring_fraction(self.start, self.stop)

    def before_wrap(self, token: int) -> bool:
        """Whether ``token`` was read before the run went past the end of the ring."""
        return self.start == MIN_TOKEN or token > self.start


def take_slice(read: Callable[[int, int], Iterable[Row]], after: int, budget: int) -> Slice:
    """Read on from ``after`` in token order until ``budget`` rows are read, then stop before
    the next token (partitions are never split), or until the whole ring is read."""
    rows: list[Row] = []
    pos, wrapped = after, False  # pos: every token up to it (going round) has been read
    for lo, hi in ring_ranges(after):
        for row in read(lo, hi):
            if len(rows) >= budget and row.token != pos:
                return Slice(after, pos, rows, wrapped, False)
            rows.append(row)
            pos = row.token
        # The range is read to its end; past the ring's end is its start (no key has MIN).
        pos, wrapped = (MIN_TOKEN, True) if hi == MAX_TOKEN else (hi, wrapped)
    return Slice(after, pos, rows, wrapped, True)


@dataclass(frozen=True)
class Cursor:
    """Where a ring's audit goes on (just after ``after``), the passes over the whole ring
    completed, and the mismatches found in the current pass and in the last complete one."""

    after: int = MIN_TOKEN
    passes: int = 0
    pass_found: int = 0
    last_pass_found: int = 0

    @property
    def pass_covered(self) -> float:
        """The share of the ring the current pass has audited (passes start at the ring's
        start)."""
        return ring_fraction(MIN_TOKEN, self.after)

    @property
    def found(self) -> int:
        """Mismatches found within about the last ring's worth of runs."""
        return self.pass_found + self.last_pass_found

    def advanced(self, s: Slice, found_tokens: Sequence[int]) -> Cursor:
        """The cursor after slice ``s``, in which mismatches were found at ``found_tokens``:
        those before the wrap count to the pass that ended there."""
        if not s.wrapped:
            return replace(self, after=s.stop, pass_found=self.pass_found + len(found_tokens))
        old = sum(1 for t in found_tokens if s.before_wrap(t))
        return Cursor(
            after=s.stop,
            passes=self.passes + 1,
            pass_found=len(found_tokens) - old,
            last_pass_found=self.pass_found + old,
        )


# --- rows and mismatches (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A row of the base table or the view, as the audit compares them: its token (in the ring
    it was read from), its base primary key, its view primary key, and the view's columns."""

    token: int
    key: tuple
    view_key: tuple
    values: tuple

    @property
    def in_view(self) -> bool:
        """A base row has a view row only if every column of the view's key is set."""
        return all(v is not None for v in self.view_key)


MISSING, DIFFERING, ORPHAN = "missing", "differing", "orphan"


@dataclass(frozen=True)
class Mismatch:
    kind: str  # MISSING, DIFFERING (found from the base) or ORPHAN (found from the view)
    token: int  # where the ring that found it has it
    base: Row | None
    view: Row | None


def base_mismatches(base: Iterable[Row], view: dict[tuple, Row]) -> list[Mismatch]:
    """Base rows (that belong in the view) without their view row, or with other values."""
    out = []
    for b in base:
        if not b.in_view:
            continue
        v = view.get(b.view_key)
        if v is None:
            out.append(Mismatch(MISSING, b.token, b, None))
        elif v.values != b.values:
            out.append(Mismatch(DIFFERING, b.token, b, v))
    return out


def view_orphans(view: Iterable[Row], base: dict[tuple, Row]) -> list[Mismatch]:
    """View rows whose base row is gone, or now has another view key (a stale view row)."""
    out = []
    for v in view:
        b = base.get(v.key)
        if b is None or b.view_key != v.view_key:
            out.append(Mismatch(ORPHAN, v.token, b, v))
    return out


class Source(Protocol):
    """Reads of a view and its base table (at ALL); a fake in the unit tests."""

    def base_range(self, start: int, end: int) -> Iterable[Row]:
        """Base rows with a token in ``(start, end]``, in token order."""
        ...

    def view_range(self, start: int, end: int) -> Iterable[Row]:
        """View rows with a token in ``(start, end]``, in token order."""
        ...

    def view_rows(self, rows: Sequence[Row]) -> dict[tuple, Row]:
        """The view rows at these rows' view keys, by view key (each partition read once)."""
        ...

    def base_rows(self, rows: Sequence[Row]) -> dict[tuple, Row]:
        """The base rows at these rows' base keys, by base key."""
        ...


def recheck(source: Source, found: Sequence[Mismatch]) -> list[Mismatch]:
    """The mismatches among ``found`` that are still there, read again from both sides."""
    from_base = [m.base for m in found if m.kind != ORPHAN and m.base is not None]
    from_view = [m.view for m in found if m.kind == ORPHAN and m.view is not None]
    still: list[Mismatch] = []
    if from_base:
        base = list(source.base_rows(from_base).values())  # a base row gone since: settled
        still += base_mismatches(base, source.view_rows(base))
    if from_view:
        view = list(source.view_rows(from_view).values())  # a view row gone since: settled
        still += view_orphans(view, source.base_rows(view))
    return still


# --- the audit report -------------------------------------------------------------------------


def _plain(row: Row | None, columns: Sequence[str]) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        c: (v.isoformat() if hasattr(v, "isoformat") else v)
        for c, v in zip(columns, row.values, strict=True)
    }


@dataclass
class ViewAudit:
    """A view compared with its base table over the slices a run audited, and its build
    status on every node."""

    view: str
    base_table: str
    exists: bool
    base_rows: int  # base rows audited that the view should hold
    view_rows: int  # of those, the ones the view holds with the same values (or settled)
    sampled_base: int = 0  # base rows read (the base ring's slice)
    sampled_view: int = 0  # view rows read (the view ring's slice)
    missing: list[dict[str, Any]] = field(default_factory=list)  # base rows not in the view
    differing: list[dict[str, Any]] = field(default_factory=list)  # in both, other values
    orphans: list[dict[str, Any]] = field(default_factory=list)  # view rows without a base row
    build_status: dict[str, str] = field(default_factory=dict)  # node name -> status
    settled: int = 0  # mismatches gone when read again after the settle delay
    rings: dict[str, dict[str, Any]] = field(default_factory=dict)  # BASE/VIEW -> cursor report
    found_in_passes: int = 0  # mismatches found in the current and last pass of both rings

    @property
    def not_built(self) -> list[str]:
        return sorted(n for n, s in self.build_status.items() if s != BUILT)

    @property
    def missing_rows(self) -> int:
        """Rows of the audited slice the view lacks."""
        return max(self.base_rows - self.view_rows, len(self.missing), 0)

    @property
    def consistent(self) -> bool:
        return (
            self.exists
            and self.base_rows == self.view_rows
            and not (self.missing or self.differing or self.orphans or self.not_built)
            and self.found_in_passes == 0
        )

    def summary(self) -> str:
        if not self.exists:
            return (
                f"{self.view}: does not exist ({self.base_rows} base rows it should hold in the "
                "next slice alone)"
            )
        state = "consistent" if self.consistent else "INCONSISTENT"
        rings = "; ".join(
            f"{name} ring: {r['covered_this_run']:.1%} audited this run, pass {r['passes'] + 1} "
            f"at {r['pass_covered']:.1%}"
            for name, r in sorted(self.rings.items())
        )
        return (
            f"{self.view}: {state}; {self.base_rows} base rows audited, {len(self.missing)} "
            f"missing from the view, {len(self.differing)} differing; {self.sampled_view} view "
            f"rows audited, {len(self.orphans)} without a base row; {self.settled} settled on "
            f"a second read; {self.found_in_passes} found in this and the last pass; {rings}; "
            f"not built on: {', '.join(self.not_built) or 'none'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "base_table": self.base_table,
            "exists": self.exists,
            "consistent": self.consistent,
            "base_rows": self.base_rows,
            "view_rows": self.view_rows,
            "missing_rows": self.missing_rows,
            "sampled_base": self.sampled_base,
            "sampled_view": self.sampled_view,
            "settled": self.settled,
            "found_in_passes": self.found_in_passes,
            "rings": self.rings,
            "missing_examples": self.missing[:EXAMPLES],
            "differing_examples": self.differing[:EXAMPLES],
            "orphan_examples": self.orphans[:EXAMPLES],
            "build_status": dict(sorted(self.build_status.items())),
            "not_built": self.not_built,
        }


def _ring_report(before: Cursor, s: Slice, after: Cursor) -> dict[str, Any]:
    return {
        "rows_read": len(s.rows),
        "start_token": s.start,
        "next_token": after.after,
        "covered_this_run": s.fraction,
        "pass_covered": after.pass_covered,
        "passes": after.passes,
        "passes_completed_this_run": after.passes - before.passes,
        "found_in_pass": after.pass_found,
        "found_in_last_pass": after.last_pass_found,
    }


def compare(
    source: Source,
    cursors: dict[str, Cursor],
    *,
    rows: int,
    settle: float,
    columns: Sequence[str],
    view: str = "",
    base_table: str = "",
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[ViewAudit, dict[str, Cursor]]:
    """Audit the next ``rows`` rows of each ring from ``cursors``; returns the audit (without
    build status) and the cursors advanced past what was audited."""
    base_slice = take_slice(source.base_range, cursors[BASE].after, rows)
    expected = [r for r in base_slice.rows if r.in_view]
    found = base_mismatches(expected, source.view_rows(expected))
    view_slice = take_slice(source.view_range, cursors[VIEW].after, rows)
    found += view_orphans(view_slice.rows, source.base_rows(view_slice.rows))
    reported = found
    if found:
        # Nothing tells when the view's asynchronous writes land: give them ``settle`` seconds.
        sleep(settle)
        reported = recheck(source, found)
    by_kind: dict[str, list[Mismatch]] = defaultdict(list)
    for m in reported:
        by_kind[m.kind].append(m)
    advanced = {
        BASE: cursors[BASE].advanced(base_slice, [m.token for m in reported if m.kind != ORPHAN]),
        VIEW: cursors[VIEW].advanced(view_slice, [m.token for m in by_kind[ORPHAN]]),
    }
    audit = ViewAudit(
        view,
        base_table,
        True,
        base_rows=len(expected),
        view_rows=len(expected) - len(by_kind[MISSING]) - len(by_kind[DIFFERING]),
        sampled_base=len(base_slice.rows),
        sampled_view=len(view_slice.rows),
        missing=[_plain(m.base, columns) for m in by_kind[MISSING]],  # type: ignore[misc]
        differing=[
            {"base": _plain(m.base, columns), "view": _plain(m.view, columns)}
            for m in by_kind[DIFFERING]
        ],
        orphans=[_plain(m.view, columns) for m in by_kind[ORPHAN]],  # type: ignore[misc]
        settled=len(found) - len(reported),
        rings={
            BASE: _ring_report(cursors[BASE], base_slice, advanced[BASE]),
            VIEW: _ring_report(cursors[VIEW], view_slice, advanced[VIEW]),
        },
        found_in_passes=advanced[BASE].found + advanced[VIEW].found,
    )
    return audit, advanced


# --- Cassandra --------------------------------------------------------------------------------


def key_filter_columns(view: View, base_key: Sequence[str]) -> list[str]:
    """The columns of the view's ``IS NOT NULL`` filter that are not in the base key: a base row
    with one of them null has no view row (Cassandra allows at most one such column)."""
    return [c for c in _NOT_NULL.findall(view.ddl) if c not in base_key]


def _all(cql: str) -> SimpleStatement:
    return SimpleStatement(cql, consistency_level=ConsistencyLevel.ALL)


class CassandraSource:
    """The reads of :class:`Source` on the live cluster, every one at ``ALL``, paged."""

    def __init__(self, session: Session, keyspace: str, base_meta: Any, view_meta: Any) -> None:
        self.session = session
        self.columns = list(view_meta.columns)
        base_key = [c.name for c in base_meta.primary_key]
        view_key = [c.name for c in [*view_meta.partition_key, *view_meta.clustering_key]]
        self._key = [self.columns.index(c) for c in base_key]
        self._view_key = [self.columns.index(c) for c in view_key]
        self._view_pk = [c.name for c in view_meta.partition_key]
        view_ck = [c.name for c in view_meta.clustering_key]
        select = ", ".join(self.columns)
        base_pk = ", ".join(c.name for c in base_meta.partition_key)
        vpk = ", ".join(self._view_pk)
        base = f"{keyspace}.{base_meta.name}"
        view = f"{keyspace}.{view_meta.name}"

        def prepare(cql: str) -> Any:
            stmt = session.prepare(cql)
            stmt.consistency_level = ConsistencyLevel.ALL
            stmt.is_idempotent = True
            return stmt

        ranged = (
            "SELECT token({pk}) AS audit_token, {s} FROM {t} "
            "WHERE token({pk}) > ? AND token({pk}) <= ?"
        )
        self._base_range = prepare(ranged.format(pk=base_pk, s=select, t=base))
        self._view_range = prepare(ranged.format(pk=vpk, s=select, t=view))
        self._base_point = prepare(
            f"SELECT token({base_pk}) AS audit_token, {select} FROM {base} WHERE "
            + " AND ".join(f"{c} = ?" for c in base_key)
        )
        where_pk = " AND ".join(f"{c} = ?" for c in self._view_pk)
        # One clustering column: read just the keys wanted from the partition; otherwise the
        # whole partition (none of the platform's views has more than one).
        self._in_ck = len(view_ck) == 1
        self._view_partition = prepare(
            f"SELECT token({vpk}) AS audit_token, {select} FROM {view} WHERE {where_pk}"
            + (f" AND {view_ck[0]} IN ?" if self._in_ck else "")
        )

    def _row(self, r: Any) -> Row:
        values = tuple(r[1:])
        return Row(
            r[0],
            tuple(values[i] for i in self._key),
            tuple(values[i] for i in self._view_key),
            values,
        )

    def _range(self, stmt: Any, start: int, end: int, page: int = 500) -> Iterator[Row]:
        stmt.fetch_size = page
        for r in self.session.execute(stmt, (start, end), timeout=60):
            yield self._row(r)

    def base_range(self, start: int, end: int) -> Iterator[Row]:
        return self._range(self._base_range, start, end)

    def view_range(self, start: int, end: int) -> Iterator[Row]:
        return self._range(self._view_range, start, end)

    def _concurrent(self, stmt: Any, params: list[tuple]) -> Iterator[Row]:
        for rows in run_all(self.session, [(stmt, p) for p in params], CONCURRENCY):
            for r in rows:
                yield self._row(r)

    def view_rows(self, rows: Sequence[Row]) -> dict[tuple, Row]:
        n = len(self._view_pk)
        by_partition: dict[tuple, set] = defaultdict(set)
        for r in rows:
            by_partition[r.view_key[:n]].add(r.view_key[n:])
        params: list[tuple] = []
        for pk, cks in by_partition.items():
            if not self._in_ck:
                params.append(pk)
                continue
            keys = sorted(c[0] for c in cks)
            params += [(*pk, keys[i : i + IN_CHUNK]) for i in range(0, len(keys), IN_CHUNK)]
        wanted = {r.view_key for r in rows}
        return {
            r.view_key: r
            for r in self._concurrent(self._view_partition, params)
            if r.view_key in wanted
        }

    def base_rows(self, rows: Sequence[Row]) -> dict[tuple, Row]:
        keys = sorted({r.key for r in rows}, key=repr)
        return {r.key: r for r in self._concurrent(self._base_point, keys)}


def read_cursors(session: Session, view: View) -> dict[str, Cursor]:
    """The view's audit cursors (a ring never audited starts at the ring's start)."""
    rows = session.execute(
        SimpleStatement(
            f"SELECT ring, next_token, passes, pass_found, last_pass_found FROM {CURSOR_TABLE} "
            "WHERE view_name = %s",
            consistency_level=ConsistencyLevel.QUORUM,
        ),
        (view.name,),
        timeout=30,
    )
    cursors = {BASE: Cursor(), VIEW: Cursor()}
    for r in rows:
        if r.ring in cursors:
            cursors[r.ring] = Cursor(r.next_token, r.passes, r.pass_found, r.last_pass_found)
    return cursors


def write_cursors(session: Session, view: View, cursors: dict[str, Cursor], run_id: str) -> None:
    stmt = SimpleStatement(
        f"INSERT INTO {CURSOR_TABLE} (view_name, ring, next_token, passes, pass_found, "
        "last_pass_found, updated_at, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        consistency_level=ConsistencyLevel.QUORUM,
    )
    now = datetime.now(UTC)
    for ring, c in cursors.items():
        session.execute(
            stmt,
            (view.name, ring, c.after, c.passes, c.pass_found, c.last_pass_found, now, run_id),
            timeout=30,
        )


def build_status(session: Session, cluster: Cluster, topology: Topology, view: View) -> dict:
    """Every node's build status of ``view`` (node name -> STARTED/SUCCESS/..., or "none")."""
    rows = session.execute(
        SimpleStatement(
            "SELECT host_id, status FROM system_distributed.view_build_status "
            "WHERE keyspace_name = %s AND view_name = %s",
            consistency_level=ConsistencyLevel.ALL,
        ),
        (view.keyspace, view.name),
        timeout=30,
    )
    by_host = {r.host_id: r.status for r in rows}
    address_of = {h.host_id: h.address for h in cluster.metadata.all_hosts()}
    by_address = {address_of.get(h): s for h, s in by_host.items()}
    return {n.name: by_address.get(n.address, "none") for n in topology.nodes}


def audit_view(
    cluster: Cluster,
    session: Session,
    topology: Topology,
    view: View,
    *,
    rows: int = 5000,
    settle: float = 5.0,
    run_id: str = "manual",
) -> ViewAudit:
    """Compare ``view`` with its base table over the next ``rows`` rows of each ring (see the
    module's docstring), advance its cursors, and check its build status on every node."""
    ks = view.keyspace
    cluster.refresh_schema_metadata()
    meta = cluster.metadata.keyspaces[ks]
    base_meta = meta.tables[view.base_table]
    view_meta = meta.views.get(view.name)
    cursors = read_cursors(session, view)
    if view_meta is None:
        # What the next slice holds is what the view lacks at least; the cursor stays.
        pk = ", ".join(c.name for c in base_meta.partition_key)
        filters = key_filter_columns(view, [c.name for c in base_meta.primary_key])
        cols = filters[0] if filters else pk
        stmt = session.prepare(
            f"SELECT token({pk}), {cols} FROM {ks}.{view.base_table} "
            f"WHERE token({pk}) > ? AND token({pk}) <= ?"
        )
        stmt.consistency_level = ConsistencyLevel.ALL
        stmt.fetch_size = 500

        def read(lo: int, hi: int) -> Iterator[Row]:
            for r in session.execute(stmt, (lo, hi), timeout=60):
                yield Row(r[0], (), (r[1],), ())

        s = take_slice(read, cursors[BASE].after, rows)
        due = sum(r.in_view for r in s.rows)
        return ViewAudit(view.name, view.base_table, False, due, 0, sampled_base=len(s.rows))
    source = CassandraSource(session, ks, base_meta, view_meta)
    audit, advanced = compare(
        source,
        cursors,
        rows=rows,
        settle=settle,
        columns=source.columns,
        view=view.name,
        base_table=view.base_table,
    )
    write_cursors(session, view, advanced, run_id)
    audit.build_status = build_status(session, cluster, topology, view)
    return audit


# --- the rebuild ------------------------------------------------------------------------------


def _agree(cluster: Cluster, what: str) -> None:
    wait_for_schema_agreement(cluster, what, then="; the task retries", error=ViewError)


def view_id(session: Session, view: View) -> uuid.UUID | None:
    """The id of ``view`` as the schema has it now (a recreated view gets a new one)."""
    row = session.execute(
        "SELECT id FROM system_schema.views WHERE keyspace_name = %s AND view_name = %s",
        (view.keyspace, view.name),
        timeout=30,
    ).one()
    return None if row is None else row.id


def _created_id(session: Session, view: View, wait: float = 30) -> uuid.UUID:
    """The id of the view just created, once the node asked has it (``system_schema`` is
    local to each node, and the coordinator of this read may not have the new schema yet)."""
    deadline = time.monotonic() + wait
    while (found := view_id(session, view)) is None:
        if time.monotonic() > deadline:
            raise ViewError(
                f"{view.name} is not in system_schema.views {wait:.0f}s after its CREATE; check "
                "`retail stack status`; the task retries"
            )
        time.sleep(0.2)
    return found


@dataclass(frozen=True)
class Rebuilt:
    """A view recreated by a DAG run: its new id and the try that created it."""

    view_id: uuid.UUID
    try_number: int


def rebuilt_by(session: Session, view: View, run_id: str) -> Rebuilt | None:
    row = session.execute(
        SimpleStatement(
            f"SELECT view_id, try_number FROM {REBUILD_TABLE} WHERE view_name = %s AND run_id = %s",
            consistency_level=ConsistencyLevel.QUORUM,
        ),
        (view.name, run_id),
        timeout=30,
    ).one()
    return None if row is None else Rebuilt(row.view_id, row.try_number)


def _record_rebuild(session: Session, view: View, run_id: str, rebuilt: Rebuilt) -> None:
    session.execute(
        SimpleStatement(
            f"INSERT INTO {REBUILD_TABLE} (view_name, run_id, view_id, try_number, created_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            consistency_level=ConsistencyLevel.QUORUM,
        ),
        (view.name, run_id, rebuilt.view_id, rebuilt.try_number, datetime.now(UTC)),
        timeout=30,
    )


def _reset_cursors(session: Session, view: View) -> None:
    session.execute(
        SimpleStatement(
            f"DELETE FROM {CURSOR_TABLE} WHERE view_name = %s",
            consistency_level=ConsistencyLevel.QUORUM,
        ),
        (view.name,),
        timeout=30,
    )


@dataclass
class RebuildResult:
    audit: ViewAudit
    kept: bool  # the view an earlier try of the same run created was kept, not dropped again
    view_id: uuid.UUID | None


def rebuild_view(
    cluster: Cluster,
    session: Session,
    topology: Topology,
    view: View,
    *,
    run_id: str,
    try_number: int = 1,
    timeout: float = 900,
    poll: float = 1.0,
    rows: int = 5000,
    settle: float = 5.0,
    progress: Callable[[str], None] = log.info,
) -> RebuildResult:
    """Drop ``view`` and recreate it from the migration's DDL (unless an earlier try of
    ``run_id`` did: then keep it), wait until every node reports it built, and audit it from
    the ring's start. ``timeout`` counts from the start of this try, the drop and create
    included; past it, :class:`ViewError` (a retry of the run keeps the view and waits on)."""
    deadline = time.monotonic() + timeout
    earlier = rebuilt_by(session, view, run_id)
    current = view_id(session, view)
    kept = earlier is not None and current == earlier.view_id
    if kept:
        assert earlier is not None
        progress(
            f"kept {view.keyspace}.{view.name} (id {current}): try {earlier.try_number} of this "
            "run recreated it; waiting for its build instead of dropping it again"
        )
    else:
        progress(f"dropping {view.keyspace}.{view.name}")
        session.execute(
            f"DROP MATERIALIZED VIEW IF EXISTS {view.keyspace}.{view.name}", timeout=120
        )
        _agree(cluster, f"dropping {view.name}")
        progress(f"recreating {view.keyspace}.{view.name} from its migration's DDL")
        session.execute(view.ddl.strip().rstrip(";"), timeout=120)
        # Recorded before anything else can fail: a retry must find it. (Only a crash between
        # the CREATE and this write makes a retry drop the new view again.)
        current = _created_id(session, view)
        _record_rebuild(session, view, run_id, Rebuilt(current, try_number))
        _reset_cursors(session, view)  # a new view: its passes start afresh
        progress(f"recreated {view.name} with id {current}")
        _agree(cluster, f"creating {view.name}")
        if time.monotonic() > deadline:
            raise ViewError(
                f"the {timeout:.0f}s deadline passed while recreating {view.name}; its build goes "
                "on, and a retry of this run waits for it without dropping the view"
            )
    last = None
    while True:
        status = build_status(session, cluster, topology, view)
        built = [n for n, s in status.items() if s == BUILT]
        if status != last:
            progress(
                f"{view.name} built on {len(built)}/{len(status)} nodes: "
                + ", ".join(f"{n} {s}" for n, s in sorted(status.items()))
            )
            last = status
        if len(built) == len(status):
            break
        if time.monotonic() > deadline:
            raise ViewError(
                f"{view.name} not built on {', '.join(sorted(set(status) - set(built)))} within "
                f"{timeout:.0f}s; a retry of this run waits on without dropping it (look at "
                "those nodes' logs, ViewBuilder, and `nodetool viewbuildstatus`)"
            )
        time.sleep(poll)
    audit = audit_view(cluster, session, topology, view, rows=rows, settle=settle, run_id=run_id)
    progress(audit.summary())
    if not audit.consistent:
        raise ViewError(
            f"{view.name} is built on every node but differs from its base table "
            f"({audit.summary()}); run a repair of {view.keyspace}, then a retry of this run "
            "audits it again without dropping it"
        )
    return RebuildResult(audit, kept, current)
