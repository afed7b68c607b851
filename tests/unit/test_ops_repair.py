"""Replication drift and repair planning: the pure logic of retail.ops.replication / .repair."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from retail.metrics import MemoryMetrics
from retail.ops import repair, replication
from retail.ops.repair import MIN_TOKEN, RING_SIZE, RepairError, RepairStep, TokenRange
from retail.topology import Topology, build_topology

TOPOLOGY = build_topology(1)  # the test profile: one node per DC, RF 1 in each
DEMO = build_topology(2)  # two nodes per DC, RF 2 in each


# -- replication drift ----------------------------------------------------------------------------


def test_live_replication_equal_to_the_topology_is_no_drift() -> None:
    live = {
        "class": "org.apache.cassandra.locator.NetworkTopologyStrategy",
        "ap-southeast": "1",
        "eu-west": "1",
        "us-east": "1",
    }
    drift = replication.compare("retail", live, TOPOLOGY)
    assert not drift.drifted
    assert drift.to_dict()["differences"] == []


def test_a_missing_dc_and_another_strategy_are_drift_with_what_differs() -> None:
    live = {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "eu-west": "1"}
    drift = replication.compare("retail_ops", live, TOPOLOGY)
    assert drift.drifted and drift.fixable
    assert drift.differences() == [
        "ap-southeast: RF 0 live, 1 wanted",
        "us-east: RF 0 live, 1 wanted",
    ]
    simple = {"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "1"}
    assert replication.compare("system_auth", simple, TOPOLOGY).differences() == [
        "SimpleStrategy {replication_factor: 1} live, NetworkTopologyStrategy "
        "{ap-southeast: 1, eu-west: 1, us-east: 1} wanted"
    ]


def test_a_dc_with_factor_zero_counts_as_absent() -> None:
    live = dict(TOPOLOGY.replication()) | {"mars": 0}
    assert not replication.compare("retail", live, TOPOLOGY).drifted


def test_a_missing_keyspace_is_drift_that_no_alter_can_fix() -> None:
    drift = replication.compare("retail", None, TOPOLOGY)
    assert drift.drifted and not drift.fixable
    with pytest.raises(replication.ReplicationError, match="schema_migrations"):
        replication.alter_statement(drift, TOPOLOGY, ["retail"])


def test_the_alter_comes_from_the_topology_and_only_for_platform_keyspaces() -> None:
    drift = replication.compare("retail_ops", {"class": "SimpleStrategy", "rf": "1"}, DEMO)
    allowed = replication.platform_keyspaces(["retail", "retail_ops"])
    assert allowed == ("retail", "retail_ops", "system_auth", "system_distributed")
    assert replication.alter_statement(drift, DEMO, allowed) == (
        "ALTER KEYSPACE \"retail_ops\" WITH replication = {'class': "
        "'NetworkTopologyStrategy', 'eu-west': 2, 'us-east': 2, 'ap-southeast': 2}"
    )
    evil = replication.Drift('x" WITH durable_writes = false; --', {}, {"class": "N"})
    with pytest.raises(replication.ReplicationError, match="not one of the platform"):
        replication.alter_statement(evil, DEMO, allowed)


# -- rails on replication changes ----------------------------------------------------------------

NTS = "org.apache.cassandra.locator.NetworkTopologyStrategy"


def test_a_fix_that_adds_replicas_is_no_decrease() -> None:
    live = {"class": NTS, "eu-west": "1", "us-east": "1"}
    drift = replication.compare("retail_ops", live, TOPOLOGY)
    assert replication.decreases(drift) == []
    replication.refuse_decreases([drift])  # nothing raised
    assert replication.alter_statement(drift, TOPOLOGY, ["retail_ops"]).startswith("ALTER")


def test_a_fix_that_removes_a_dc_or_lowers_a_factor_is_refused_with_what_and_the_param() -> None:
    # A DC the topology does not have (retired, or a typo in the topology) and a factor above
    # the topology's: the fix would drop every replica in "mars" and one in eu-west.
    live = {"class": NTS, "eu-west": "2", "us-east": "1", "ap-southeast": "1", "mars": "3"}
    drift = replication.compare("retail", live, TOPOLOGY)
    assert replication.decreases(drift) == [
        "eu-west: RF 2 -> 1",
        "mars: RF 3 -> 0 (DC removed)",
    ]
    with pytest.raises(replication.ReplicationDecreaseRefused) as err:
        replication.alter_statement(drift, TOPOLOGY, ["retail"])
    text = str(err.value)
    assert "retail: eu-west: RF 2 -> 1, mars: RF 3 -> 0 (DC removed)" in text
    assert "allow_replication_decrease=true" in text and "nothing was altered" in text
    assert replication.alter_statement(drift, TOPOLOGY, ["retail"], allow_decrease=True) == (
        "ALTER KEYSPACE \"retail\" WITH replication = {'class': 'NetworkTopologyStrategy', "
        "'eu-west': 1, 'us-east': 1, 'ap-southeast': 1}"
    )


def test_every_keyspace_is_checked_before_any_is_altered() -> None:
    fine = replication.compare("retail", {"class": NTS, "eu-west": "1"}, TOPOLOGY)
    lowered = replication.compare("retail_ops", dict(DEMO.replication()), TOPOLOGY)
    missing = replication.compare("system_auth", None, TOPOLOGY)
    with pytest.raises(replication.ReplicationDecreaseRefused) as err:
        replication.refuse_decreases([fine, lowered, missing])
    text = str(err.value)
    assert "retail_ops: ap-southeast: RF 2 -> 1, eu-west: RF 2 -> 1" in text
    assert "retail:" not in text and "system_auth" not in text
    replication.refuse_decreases([fine, lowered, missing], allow_decrease=True)


def test_from_simple_strategy_only_fewer_replicas_in_total_is_a_decrease() -> None:
    simple = "org.apache.cassandra.locator.SimpleStrategy"
    # Cassandra's default for system_auth: one replica somewhere; the topology wants one per DC.
    one = replication.compare("system_auth", {"class": simple, "replication_factor": 1}, TOPOLOGY)
    assert replication.decreases(one) == []
    five = replication.compare("system_auth", {"class": simple, "replication_factor": 5}, TOPOLOGY)
    assert replication.decreases(five) == ["3 replicas in all, 5 before"]


def test_a_transient_factor_counts_its_full_replicas() -> None:
    live = {"class": NTS, "eu-west": "3/1", "us-east": "1", "ap-southeast": "1"}
    drift = replication.compare("retail", live, TOPOLOGY)
    assert replication.decreases(drift) == ["eu-west: RF 3 -> 1"]


# -- token ranges -------------------------------------------------------------------------------


def _covered(pieces: list[TokenRange]) -> int:
    return sum(p.size for p in pieces)


def test_split_gives_contiguous_pieces_of_nearly_equal_size_covering_the_range() -> None:
    rng = TokenRange(-100, 1000)
    pieces = repair.split(rng, 4)
    assert [p.start for p in pieces[1:]] == [p.end for p in pieces[:-1]]
    assert pieces[0].start == -100 and pieces[-1].end == 1000
    assert _covered(pieces) == rng.size
    assert max(p.size for p in pieces) - min(p.size for p in pieces) <= 1


def test_split_cuts_a_piece_that_would_wrap_at_the_end_of_the_ring() -> None:
    rng = TokenRange(2**62, -(2**62))  # wraps: half the ring, across the end
    pieces = repair.split(rng, 3)
    assert _covered(pieces) == rng.size == RING_SIZE // 2
    assert len(pieces) == 4
    assert all(p.start < p.end or p.end == MIN_TOKEN for p in pieces)
    assert TokenRange(pieces[1].start, MIN_TOKEN) in pieces


def test_split_never_makes_empty_pieces_and_refuses_zero() -> None:
    assert repair.split(TokenRange(0, 3), 10) == [
        TokenRange(0, 1),
        TokenRange(1, 2),
        TokenRange(2, 3),
    ]
    with pytest.raises(ValueError):
        repair.split(TokenRange(0, 3), 0)


# Jolokia's rendering of getRangeToEndpointWithPortMap("retail") on the 3-node test stack.
LIVE_MAP = {
    "[-9223372036854775808, -9223372036854775708]": [
        "127.0.2.1:7000",
        "127.0.3.1:7000",
        "127.0.1.1:7000",
    ],
    "[-9223372036854775608, -9223372036854775808]": [
        "127.0.1.1:7000",
        "127.0.2.1:7000",
        "127.0.3.1:7000",
    ],
    "[-9223372036854775708, -9223372036854775608]": [
        "127.0.3.1:7000",
        "127.0.1.1:7000",
        "127.0.2.1:7000",
    ],
}


def test_primary_ranges_are_those_a_node_is_first_replica_of() -> None:
    ranges = repair.parse_range_map(LIVE_MAP)
    assert repair.primary_ranges(ranges, "127.0.1.1") == [
        TokenRange(-9223372036854775608, MIN_TOKEN)
    ]
    assert repair.primary_ranges(ranges, "127.0.2.1") == [
        TokenRange(MIN_TOKEN, -9223372036854775708)
    ]
    # Within one DC, its only node is the first replica of every range.
    assert len(repair.primary_ranges(ranges, "127.0.2.1", ["127.0.2.1"])) == 3
    every = [r for n in TOPOLOGY.nodes for r in repair.primary_ranges(ranges, n.address)]
    assert sorted(every) == sorted(ranges)  # each range exactly once: -pr on every node


def test_a_primary_range_plan_repairs_every_node_in_subranges_full_and_for_one_table() -> None:
    ranges = repair.parse_range_map(LIVE_MAP)
    steps = repair.plan(
        "retail", ranges, TOPOLOGY, scope="primary_range", subranges=3, tables=["orders"]
    )
    assert [s.node for s in steps] == [n.name for n in TOPOLOGY.nodes for _ in range(3)]
    assert [(s.index, s.of) for s in steps[:3]] == [(1, 3), (2, 3), (3, 3)]
    assert _covered([s.range for s in steps]) == RING_SIZE
    options = steps[0].options()
    assert options == {
        "incremental": "false",
        "parallelism": "parallel",
        "primaryRange": "true",
        "ranges": f"{steps[0].range.start}:{steps[0].range.end}",
        "columnFamilies": "orders",
    }


def _nts_map(topology: Topology) -> dict[TokenRange, list[str]]:
    """NetworkTopologyStrategy's placement, as Cassandra lists it: walking the ring clockwise
    from a range's end, the first ``RF`` nodes of each DC, in the order they are met."""
    ring = sorted((n.token, n) for n in topology.nodes)
    rf = {dc.name: dc.replication_factor for dc in topology.datacenters}
    out = {}
    for i, (token, _) in enumerate(ring):
        replicas: list[str] = []
        for _, node in ring[i:] + ring[:i]:
            if sum(topology.node(r).dc == node.dc for r in replicas) < rf[node.dc]:
                replicas.append(node.address)
        out[TokenRange(ring[i - 1][0], token)] = replicas
    return out


