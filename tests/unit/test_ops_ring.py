"""Ring maintenance (retail.ops.ring): which nodes a cleanup takes, why it refuses to start and
what the refusal tells the operator, the cleanup's order and gauges (in-memory metrics), and
the before/after gauges and summary."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from retail.jolokia import STORAGE_SERVICE, JolokiaError, RingView
from retail.metrics import MemoryMetrics
from retail.ops import ring
from retail.topology import Topology, balanced_tokens, profile_topology
from tests.unit.test_ops_balance import MAPPING, _mapped
from tests.unit.test_repair_lease import ScriptedJolokia

DEMO = profile_topology("demo")  # two nodes per DC
TEST = profile_topology("test")  # one node per DC


def view(
    topology: Topology,
    observer: str,
    *,
    down: tuple[str, ...] = (),
    joining: tuple[str, ...] = (),
    extra: dict[str, list[int]] | None = None,
    loads: dict[str, float] | None = None,
) -> RingView:
    """What ``observer`` sees of ``topology``'s ring: every node UN with its token unless said
    otherwise; loads by node name (default 1 MiB each)."""
    addr = {n.name: n.address for n in topology.nodes}
    tokens = {n.address: [n.token] for n in topology.nodes} | (extra or {})
    loads = loads or {}
    return RingView(
        observer=addr[observer],
        up=frozenset(a for a in tokens if a not in {addr.get(d, d) for d in down}),
        down=frozenset(addr.get(d, d) for d in down),
        joining=frozenset(addr.get(j, j) for j in joining),
        leaving=frozenset(),
        moving=frozenset(),
        load_bytes={a: loads.get(name, 1024.0**2) for name, a in addr.items()},
        tokens=tokens,
    )


def all_views(topology: Topology, **kw: Any) -> dict[str, RingView]:
    return {n.name: view(topology, n.name, **kw) for n in topology.nodes}


# -- which nodes ---------------------------------------------------------------------------------


def test_by_default_every_node_of_every_dc_in_topology_order() -> None:
    assert [n.name for n in ring.choose_nodes(DEMO)] == [n.name for n in DEMO.nodes]


def test_the_dcs_given_take_all_their_nodes_in_topology_order() -> None:
    picked = ring.choose_nodes(DEMO, ["ap-southeast", "eu-west"])
    assert [n.name for n in picked] == [
        "eu-west-1",
        "eu-west-2",
        "ap-southeast-1",
        "ap-southeast-2",
    ]


def test_explicit_nodes_take_only_those() -> None:
    picked = ring.choose_nodes(DEMO, ["eu-west"], ["eu-west-2"])
    assert [n.name for n in picked] == ["eu-west-2"]
    assert [n.name for n in ring.choose_nodes(DEMO, [], ["us-east-2", "eu-west-1"])] == [
        "eu-west-1",
        "us-east-2",
    ]


@pytest.mark.parametrize(
    ("dcs", "nodes", "message"),
    [
        (["eu-central"], [], r"unknown DC\(s\) eu-central; the topology has eu-west, us-east"),
        ([], ["eu-west-9"], r"unknown node\(s\) eu-west-9; the topology has eu-west-1, eu-west-2"),
        (
            ["eu-west"],
            ["us-east-1"],
            r"us-east-1 is in us-east, not in dcs \['eu-west'\]: add its DC to dcs",
        ),
    ],
)
def test_a_choice_the_topology_cannot_honour_is_refused(
    dcs: list[str], nodes: list[str], message: str
) -> None:
    with pytest.raises(ring.RingRefused, match=message):
        ring.choose_nodes(DEMO, dcs, nodes)


# -- pre-flight ----------------------------------------------------------------------------------


def test_all_up_normal_and_no_repair_lets_it_start() -> None:
    views = all_views(DEMO)
    assert ring.blockers(DEMO, views, {}, dict.fromkeys(views, 0)) == []
    ring.preflight(DEMO, views, {}, dict.fromkeys(views, 0))


def test_a_node_down_is_refused_naming_it_and_what_to_do() -> None:
    views = all_views(TEST, down=("us-east-1",))
    del views["us-east-1"]  # its agent is down with it
    found = ring.blockers(TEST, views, {"us-east-1": "did not answer"}, {})
    assert len(found) == 1
    assert found[0].startswith(
        "us-east-1 (127.0.2.1) is not answering over Jolokia, DN to eu-west-1, DN to "
        "ap-southeast-1: every node must be UN before a cleanup"
    )
    assert "`retail stack start NODE`" in found[0] and "trigger again" in found[0]
    with pytest.raises(ring.RingRefused, match="ring maintenance refused to start: us-east-1"):
        ring.preflight(TEST, views, {"us-east-1": "did not answer"}, {})


def test_a_decommissioned_node_that_gossip_still_remembers_stops_nothing() -> None:
    # eu-west-2 left the ring (`retail stack remove-node`): no token, but gossip lists it among
    # the unreachable nodes until its state expires, days later.
    views = all_views(TEST)
    for name, v in views.items():
        views[name] = replace(v, down=v.down | {"127.0.1.2"})
    assert ring.blockers(TEST, views, {}, {}) == []


def test_a_joining_node_is_refused_and_so_is_a_node_the_topology_does_not_list() -> None:
    # A node joining eu-west, not yet in the connection's topology.
    views = all_views(TEST, extra={"127.0.1.9": [42]}, joining=("127.0.1.9",))
    found = ring.blockers(TEST, views, {}, {})
    assert found == [
        "the ring has node(s) 127.0.1.9 that the topology does not list: ownership would be "
        "computed without them. Update the retail_cassandra connection's topology "
        "(`retail airflow-env`) to the cluster's, then trigger again"
    ]
    # Once the topology lists it, its state is what stops the cleanup.
    grown = profile_topology("test", nodes_per_dc="eu-west=2,us-east=1,ap-southeast=1")
    views = all_views(grown, joining=("eu-west-2",))
    found = ring.blockers(grown, views, {}, {})
    assert len(found) == 1
    assert found[0].startswith("eu-west-2 (127.0.1.2) is UJ to eu-west-1, UJ to eu-west-2, UJ to")


def test_a_node_of_the_topology_missing_from_the_ring_is_refused() -> None:
    grown = profile_topology("test", nodes_per_dc="eu-west=2,us-east=1,ap-southeast=1")
    views = {n.name: view(TEST, n.name) for n in TEST.nodes}
    found = ring.blockers(grown, views, {"eu-west-2": "did not answer"}, {})
    assert found == [
        "eu-west-2 (127.0.1.2) is in the topology but in no node's ring: start it and let it "
        "join, or remove it from the retail_cassandra connection's topology "
        "(`retail airflow-env`), then trigger again"
    ]


def test_a_running_repair_is_refused_naming_the_nodes() -> None:
    views = all_views(DEMO)
    sessions = dict.fromkeys(views, 0) | {"us-east-2": 2, "eu-west-1": 1}
    found = ring.blockers(DEMO, views, {}, sessions)
    assert found == [
        "a repair runs: parent repair sessions on eu-west-1 (1), us-east-2 (2). A cleanup "
        "rewrites the ranges the repair streams into: wait for it to finish (the "
        "replication_repair DAG's run, or a `nodetool repair`), then trigger again"
    ]


def test_repair_sessions_are_counted_on_every_node_that_answers() -> None:
    jolokia = ScriptedJolokia(parentRepairSessionsCount=[0, 3, 0])
    counts = ring.repair_sessions(jolokia, TEST)  # type: ignore[arg-type]
    assert counts == {"eu-west-1": 0, "us-east-1": 3, "ap-southeast-1": 0}


# -- snapshot and gauges -------------------------------------------------------------------------


def test_a_snapshot_takes_ownership_from_the_tokens_and_each_nodes_load_from_itself() -> None:
    grown = profile_topology("test", nodes_per_dc="eu-west=2,us-east=1,ap-southeast=1")
    a, b = balanced_tokens(4, 0)[0], balanced_tokens(4, 0)[1]  # eu-west-2 owns a quarter
    extra = {"127.0.1.1": [a], "127.0.1.2": [b]}
    views = {
        # The others' gossip still carries eu-west-1's load from before its cleanup.
        n.name: view(grown, n.name, extra=extra, loads={"eu-west-1": 8 * 1024.0**2})
        for n in grown.nodes
    }
    views["eu-west-1"] = view(grown, "eu-west-1", extra=extra, loads={"eu-west-1": 2 * 1024.0**2})
    snap = ring.snapshot(grown, views)
    eu1, eu2 = snap.node("eu-west-1"), snap.node("eu-west-2")
    assert eu1.ownership == pytest.approx(0.75) and eu2.ownership == pytest.approx(0.25)
    assert snap.node("us-east-1").ownership == pytest.approx(1.0)
    assert eu1.load_bytes == 2 * 1024.0**2
    assert eu1.state == "UN"
    assert snap.to_dict()["eu-west-2"]["ownership"] == pytest.approx(0.25)


def test_no_view_at_all_is_an_error_that_says_what_to_check() -> None:
    with pytest.raises(ring.RingError, match="no Cassandra node answered over Jolokia"):
        ring.snapshot(TEST, {})


def test_the_gauges_of_each_phase_map_to_retail_ring_metrics() -> None:
    snap = ring.snapshot(TEST, all_views(TEST))
    metrics = MemoryMetrics()
    assert ring.publish(metrics, snap, "before") == 6
    assert metrics.gauges["ring.owns.before.eu-west.eu-west-1"] == 1.0
    assert metrics.gauges["ring.load_bytes.before.us-east.us-east-1"] == 1024.0**2
    mappings = yaml.safe_load(Path(MAPPING).read_text())["mappings"]
    assert _mapped("retail.ring.owns.after.eu-west.eu-west-1", mappings) == (
        "retail_ring_owns",
        {"phase": "after", "dc": "eu-west", "node": "eu-west-1"},
    )
    assert _mapped("retail.ring.load_bytes.before.us-east.us-east-1", mappings) == (
        "retail_ring_load_bytes",
        {"phase": "before", "dc": "us-east", "node": "us-east-1"},
    )
    for name in ("in_progress", "nodes_remaining"):
        assert _mapped(f"retail.ring.cleanup.{name}", mappings) == (
            f"retail_ring_cleanup_{name}",
            {},
        )
    with pytest.raises(ValueError, match="phase must be one of"):
        ring.gauges(snap, "during")


def test_a_node_no_view_knows_sends_no_gauge_rather_than_a_zero() -> None:
    grown = profile_topology("test", nodes_per_dc="eu-west=2,us-east=1,ap-southeast=1")
    snap = ring.snapshot(grown, {n.name: view(TEST, n.name) for n in TEST.nodes})
    assert snap.node("eu-west-2").state == "?"
    assert not [g for g in ring.gauges(snap, "after") if "eu-west-2" in g]


def test_the_summary_shows_each_nodes_load_before_and_after() -> None:
    before = ring.snapshot(TEST, all_views(TEST, loads={"eu-west-1": 3 * 1024.0**2}))
    after = ring.snapshot(TEST, all_views(TEST))
    lines = ring.summary_lines(before, after)
    assert lines[0] == (
        "eu-west-1 (eu-west, UN): owns 100.0% of eu-west, load 3.0 MiB -> 1.0 MiB (-2.0 MiB)"
    )
    assert ring.summary_lines(before, None)[1] == (
        "us-east-1 (us-east, UN): owns 100.0% of us-east, load 1.0 MiB"
    )


# -- the cleanup ---------------------------------------------------------------------------------


class RecordingMetrics(MemoryMetrics):
    """In-memory metrics that also keep every gauge value in order."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[str, float]] = []

    def gauge(self, name: str, value: float) -> None:
        super().gauge(name, value)
        self.history.append((name, value))


