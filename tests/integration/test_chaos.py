"""A short chaos schedule on the test stack (``retail chaos --duration 600`` runs the long one on
the demo profile): a stream through the supervised consumers while consumers are killed, a
Cassandra node is killed and restarted, the Kafka broker is killed and restarted and a node is
frozen past the failure detector; then the check from outside, through the command a user
runs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from retail.chaos import CONSUMER_KILL, NODE_FREEZE
from stack.local import LocalStack
from stack.status import collect
from tests.integration.conftest import retail
from tests.integration.pipeline import PipelineRun

# After the other tests: it takes the stack's nodes and broker down, one at a time.
pytestmark = pytest.mark.late

FAULTS = ("consumer_kill", "node_kill", "broker_kill", "node_freeze")


@pytest.fixture
def supervised(run: PipelineRun, healthy: LocalStack) -> Iterator[None]:
    """Supervised consumers on the stack's own topics, on empty tables (``run`` truncates)."""
    retail("stack", "up", "--profile", "test", "--consumers", "1")
    yield
    retail("stack", "up", "--profile", "test", "--consumers", "0")


def test_a_fault_schedule_loses_and_duplicates_nothing(
    supervised: None, healthy: LocalStack
) -> None:
    done = retail(
        *("chaos", "--duration", "90", "--rate", "10", "--seed", "3"),
        *("--faults", ",".join(FAULTS), "--consumer-kills", "3", "--invalid-every", "20"),
        *("--check-timeout", "600", "--json"),
        check=False,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["faults_by_kind"] == {**{k: 1 for k in FAULTS}, CONSUMER_KILL: 3}
    assert result["produced"] >= 850 and result["written"] == result["produced"]
    assert result["invalid"] >= 40
    for figure in ("lost", "duplicated", "rollup_buckets_wrong", "dead_letters_missing"):
        assert result[figure] == 0, (figure, result["examples"])
    assert result["faults_failed"] == []
    # Never missing where its consumer wrote it (LOCAL_QUORUM in its region's DC); another DC
    # may have needed the repair (hints a killed coordinator had not flushed are gone).
    assert result["lost_in_home_dc_before_repair"] in (None, 0), result["examples"]
    freeze = next(f for f in result["faults"] if f["kind"] == NODE_FREEZE)
    assert "saw it down" in freeze["detail"]
    # Every killed consumer came back, and the stack is whole again.
    assert result["consumer_restarts"] >= 3
    st = collect(healthy)
    assert st.ok, json.dumps(st.to_dict(), indent=2)
