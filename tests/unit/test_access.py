"""When replicating system_auth per the topology is safe without a repair."""

from __future__ import annotations

import logging

import pytest

from retail.ops.access import logins_stay_put
from retail.ops.replication import normalize
from retail.topology import profile_topology

DEMO = profile_topology("demo")  # six nodes, RF 2 in each of three DCs


@pytest.mark.parametrize(
    "live, safe",
    [
        # What the stack's nodes start with: a copy on every node.
        ({"class": "SimpleStrategy", "replication_factor": "6"}, True),
        # Cassandra's own default: the logins sit on one node each; most would move.
        ({"class": "SimpleStrategy", "replication_factor": "1"}, False),
        ({"class": "SimpleStrategy", "replication_factor": "5"}, False),
        # Already as the topology says: nothing moves.
        (normalize(DEMO.replication()), True),
        # Another per-DC layout: replicas change.
        ({"class": "NetworkTopologyStrategy", "eu-west": "1", "us-east": "1"}, False),
    ],
)
def test_only_a_copy_on_every_node_or_the_target_itself_is_safe(
    live: dict[str, str], safe: bool
) -> None:
    assert logins_stay_put(live, DEMO) is safe


def test_an_expected_refusal_mutes_every_driver_logger_and_restores_them() -> None:
    from retail import logs
    from retail.ops.access import _quiet_driver

    logs.configure("INFO")  # gives cassandra.cluster a level of its own (ERROR)
    cluster = logging.getLogger("cassandra.cluster")
    assert cluster.isEnabledFor(logging.ERROR)
    with _quiet_driver():
        assert not cluster.isEnabledFor(logging.ERROR)  # "Control connection failed" is muted
        assert not logging.getLogger("cassandra").isEnabledFor(logging.ERROR)
    assert cluster.isEnabledFor(logging.ERROR)