def test_a_cleanup_runs_one_node_and_keyspace_at_a_time_and_counts_down() -> None:
    jolokia = ScriptedJolokia(**{ring.CLEANUP_OPERATION: [0]})
    metrics = RecordingMetrics()
    said: list[str] = []
    targets = ring.choose_nodes(DEMO, ["eu-west"])
    done = ring.cleanup(
        jolokia,  # type: ignore[arg-type]
        targets,
        ["retail", "retail_ops"],
        metrics,
        say=said.append,
    )
    assert jolokia.calls == [
        (node, ring.CLEANUP_OPERATION, (ring.CLEANUP_JOBS, ks, []))
        for node in ("eu-west-1", "eu-west-2")
        for ks in ("retail", "retail_ops")
    ]
    assert [(r.node, r.keyspace, r.status) for r in done] == [
        ("eu-west-1", "retail", "SUCCESSFUL"),
        ("eu-west-1", "retail_ops", "SUCCESSFUL"),
        ("eu-west-2", "retail", "SUCCESSFUL"),
        ("eu-west-2", "retail_ops", "SUCCESSFUL"),
    ]
    assert said[0].startswith("cleanup 1 of 2: eu-west-1, keyspace retail [")
    assert any(line.startswith("cleanup 2 of 2: eu-west-2, keyspace retail_ops") for line in said)
    assert metrics.history == [
        ("ring.cleanup.nodes_remaining", 2),
        ("ring.cleanup.in_progress", 1),
        ("ring.cleanup.nodes_remaining", 1),
        ("ring.cleanup.nodes_remaining", 0),
        ("ring.cleanup.in_progress", 0),
    ]