def test_a_datacenter_plan_stays_inside_the_dc_and_covers_the_ring_once() -> None:
    ranges = _nts_map(DEMO)
    steps = repair.plan("retail", ranges, DEMO, scope="datacenter", dc="us-east", subranges=2)
    assert {s.node for s in steps} == {"us-east-1", "us-east-2"}
    assert all(s.options()["dataCenters"] == "us-east" for s in steps)
    assert all(s.options()["primaryRange"] == "false" for s in steps)
    assert "columnFamilies" not in steps[0].options()
    assert _covered([s.range for s in steps]) == RING_SIZE
    every_dc = repair.plan("retail", ranges, DEMO, scope="datacenter", dc="all")
    assert {s.datacenters for s in every_dc} == {(d.name,) for d in DEMO.datacenters}


def test_a_node_missing_from_the_topology_stops_the_plan() -> None:
    ranges = repair.parse_range_map(LIVE_MAP)
    ranges[TokenRange(10, 20)] = ["127.0.9.9", "127.0.1.1"]
    with pytest.raises(RepairError, match=r"does not know: \['127.0.9.9'\]"):
        repair.plan("retail", ranges, TOPOLOGY, scope="primary_range")


def test_a_range_with_one_replica_in_scope_is_left_out() -> None:
    # The test profile has RF 1 in each DC: inside a DC there is nothing to compare, and
    # Cassandra would abort the repair ("Nothing to repair ... aborting").
    ranges = repair.parse_range_map(LIVE_MAP)
    assert repair.plan("retail", ranges, TOPOLOGY, scope="datacenter", dc="all") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope": "primary_range", "dc": "eu-west"}, "choose scope=datacenter"),
        ({"scope": "everything"}, "unknown repair scope"),
        ({"scope": "primary_range", "subranges": 0}, "subranges must be 1 to 64"),
        ({"scope": "primary_range", "subranges": 65}, "subranges must be 1 to 64"),
    ],
)
def test_a_plan_refuses_what_cassandra_would_refuse_or_cannot_be_meant(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(RepairError, match=message):
        repair.plan("retail", repair.parse_range_map(LIVE_MAP), TOPOLOGY, **kwargs)


# -- running a step ------------------------------------------------------------------------------


class ScriptedJolokia:
    """Answers repairAsync with a command number and getParentRepairStatus from a script."""

    def __init__(self, command: int, statuses: list[list[str] | None]) -> None:
        self.command = command
        self.statuses = statuses
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def exec(self, node: Any, mbean: str, operation: str, *arguments: Any) -> Any:
        self.calls.append((operation, arguments))
        if operation == "repairAsync":
            return self.command
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


STEP = RepairStep("retail", "eu-west-1", TokenRange(0, 10), 1, 2)
NODE = TOPOLOGY.node("eu-west-1")


def _run(jolokia: ScriptedJolokia, timeout: float = 60.0) -> repair.StepResult:
    clock = iter(range(1000))
    return repair.run_step(
        jolokia,  # type: ignore[arg-type]
        NODE,
        STEP,
        timeout=timeout,
        clock=lambda: float(next(clock)),
        sleep=lambda _: None,
    )


def test_a_step_polls_until_the_parent_repair_completes() -> None:
    jolokia = ScriptedJolokia(7, [None, ["IN_PROGRESS"], ["COMPLETED", "Repair completed"]])
    result = _run(jolokia)
    assert result.command == 7 and result.messages == ["Repair completed"]
    assert jolokia.calls[0] == ("repairAsync", ("retail", STEP.options()))
    assert jolokia.calls[1:] == [("getParentRepairStatus", (7,))] * 3


def test_a_failed_repair_raises_with_cassandras_reason_and_what_to_do() -> None:
    jolokia = ScriptedJolokia(3, [["FAILED", "Endpoint not alive: /127.0.3.1:7000"]])
    with pytest.raises(RepairError) as err:
        _run(jolokia)
    text = str(err.value)
    assert "Endpoint not alive" in text and "eu-west-1" in text and "UN" in text


def test_nothing_to_repair_is_not_an_error_and_a_stuck_repair_times_out() -> None:
    assert _run(ScriptedJolokia(0, [None])).messages == ["nothing to repair"]
    with pytest.raises(RepairError, match="still running after 5s"):
        _run(ScriptedJolokia(4, [["IN_PROGRESS"]]), timeout=5)


# -- what the alert needs ------------------------------------------------------------------------


def test_table_state_gauges_and_overdue_rule() -> None:
    now = datetime(2026, 11, 24, tzinfo=UTC)
    fresh = repair.TableState("retail", "orders", 864000, now - timedelta(days=1), None, None)
    stale = repair.TableState(
        "retail", "stock_by_store", 864000, now - timedelta(days=9), None, None
    )
    never = repair.TableState("retail_ops", "migration_lock", 864000, None, None, None)
    no_grace = repair.TableState("retail_ops", "schema_migrations", 0, None, None, None)
    assert [s.overdue(now) for s in (fresh, stale, never, no_grace)] == [
        False,
        True,
        True,
        False,
    ]
    metrics = MemoryMetrics()
    naive = datetime(2026, 11, 23)  # the driver's timestamps: naive UTC
    repair.publish(metrics, [repair.TableState("retail", "orders", 3600, naive, naive, "x"), never])
    assert metrics.gauges == {
        "repair.retail.orders.last_success": naive.replace(tzinfo=UTC).timestamp(),
        "repair.retail.orders.gc_grace_seconds": 3600,
        "repair.retail_ops.migration_lock.last_success": 0.0,
        "repair.retail_ops.migration_lock.gc_grace_seconds": 864000,
    }
