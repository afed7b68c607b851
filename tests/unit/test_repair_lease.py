"""The repair lease and a retry's leftover check: the pure logic of retail.ops.repair, against
an in-memory model of the lease table (lightweight transactions, TTL per renewal) and a scripted
Jolokia."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cassandra import OperationTimedOut

from retail.ops import repair, repair_lease
from retail.ops.repair import RepairError, RepairStep, TokenRange
from retail.ops.repair_lease import (
    FREE,
    MINE,
    TAKE_OVER,
    WAIT,
    Claim,
    Holder,
    InFlight,
    LeaseHeld,
    LeaseLost,
)
from retail.topology import build_topology

TOPOLOGY = build_topology(1)
T0 = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
RUN = "replication_repair/manual__2026-11-30/repair"
OTHER = "replication_repair/scheduled__2026-11-29/repair"


class Clock:
    """A monotonic clock and wall clock that only move when something sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t)


class MemoryLeases:
    """``repair_lease`` as Cassandra keeps it: each write's TTL counts from that write; the
    conditions are checked against the live row (what Paxos guarantees)."""

    def __init__(self, clock: Clock, ttl: int = 300) -> None:
        self.clock = clock
        self.ttl = ttl
        self.rows: dict[str, tuple[Holder, float]] = {}  # keyspace -> (holder, expires at)
        self.fail_renewals = 0

    def _live(self, keyspace: str) -> Holder | None:
        row = self.rows.get(keyspace)
        if row is None or row[1] <= self.clock():
            self.rows.pop(keyspace, None)
            return None
        return row[0]

    def insert(self, keyspace: str, claim: Claim, scope: str, now: datetime) -> Holder | None:
        holder = self._live(keyspace)
        if holder is not None:
            return holder
        self.rows[keyspace] = (
            Holder(claim.owner, claim.try_number, now, now, scope),
            self.clock() + self.ttl,
        )
        return None

    def renew(
        self,
        keyspace: str,
        claim: Claim,
        scope: str,
        now: datetime,
        *,
        acquired_at: datetime,
        expect: Claim | None = None,
    ) -> bool:
        if self.fail_renewals:
            self.fail_renewals -= 1
            raise OperationTimedOut("timed out")
        expect = expect or claim
        holder = self._live(keyspace)
        if holder is None or (holder.owner, holder.try_number) != (
            expect.owner,
            expect.try_number,
        ):
            return False
        self.rows[keyspace] = (
            Holder(claim.owner, claim.try_number, acquired_at, now, scope),
            self.clock() + self.ttl,
        )
        return True

    def release(self, keyspace: str, claim: Claim) -> bool:
        holder = self._live(keyspace)
        if holder is None or (holder.owner, holder.try_number) != (claim.owner, claim.try_number):
            return False
        del self.rows[keyspace]
        return True


def _lease(
    store: MemoryLeases, claim: Claim, clock: Clock, lines: list[str], wait: float = 60
) -> repair_lease.Lease:
    return repair_lease.Lease(
        store,  # type: ignore[arg-type]
        "retail",
        claim,
        "primary_range",
        wait_seconds=wait,
        poll_seconds=15,
        heartbeat_seconds=3600,  # beats are driven by hand in these tests
        say=lines.append,
        clock=clock,
        sleep=clock.sleep,
        now=clock.now,
    )


# -- who may take the lease -----------------------------------------------------------------------


def test_decide_free_mine_take_over_and_wait() -> None:
    me = Claim(RUN, 2)
    assert repair_lease.decide(me, None) == FREE
    assert repair_lease.decide(me, Holder(RUN, 2, T0, T0, "primary_range")) == MINE
    # The earlier try of this task instance is over (Airflow runs one try at a time).
    assert repair_lease.decide(me, Holder(RUN, 1, T0, T0, "primary_range")) == TAKE_OVER
    assert repair_lease.decide(me, Holder(OTHER, 1, T0, T0, "primary_range")) == WAIT
    # A later try holds it: this try is a zombie and must not take it back.
    assert repair_lease.decide(me, Holder(RUN, 3, T0, T0, "primary_range")) == WAIT