class FailingJolokia(ScriptedJolokia):
    """A node whose agent stops answering at the n-th call."""

    def __init__(self, fail_at: int, **answers: list[Any]) -> None:
        super().__init__(**answers)
        self.fail_at = fail_at

    def exec(self, node: Any, mbean: str, operation: str, *arguments: Any) -> Any:
        assert mbean == STORAGE_SERVICE
        if len(self.calls) + 1 == self.fail_at:
            self.calls.append((node.name, operation, arguments))
            raise JolokiaError(f"{node.name}: its Jolokia agent did not answer")
        return super().exec(node, mbean, operation, *arguments)


def test_a_failed_cleanup_says_what_to_do_and_leaves_in_progress_at_zero() -> None:
    jolokia = FailingJolokia(3, **{ring.CLEANUP_OPERATION: [0]})
    metrics = RecordingMetrics()
    targets = ring.choose_nodes(DEMO, ["eu-west"])
    with pytest.raises(ring.RingError, match="cleanup of retail on eu-west-2 failed: eu-west-2"):
        ring.cleanup(jolokia, targets, ["retail", "retail_ops"], metrics)  # type: ignore[arg-type]
    assert metrics.gauges["ring.cleanup.in_progress"] == 0
    assert metrics.gauges["ring.cleanup.nodes_remaining"] == 1
    assert len(jolokia.calls) == 3  # nothing after the failure


def test_an_aborted_cleanup_stops_the_run_naming_its_status() -> None:
    jolokia = ScriptedJolokia(**{ring.CLEANUP_OPERATION: [1]})
    metrics = MemoryMetrics()
    with pytest.raises(ring.RingError, match="cleanup of retail on eu-west-1 ended ABORTED after"):
        ring.cleanup(jolokia, TEST.nodes, ["retail"], metrics)  # type: ignore[arg-type]
    assert metrics.gauges["ring.cleanup.in_progress"] == 0
    assert len(jolokia.calls) == 1
