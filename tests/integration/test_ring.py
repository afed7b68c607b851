"""The token ring changes while the stream runs: a DC grows from one node to two
(`retail stack add-node`), its ownership ends even, nothing is lost, the cleanup shrinks the
old node; then the new node is decommissioned (`retail stack remove-node`) and the data stays
complete. Refusals are checked through the same commands."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import pytest

from retail.events import Order
from retail.generator import StreamGenerator
from stack.local import LocalStack
from stack.status import collect
from tests.integration.airflow import run_dag, task_states, xcom
from tests.integration.conftest import retail
from tests.integration.pipeline import PipelineRun

DC = "eu-west"
NEW = "eu-west-2"


def load_mib(node: str) -> float:
    """The node's own figure for its data on disk (nodetool info; gossip's copy lags a minute)."""
    info = retail("stack", "nodetool", node, "info").stdout
    value, unit = re.search(r"^Load\s*:\s*([\d.]+)\s*(\w+)", info, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "bytes": 2**-20}[unit]


def audit_clean(run: PipelineRun, n_events: int) -> None:
    """The pipeline_audit DAG over the run's topics: every event found, none missing."""
    dag_run = run_dag(
        "pipeline_audit", {"topic_prefix": run.prefix, "window_minutes": 30, "settle_minutes": 0}
    )
    assert str(dag_run.state) == "success", task_states(dag_run)
    result = xcom(dag_run, "audit_window")
    assert result["missing"] == 0, result
    assert sum(t["events"] for t in result["topics"].values()) == n_events


@pytest.fixture
def grown(run: PipelineRun, healthy: LocalStack, airflow: None) -> Iterator[LocalStack]:
    """The test's own consumers running; whatever the test leaves, the extra node goes."""
    run.start_all()
    for proc in run.consumers.values():
        run.wait_assigned(proc)
    yield healthy
    if any(n.name == NEW for n in healthy.topology().nodes):
        retail("stack", "remove-node", NEW, check=False)


def test_a_dc_grows_by_a_node_under_the_stream_and_shrinks_back_losing_nothing(
    run: PipelineRun, grown: LocalStack
) -> None:
    gen = StreamGenerator(seed=41, stores_per_region=6)
    events = list(gen.events(4000))
    orders = [e for e in events if isinstance(e, Order)]
    moves = [e for e in events if not isinstance(e, Order)]
    # Half before the join, half while it runs (the new node's ranges get writes as pending
    # ranges, then as its own).
    run.produce(events[:2000])
    streaming = threading.Thread(target=run.produce, args=(events[2000:],), kwargs={"rate": 40})
    streaming.start()
    joined = retail("stack", "add-node", DC, timeout=900)
    streaming.join()
    assert f"{NEW} joined {DC}" in joined.stdout + joined.stderr

    st = collect(grown)
    assert st.ok, json.dumps(st.to_dict(), indent=2)
    owns = {n.name: n.owns for n in st.nodes if n.dc == DC}
    assert set(owns) == {"eu-west-1", NEW}
    assert all(abs(share - 0.5) <= 0.05 for share in owns.values()), owns  # within 10% of even

    run.wait_consumed(timeout=300)
    run.assert_exact(orders, moves)
    audit_clean(run, len(events))

    # The old node still holds the ranges it gave up, until its cleanup.
    before = load_mib("eu-west-1")
    cleanup = run_dag("ring_maintenance", {"dcs": [DC]})
    assert str(cleanup.state) == "success", task_states(cleanup)
    after = load_mib("eu-west-1")
    assert after < 0.8 * before, (before, after)
    run.assert_exact(orders, moves)

    left = retail("stack", "remove-node", NEW, timeout=1800)
    assert f"{NEW} left the ring" in left.stdout + left.stderr
    assert [n.name for n in grown.topology().datacenter(DC).nodes] == ["eu-west-1"]
    assert not (grown.dir / "cassandra" / NEW).exists()
    run.assert_exact(orders, moves)
    audit_clean(run, len(events))
    assert collect(grown).ok


@pytest.mark.parametrize(
    ("node", "message"),
    [("eu-west-1", "last node of eu-west"), ("eu-west-9", "unknown Cassandra node")],
)
def test_removing_a_dcs_last_node_or_an_unknown_one_is_refused(
    healthy: LocalStack, node: str, message: str
) -> None:
    done = retail("stack", "remove-node", node, check=False)
    assert done.returncode == 1
    assert message in " ".join((done.stdout + done.stderr).split())
    assert collect(healthy).ok
