"""How the platform's Cassandra clients are built (not connected)."""

from __future__ import annotations

import itertools

from retail.cassandra import RECONNECT_MAX_DELAY, cluster_for
from retail.topology import profile_topology


def test_a_node_that_comes_back_is_tried_again_within_seconds_for_as_long_as_it_takes() -> None:
    cluster = cluster_for(profile_topology("test"), "eu-west")
    # The 1,000th try still comes, at most 10 s (plus the driver's 15% jitter) after the last.
    delays = list(itertools.islice(cluster.reconnection_policy.new_schedule(), 1000))
    assert len(delays) == 1000
    assert max(delays) <= RECONNECT_MAX_DELAY * 1.15
