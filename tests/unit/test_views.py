"""The rotating view audit without servers: slicing the ring, the cursor between runs, the
classification of mismatches, the settle rule on a live stream, and a retried rebuild."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from retail.catalog import catalog
from retail.ops import views
from retail.ops.views import (
    BASE,
    DIFFERING,
    MAX_TOKEN,
    MIN_TOKEN,
    MISSING,
    ORPHAN,
    RING,
    VIEW,
    Cursor,
    Row,
    base_mismatches,
    compare,
    ring_fraction,
    ring_ranges,
    take_slice,
    view_orphans,
)
from retail_airflow.operators.views import _params, audit_rows, settle, timeout

COLUMNS = ("customer_id", "order_id", "total")


def token(i: int, n: int = 1000) -> int:
    """The i-th of n tokens spread evenly over the ring."""
    return MIN_TOKEN + (i + 1) * (RING // (n + 1))


def order(i: int, customer: str | None = "c0", total: int = 10) -> Row:
    """A base row of order i (a partition of one row, like retail.orders)."""
    oid = f"o{i:04d}"
    return Row(token(i), (oid,), (customer, oid), (customer, oid, total))


def as_view(b: Row) -> Row:
    """The view row of base row ``b`` (its token in the view's ring: by customer)."""
    return Row(token(int(b.view_key[0][1:]) * 7 % 1000), b.key, b.view_key, b.values)


class Fake:
    """A base table and its view in memory. View writes can be held back (``lag``): they land
    when the audit sleeps, as a live cluster's asynchronous view updates would."""

    def __init__(self, base: Sequence[Row]) -> None:
        self.base = {b.key: b for b in base}
        self.view = {b.view_key: as_view(b) for b in base if b.in_view}
        self.pending: list[Callable[[], None]] = []
        self.view_partition_reads = 0
        self.base_read: list[tuple] = []
        self.slept: list[float] = []

    # the stream
    def write(self, b: Row, *, lag: bool = False) -> None:
        old = self.base.get(b.key)
        self.base[b.key] = b

        def to_view() -> None:
            if old is not None:
                self.view.pop(old.view_key, None)
            self.view[b.view_key] = as_view(b)

        self.pending.append(to_view) if lag else to_view()

    def delete(self, key: tuple, *, lag: bool = False) -> None:
        old = self.base.pop(key)

        def to_view() -> None:
            self.view.pop(old.view_key, None)

        self.pending.append(to_view) if lag else to_view()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        for apply in self.pending:
            apply()
        self.pending.clear()

    # Source
    def _range(self, rows: Any, start: int, end: int) -> Iterator[Row]:
        yield from sorted((r for r in rows if start < r.token <= end), key=lambda r: r.token)

    def base_range(self, start: int, end: int) -> Iterator[Row]:
        for r in self._range(self.base.values(), start, end):
            self.base_read.append(r.key)
            yield r

    def view_range(self, start: int, end: int) -> Iterator[Row]:
        return self._range(self.view.values(), start, end)

    def view_rows(self, rows: Sequence[Row]) -> dict[tuple, Row]:
        self.view_partition_reads += len({r.view_key[:1] for r in rows})
        return {r.view_key: self.view[r.view_key] for r in rows if r.view_key in self.view}

    def base_rows(self, rows: Sequence[Row]) -> dict[tuple, Row]:
        return {r.key: self.base[r.key] for r in rows if r.key in self.base}


def run(fake: Fake, cursors: dict[str, Cursor], rows: int = 1000) -> tuple[Any, dict]:
    return compare(fake, cursors, rows=rows, settle=5, columns=COLUMNS, sleep=fake.sleep)


FRESH = {BASE: Cursor(), VIEW: Cursor()}


# --- the ring ---------------------------------------------------------------------------------


def test_the_ring_is_read_from_the_cursor_to_its_end_then_from_its_start() -> None:
    assert ring_ranges(MIN_TOKEN) == [(MIN_TOKEN, MAX_TOKEN)]
    assert ring_ranges(42) == [(42, MAX_TOKEN), (MIN_TOKEN, 42)]
    assert ring_fraction(MIN_TOKEN, 0) == 0.5
    assert ring_fraction(2**62, -(2**62)) == 0.5  # going round the end
    assert ring_fraction(7, 7) == 0.0


def test_a_slice_stops_at_its_budget_between_two_partitions() -> None:
    # Three rows share each token: one partition of three rows.
    rows = [Row(token(i // 3), (i,), (i,), (i,)) for i in range(30)]

    def read(lo: int, hi: int) -> Iterator[Row]:
        return iter([r for r in rows if lo < r.token <= hi])

    s = take_slice(read, MIN_TOKEN, 4)
    assert [r.key[0] for r in s.rows] == [0, 1, 2, 3, 4, 5]  # the second partition whole
    assert (s.stop, s.wrapped, s.whole) == (token(1), False, False)
    # The next run goes on from there, wraps at the ring's end and stops where it started.
    rest = take_slice(read, s.stop, 100)
    assert [r.key[0] for r in rest.rows] == list(range(6, 30)) + list(range(6))
    assert (rest.wrapped, rest.whole, rest.fraction) == (True, True, 1.0)


def test_rotating_runs_cover_every_row_once_per_pass_at_a_bounded_cost() -> None:
    fake = Fake([order(i, f"c{i % 13}") for i in range(100)])
    cursors = FRESH
    audits = []
    for _ in range(4):
        fake.base_read.clear()
        audit, cursors = run(fake, cursors, rows=30)
        assert len(fake.base_read) <= 31  # the budget, and one row read ahead
        audits.append(audit)
    # The fourth run ends the pass and goes on into the next one with the rest of its budget.
    assert [a.sampled_base for a in audits] == [30, 30, 30, 30]
    assert all(a.consistent for a in audits)
    assert cursors[BASE].passes == 1 and audits[-1].rings[BASE]["passes_completed_this_run"] == 1
    assert cursors[BASE].after == token(19)
    assert audits[0].rings[BASE]["pass_covered"] == pytest.approx(30 / 1001, rel=0.01)
    # Each view partition is read once per run, however many of its rows the slice holds.
    fake.view_partition_reads = 0
    run(fake, FRESH, rows=1000)
    assert fake.view_partition_reads == 13


# --- the cursor -------------------------------------------------------------------------------


def test_a_cursor_advances_and_counts_a_pass_when_it_wraps() -> None:
    c = Cursor(after=-5, passes=2, pass_found=1, last_pass_found=4)
    s = views.Slice(start=-5, stop=10, rows=[], wrapped=False, whole=False)
    assert c.advanced(s, [3]) == Cursor(10, 2, 2, 4)
    # Past the end of the ring: what was found before the wrap belongs to the pass that ended.
    wrapped = views.Slice(start=100, stop=-100, rows=[], wrapped=True, whole=False)
    assert c.advanced(wrapped, [200, 300, -200]) == Cursor(-100, 3, 1, 3)
    # The whole ring in one run from the ring's start: one pass, everything in it.
    whole = views.Slice(start=MIN_TOKEN, stop=MIN_TOKEN, rows=[], wrapped=True, whole=True)
    assert Cursor().advanced(whole, [5]) == Cursor(MIN_TOKEN, 1, 0, 1)


def test_a_mismatch_stays_reported_until_a_whole_pass_finds_none() -> None:
    fake = Fake([order(i, f"c{i % 5}") for i in range(40)])
    fake.view.pop(fake.base[("o0005",)].view_key)  # early in the ring
    first, cursors = run(fake, FRESH, rows=20)
    assert not first.consistent and first.missing_rows == 1
    fake.view[fake.base[("o0005",)].view_key] = as_view(fake.base[("o0005",)])  # repaired
    later = []
    for _ in range(4):  # two runs a pass
        audit, cursors = run(fake, cursors, rows=20)
        later.append(audit.consistent)
    # The pass that found it ends with the second run; the next one finds none: clean when it
    # ends, not before (a mismatch elsewhere in the ring may not have been read again yet).
    assert later == [False, False, True, True]


# --- mismatches -------------------------------------------------------------------------------


def test_mismatches_are_missing_differing_or_orphans() -> None:
    a, b, c, nokey = order(1), order(2), order(3), order(4, customer=None)
    view = {a.view_key: as_view(a), b.view_key: as_view(order(2, total=99))}
    got = base_mismatches([a, b, c, nokey], view)
    assert [(m.kind, m.base.key) for m in got] == [(DIFFERING, ("o0002",)), (MISSING, ("o0003",))]
    moved = order(5, customer="c9")  # the base row's customer changed: its old view row is stale
    stale, gone = as_view(order(5, customer="c0")), as_view(order(6))
    got = view_orphans([as_view(a), stale, gone], {a.key: a, moved.key: moved})
    assert [(m.kind, m.view.key) for m in got] == [(ORPHAN, ("o0005",)), (ORPHAN, ("o0006",))]


def test_view_writes_in_flight_are_settled_not_reported() -> None:
    fake = Fake([order(i, f"c{i % 7}") for i in range(50)])
    fake.write(order(60, "c3"), lag=True)  # new: not in the view yet
    fake.write(order(10, "c9"), lag=True)  # moved to another customer: old view row stays
    fake.delete(("o0020",), lag=True)  # deleted: its view row stays a moment
    audit, cursors = run(fake, FRESH)
    assert fake.slept == [5]
    assert audit.consistent, audit.summary()
    assert audit.settled == 4  # o0060 and o0010 missing, o0010's and o0020's view rows orphans
    assert (cursors[BASE].found, cursors[VIEW].found) == (0, 0)


def test_a_view_that_really_lacks_rows_is_reported_after_the_recheck() -> None:
    fake = Fake([order(i, f"c{i % 7}") for i in range(50)])
    fake.view.pop(order(8, "c1").view_key)  # gone for good
    fake.view[("c2", "o0999")] = as_view(order(999, "c2"))  # a view row with no base row
    fake.write(order(61, "c3"), lag=True)  # in flight: settles
    audit, cursors = run(fake, FRESH)
    assert not audit.consistent
    assert [m["order_id"] for m in audit.missing] == ["o0008"]
    assert [m["order_id"] for m in audit.orphans] == ["o0999"]
    assert (audit.base_rows, audit.view_rows, audit.missing_rows, audit.settled) == (51, 50, 1, 1)
    assert (cursors[BASE].found, cursors[VIEW].found) == (1, 1)
    assert audit.to_dict()["missing_examples"] == [
        {"customer_id": "c1", "order_id": "o0008", "total": 10}
    ]


def test_an_agreeing_slice_is_not_read_twice_and_does_not_wait() -> None:
    fake = Fake([order(i) for i in range(10)])
    audit, _ = run(fake, FRESH)
    assert audit.consistent and fake.slept == []


def test_the_view_rows_are_the_base_rows_with_a_customer() -> None:
    view = catalog().view("orders_by_customer")
    assert views.key_filter_columns(view, ["order_id"]) == ["customer_id"]


# --- params -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "value"),
    [(audit_rows, 0), (audit_rows, "lots"), (settle, -1), (timeout, 99999), (audit_rows, True)],
)
def test_a_bad_param_fails_the_task_at_once_with_the_reason(check: Any, value: Any) -> None:
    with pytest.raises(AirflowFailException, match="must be"):
        _params(lambda: check(value))


def test_rendered_params_are_read_as_numbers() -> None:
    assert (audit_rows("250"), settle("5"), timeout("0")) == (250, 5.0, 0.0)


# --- a retried rebuild ------------------------------------------------------------------------


class FakeSession:
    def __init__(self) -> None:
        self.ddl: list[str] = []

    def execute(self, cql: Any, *args: Any, **kwargs: Any) -> None:
        self.ddl.append(str(cql).split()[0])


class FakeCluster:
    class control_connection:  # the driver's attribute name
        @staticmethod
        def wait_for_schema_agreement(wait_time: float) -> bool:
            return True


def test_a_retry_keeps_the_view_its_first_try_recreated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first try recreates the view and fails its deadline; the second try of the same run
    finds the view with the id it recorded and waits on, without a DROP."""
    view = catalog().view("orders_by_customer")
    schema = {"id": uuid.uuid4()}  # the view as system_schema.views has it
    records: dict[tuple, views.Rebuilt] = {}

    def create(session: Any, v: Any) -> uuid.UUID:
        return schema["id"]

    monkeypatch.setattr(views, "view_id", create)
    monkeypatch.setattr(views, "rebuilt_by", lambda s, v, run: records.get((v.name, run)))
    monkeypatch.setattr(
        views, "_record_rebuild", lambda s, v, run, r: records.__setitem__((v.name, run), r)
    )
    monkeypatch.setattr(views, "_reset_cursors", lambda s, v: None)
    built = {"n1": "STARTED"}
    monkeypatch.setattr(views, "build_status", lambda *a: dict(built))
    monkeypatch.setattr(
        views, "audit_view", lambda *a, **k: views.ViewAudit(view.name, "orders", True, 3, 3)
    )
    session = FakeSession()
    original = session.execute

    def execute(cql: Any, *args: Any, **kwargs: Any) -> None:
        if str(cql).startswith("CREATE"):
            schema["id"] = uuid.uuid4()  # a new view, a new id
        original(cql, *args, **kwargs)

    session.execute = execute  # type: ignore[method-assign]
    first_id = None
    with pytest.raises(views.ViewError, match="deadline passed while recreating"):
        views.rebuild_view(FakeCluster(), session, None, view, run_id="r1", timeout=0, poll=0)  # type: ignore[arg-type]
    first_id = schema["id"]
    assert session.ddl == ["DROP", "CREATE"]
    assert records[(view.name, "r1")] == views.Rebuilt(first_id, 1)

    built["n1"] = "SUCCESS"
    result = views.rebuild_view(
        FakeCluster(),
        session,
        None,
        view,
        run_id="r1",
        try_number=2,
        timeout=0,
        poll=0,  # type: ignore[arg-type]
    )
    assert session.ddl == ["DROP", "CREATE"]  # nothing dropped again
    assert (result.kept, result.view_id, schema["id"]) == (True, first_id, first_id)
    assert records[(view.name, "r1")].try_number == 1
    # Another run rebuilds again: its own drop and create.
    views.rebuild_view(FakeCluster(), session, None, view, run_id="r2", poll=0)  # type: ignore[arg-type]
    assert session.ddl == ["DROP", "CREATE"] * 2 and schema["id"] != first_id