def test_the_owner_is_the_task_instance_and_the_try_is_kept_apart() -> None:
    class TI:
        dag_id, run_id, task_id, map_index, try_number = "d", "r", "t", -1, 3

    assert Claim.of({"ti": TI()}) == Claim("d/r/t", 3)
    TI.map_index = 2
    assert Claim.of({"ti": TI()}) == Claim("d/r/t[2]", 3)


# -- waiting for it ------------------------------------------------------------------------------


def test_a_held_lease_is_waited_for_with_progress_then_refused_naming_holder_and_since() -> None:
    clock, lines = Clock(), []
    store = MemoryLeases(clock, ttl=10_000)
    store.insert("retail", Claim(OTHER, 1), "datacenter:eu-west", T0)
    lease = _lease(store, Claim(RUN, 1), clock, lines, wait=60)
    with pytest.raises(LeaseHeld) as err:
        lease.acquire()
    text = str(err.value)
    assert OTHER in text and "since 2026-11-30 05:00:00+00:00" in text
    assert "datacenter:eu-west" in text and "waited 60s" in text and "retry" in text
    assert len(lines) == 4 and all("waiting for the repair lease" in line for line in lines)
    assert lines[-1].endswith("[45s of at most 60s]")
    assert 60 <= clock.t <= 61  # bounded: no poll past the deadline
    assert store.rows["retail"][0].owner == OTHER  # the holder's lease untouched


def test_a_lease_released_while_waiting_is_taken() -> None:
    clock, lines = Clock(), []
    store = MemoryLeases(clock)
    other = Claim(OTHER, 1)
    store.insert("retail", other, "primary_range", T0)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.t >= 30:
            store.release("retail", other)

    lease = _lease(store, Claim(RUN, 1), clock, lines, wait=600)
    lease.sleep = sleep
    assert lease.acquire() is None
    assert store.rows["retail"][0].owner == RUN and clock.t == 30
    assert len(lines) == 2


def test_a_lease_whose_holder_died_is_free_after_its_ttl() -> None:
    clock, lines = Clock(), []
    store = MemoryLeases(clock, ttl=300)
    store.insert("retail", Claim(OTHER, 1), "primary_range", T0)  # and never renewed
    lease = _lease(store, Claim(RUN, 1), clock, lines, wait=900)
    lease.acquire()
    assert store.rows["retail"][0].owner == RUN and 300 <= clock.t < 320


def test_zero_wait_refuses_at_once() -> None:
    clock = Clock()
    store = MemoryLeases(clock)
    store.insert("retail", Claim(OTHER, 1), "primary_range", T0)
    with pytest.raises(LeaseHeld, match="waited 0s"):
        _lease(store, Claim(RUN, 1), clock, [], wait=0).acquire()


# -- holding it: renewal, take-over, release ---------------------------------------------------


def test_renewals_keep_the_lease_past_its_ttl() -> None:
    clock = Clock()
    store = MemoryLeases(clock, ttl=300)
    lease = _lease(store, Claim(RUN, 1), clock, [])
    lease.acquire()
    for _ in range(10):  # 10 minutes, twice the TTL
        clock.sleep(60)
        lease.beat()
    assert lease.lost is None
    assert store.insert("retail", Claim(OTHER, 1), "primary_range", clock.now()) is not None
    lease.check()
    held = store.rows["retail"][0]
    assert held.acquired_at == T0 and held.renewed_at == clock.now()


def test_a_retry_takes_over_its_earlier_try_which_then_stops_and_cannot_release_it() -> None:
    clock, lines = Clock(), []
    store = MemoryLeases(clock)
    first = _lease(store, Claim(RUN, 1), clock, [])
    first.acquire()
    clock.sleep(40)  # try 1 killed (execution_timeout) with its lease kept; retry 30 s later
    second = _lease(store, Claim(RUN, 2), clock, lines)
    taken = second.acquire()
    assert taken is not None and taken.try_number == 1
    assert lines == [f"retail: took the lease over from {taken.describe()}"]
    # A zombie try 1 that wakes up: its renewal fails, it stops before its next session...
    first.beat()
    with pytest.raises(LeaseLost, match="another owner holds it now"):
        first.check()
    # ... and its release does not free the retry's lease.
    assert first.release() is False
    held = store.rows["retail"][0]
    assert (held.owner, held.try_number) == (RUN, 2)
    assert second.release() is True and "retail" not in store.rows


