"""The ring_maintenance DAG against the live stack: a cleanup of a DC's node runs through its
Jolokia agent and the ring's ownership and load, before and after, reach Prometheus; with a
node down the DAG refuses to start and says which node and what to do (a dry run reports the
same and changes nothing)."""

from __future__ import annotations

import pytest

from retail.topology import Topology
from stack.local import LocalStack
from tests.integration import prom
from tests.integration.airflow import run_dag, task_states, xcom
from tests.integration.test_dag_replication_repair import _output

DAG_ID = "ring_maintenance"
TASK = "ring_maintenance"


def test_a_cleanup_of_one_dc_reports_the_ring_before_and_after_in_prometheus(
    airflow: None,
    topology: Topology,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    dc = topology.datacenters[0]
    node = dc.nodes[0]  # the test stack: one node per DC
    run = run_dag(DAG_ID, {"dcs": [dc.name]})
    assert str(run.state) == "success", task_states(run)
    result = xcom(run, TASK)

    assert result["nodes"] == [node.name]
    assert [(c["node"], c["keyspace"], c["status"]) for c in result["cleanups"]] == [
        (node.name, "retail", "SUCCESSFUL"),
        (node.name, "retail_ops", "SUCCESSFUL"),
    ]
    assert result["blockers"] == []
    # One node per DC: each owns all of its DC's ring, before and after.
    for phase in ("before", "after"):
        assert {n: v["ownership"] for n, v in result[phase].items()} == {
            n.name: pytest.approx(1.0) for n in topology.nodes
        }
        assert all(v["state"] == "UN" and v["load_bytes"] > 0 for v in result[phase].values())
    assert any(
        line.startswith(f"{node.name} ({dc.name}, UN): owns 100.0%") for line in result["summary"]
    )
    text = _output(capfd, caplog)
    assert f"cleanup 1 of 1: {node.name}, keyspace retail [" in text
    assert f"cleanup 1 of 1: {node.name}, keyspace retail_ops [" in text

    # What an operator sees in Prometheus (statsd_exporter, scraped every 5 s).
    # A gauge keeps its last value until sent again: an earlier run's (another test's ring, a
    # node since removed) shows until this run's reaches Prometheus, so wait for this run's.
    want = {n.name: (n.dc, 1.0) for n in topology.nodes}

    def seen(r: prom.Series) -> dict[str, tuple[str, float]]:
        return {s["metric"]["node"]: (s["metric"]["dc"], float(s["value"][1])) for s in r}

    for phase in ("before", "after"):
        prom.wait_for(
            topology,
            f'retail_ring_owns{{phase="{phase}"}}',
            lambda r: {n: v for n, v in seen(r).items() if n in want} == want,
        )
    after = result["after"][node.name]["load_bytes"]
    prom.wait_for(
        topology,
        f'retail_ring_load_bytes{{phase="after",dc="{dc.name}",node="{node.name}"}}',
        lambda r: bool(r) and float(r[0]["value"][1]) == pytest.approx(after),
    )
    assert prom.value(prom.wait_for(topology, "retail_ring_cleanup_in_progress")) == 0
    assert prom.value(prom.wait_for(topology, "retail_ring_cleanup_nodes_remaining")) == 0


def test_with_a_node_down_it_refuses_naming_the_node_and_a_dry_run_only_reports(
    airflow: None,
    topology: Topology,
    local_stack: LocalStack,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = topology.datacenters[1].nodes[0]
    local_stack.stop(down.name)
    try:
        capfd.readouterr()
        run = run_dag(DAG_ID, {"dcs": [topology.datacenters[0].name]})
        assert str(run.state) == "failed"
        assert task_states(run) == {TASK: "failed"}  # refused: not retried
        text = _output(capfd, caplog)
        assert "ring maintenance refused to start: " in text
        assert f"{down.name} ({down.address}) is not answering over Jolokia" in text
        assert "every node must be UN before a cleanup" in text
        assert "`retail stack start NODE`" in text
        assert "cleanup 1 of" not in text  # nothing was cleaned up

        run = run_dag(DAG_ID, {"dcs": [topology.datacenters[0].name], "dry_run": True})
        assert str(run.state) == "success", task_states(run)
        result = xcom(run, TASK)
        assert result["dry_run"] is True and "cleanups" not in result
        assert [b.split(" ", 1)[0] for b in result["blockers"]] == [down.name]
        assert "a run now would be REFUSED" in _output(capfd, caplog)
    finally:
        local_stack.start(down.name)