def test_a_renewal_that_times_out_is_retried_until_the_lease_may_have_expired() -> None:
    clock = Clock()
    store = MemoryLeases(clock, ttl=300)
    lease = _lease(store, Claim(RUN, 1), clock, [])
    lease.heartbeat_seconds = 60
    lease.acquire()
    store.fail_renewals = 1
    clock.sleep(60)
    lease.beat(last_success=0.0)
    assert lease.lost is None  # one timeout, 60 s after the last renewal: try again
    store.fail_renewals = 5
    lease.beat(last_success=clock() - 250)  # the next beat would come after the TTL
    assert lease.lost is not None and "may have expired" in lease.lost
    with pytest.raises(LeaseLost):
        lease.check()


def test_only_the_owner_releases() -> None:
    clock = Clock()
    store = MemoryLeases(clock)
    store.insert("retail", Claim(OTHER, 1), "primary_range", T0)
    assert store.release("retail", Claim(RUN, 1)) is False
    assert "retail" in store.rows


def test_the_heartbeat_thread_renews_in_real_time() -> None:
    clock = time.monotonic
    store = MemoryLeases(Clock(), ttl=1)
    store.clock = clock  # type: ignore[assignment]
    lease = repair_lease.Lease(
        store,  # type: ignore[arg-type]
        "retail",
        Claim(RUN, 1),
        "primary_range",
        heartbeat_seconds=0.1,
    )
    lease.acquire()
    time.sleep(1.5)  # past the TTL of the first write
    assert store.insert("retail", Claim(OTHER, 1), "x", datetime.now(UTC)) is not None
    assert lease.release() is True


def test_a_take_over_that_keeps_failing_is_still_bounded() -> None:
    clock, lines = Clock(), []
    store = MemoryLeases(clock, ttl=10_000)
    store.insert("retail", Claim(RUN, 1), "primary_range", T0)
    store.renew = lambda *a, **k: False  # type: ignore[method-assign]  # lost every race
    lease = _lease(store, Claim(RUN, 2), clock, lines, wait=60)

    def sleep(seconds: float) -> None:
        assert clock.t < 3600, "acquire() did not give up"
        clock.sleep(seconds)

    lease.sleep = sleep
    with pytest.raises(LeaseHeld, match="waited 60s"):
        lease.acquire()


def test_the_heartbeat_gives_the_lease_up_when_renewals_keep_failing() -> None:
    store = MemoryLeases(Clock(), ttl=1)
    store.clock = time.monotonic  # type: ignore[assignment]
    lease = repair_lease.Lease(
        store,  # type: ignore[arg-type]
        "retail",
        Claim(RUN, 1),
        "primary_range",
        heartbeat_seconds=0.1,
    )
    lease.acquire()
    store.fail_renewals = 1000
    time.sleep(1.5)
    assert lease.lost is not None and "may have expired" in lease.lost
    with pytest.raises(LeaseLost):
        lease.check()
    lease.abandon()


# -- the session loop stops when the lease is lost -----------------------------------------------


class ScriptedJolokia:
    """Answers what the repair and the leftover check ask from a script per operation."""

    def __init__(self, **answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []

    def exec(self, node: Any, mbean: str, operation: str, *arguments: Any) -> Any:
        self.calls.append((node.name, operation, arguments))
        script = self.answers[operation]
        return script.pop(0) if len(script) > 1 else script[0]

    def ops(self) -> list[str]:
        return [op for _, op, _ in self.calls]


STEP = RepairStep("retail", "eu-west-1", TokenRange(0, 10), 1, 2)


def test_each_session_is_reported_when_started_and_none_starts_after_the_lease_is_lost() -> None:
    jolokia = ScriptedJolokia(repairAsync=[11, 12], getParentRepairStatus=[["COMPLETED"]])
    started: list[tuple[str, int]] = []
    checks = iter([None, LeaseLost("retail: lost")])

    def before() -> None:
        error = next(checks)
        if error:
            raise error

    steps = [STEP, replace(STEP, index=2)]
    with pytest.raises(LeaseLost):
        repair.run(
            jolokia,  # type: ignore[arg-type]
            TOPOLOGY,
            steps,
            before_step=before,
            on_start=lambda step, command: started.append((step.node, command)),
            sleep=lambda _: None,
        )
    assert started == [("eu-west-1", 11)]
    assert jolokia.ops().count("repairAsync") == 1


# -- a retry and what the failed try left running ------------------------------------------------

LEFT = InFlight(RUN, 1, "retail", "us-east-1", 42, T0, "us-east-1: retail subrange 3/4 (0, 10]")


def _settle(jolokia: ScriptedJolokia, left: InFlight | None, **kwargs: Any) -> dict[str, Any]:
    clock = Clock()
    lines: list[str] = []
    found = repair_lease.settle_leftovers(
        jolokia,  # type: ignore[arg-type]
        TOPOLOGY,
        left,
        poll_seconds=10,
        say=lines.append,
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )
    found["lines"] = lines
    return found


def test_a_retry_waits_for_the_session_its_failed_try_left_running() -> None:
    jolokia = ScriptedJolokia(
        parentRepairSessionsCount=[0, 2, 1],
        getParentRepairStatus=[["IN_PROGRESS"], ["IN_PROGRESS"], ["COMPLETED", "done"]],
    )
    found = _settle(jolokia, LEFT, timeout=600)
    assert found["sessions"] == {"eu-west-1": 0, "us-east-1": 2, "ap-southeast-1": 1}
    assert found["outcome"] == "waited: completed"
    assert found["lines"][0] == (
        "repair sessions on the nodes before this retry: eu-west-1: 0, us-east-1: 2, "
        "ap-southeast-1: 1"
    )
    assert sum("waiting for repair #42" in line for line in found["lines"]) == 2
    assert {n for n, op, _ in jolokia.calls if op == "getParentRepairStatus"} == {"us-east-1"}
    assert "forceTerminateAllRepairSessions" not in jolokia.ops()


def test_a_left_session_still_running_at_the_bound_is_terminated_on_its_coordinator() -> None:
    jolokia = ScriptedJolokia(
        parentRepairSessionsCount=[1],
        getParentRepairStatus=[["IN_PROGRESS"]] * 8 + [["FAILED", "Terminate session is called"]],
        forceTerminateAllRepairSessions=[None],
    )
    found = _settle(jolokia, LEFT, timeout=60)
    assert found["outcome"] == "terminated"
    terminated = [(n, op) for n, op, _ in jolokia.calls if op == "forceTerminateAllRepairSessions"]
    assert terminated == [("us-east-1", "forceTerminateAllRepairSessions")]
    assert any(
        line.startswith("terminating the repair sessions us-east-1") for line in found["lines"]
    )


def test_without_terminate_a_left_session_still_running_fails_the_retry() -> None:
    jolokia = ScriptedJolokia(
        parentRepairSessionsCount=[0], getParentRepairStatus=[["IN_PROGRESS"]]
    )
    with pytest.raises(RepairError, match=r"#42 left running by try 1 .* still running after 60s"):
        _settle(jolokia, LEFT, timeout=60, terminate=False)
    assert "forceTerminateAllRepairSessions" not in jolokia.ops()


def test_a_session_the_node_forgot_is_over() -> None:
    jolokia = ScriptedJolokia(parentRepairSessionsCount=[0], getParentRepairStatus=[None])
    assert _settle(jolokia, LEFT)["outcome"] == "unknown"


def test_unknown_sessions_are_waited_for_but_never_terminated() -> None:
    jolokia = ScriptedJolokia(parentRepairSessionsCount=[1])  # never ends
    found = _settle(jolokia, None, timeout=30)
    assert found["outcome"] == "others still running"
    assert "forceTerminateAllRepairSessions" not in jolokia.ops()
    assert found["lines"][-1].startswith("still running, not known to be this task's")
    quiet = _settle(ScriptedJolokia(parentRepairSessionsCount=[0]), None)
    assert quiet["outcome"] == "none" and len(quiet["lines"]) == 1
