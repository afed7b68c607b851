"""The Kafka rebalance proposal: uneven placements end even per topic (replicas and preferred
leaders within one per broker) with the fewest moves, replication factors kept, and Kafka's
reassignment JSON; the tools' output read back; the refusal to grow a keyed topic."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from retail.kafka import PartitionGrowthRefused, check_partition_growth
from retail.ops.kafka_reassign import (
    java_client_properties,
    parse_active,
    parse_log_dirs,
    parse_verify,
)
from retail.ops.kafka_rebalance import (
    RebalanceError,
    is_even,
    leader_counts,
    propose,
    reassignment_json,
    replica_counts,
    summary_lines,
    to_dict,
)

BROKERS = [1, 2, 3]


def excess(parts: dict[int, list[int]], brokers: list[int]) -> int:
    """The least number of replica moves that can even ``parts``: each broker's excess over
    its share, the larger shares going to the brokers that carry the most."""
    counts = replica_counts(parts, brokers)
    total = sum(len(r) for r in parts.values())
    base, extra = divmod(total, len(brokers))
    ranked = sorted(counts, key=lambda b: -counts[b])
    live = [b for b in ranked if b in brokers]
    share = {b: base + (1 if i < extra else 0) for i, b in enumerate(live)}
    return sum(max(0, c - share.get(b, 0)) for b, c in counts.items())


def assert_balanced(after: dict[int, list[int]], brokers: list[int]) -> None:
    assert is_even(replica_counts(after, brokers)), after
    assert is_even(leader_counts(after, brokers)), after
    for replicas in after.values():
        assert len(set(replicas)) == len(replicas), after
        assert set(replicas) <= set(brokers), after


def test_every_replica_and_leader_on_one_pair_of_brokers_ends_even() -> None:
    before = {"t": {p: [1, 2] for p in range(6)}}
    proposal = propose(before, BROKERS)
    after = proposal.after["t"]
    assert replica_counts(after, BROKERS) == {1: 4, 2: 4, 3: 4}
    assert leader_counts(after, BROKERS) == {1: 2, 2: 2, 3: 2}
    assert len(proposal.moves) == 4  # two off each of brokers 1 and 2, the least possible
    assert {m.target for m in proposal.moves} == {3}
    assert proposal.before == before  # the input is left as it was


def test_an_even_topic_moves_nothing() -> None:
    before = {"t": {0: [1, 2], 1: [2, 3], 2: [3, 1], 3: [1, 3], 4: [2, 1], 5: [3, 2]}}
    proposal = propose(before, BROKERS)
    assert proposal.moves == []
    assert proposal.leader_changes == []
    assert proposal.empty
    assert reassignment_json(proposal) == {"version": 1, "partitions": []}
    assert "balanced: nothing to move" in summary_lines(proposal)


def test_replication_factor_three_on_three_brokers_only_changes_leaders() -> None:
    proposal = propose({"t": {p: [1, 2, 3] for p in range(3)}}, BROKERS)
    assert proposal.moves == []
    assert leader_counts(proposal.after["t"], BROKERS) == {1: 1, 2: 1, 3: 1}
    assert sorted(set(r) == {1, 2, 3} for r in proposal.after["t"].values()) == [True] * 3
    assert len(proposal.leader_changes) == 2  # one partition keeps broker 1 as its leader


def test_the_replication_factor_of_every_partition_is_kept() -> None:
    before = {
        "a": {p: [1] for p in range(7)},
        "b": {p: [1, 2] for p in range(5)},
        "c": {p: [2, 3, 1] for p in range(4)},
    }
    proposal = propose(before, BROKERS)
    for topic, parts in before.items():
        assert {p: len(r) for p, r in proposal.after[topic].items()} == {
            p: len(r) for p, r in parts.items()
        }
        assert_balanced(proposal.after[topic], BROKERS)


def test_moves_are_the_fewest_possible_and_the_smallest_partitions_go() -> None:
    before = {"t": {p: [1] for p in range(6)}}
    sizes = {("t", p): (6 - p) * 1000 for p in range(6)}  # partition 5 is the smallest
    proposal = propose(before, BROKERS, sizes)
    assert len(proposal.moves) == 4
    # The four smallest move; the two largest stay where they are.
    assert sorted(m.partition for m in proposal.moves) == [2, 3, 4, 5]
    assert proposal.bytes_to_move == (4 + 3 + 2 + 1) * 1000


@pytest.mark.parametrize("seed", range(40))
def test_random_placements_end_even_with_the_fewest_moves(seed: int) -> None:
    rng = random.Random(seed)
    brokers = list(range(1, rng.randint(2, 6) + 1))
    topics = {}
    for t in range(rng.randint(1, 3)):
        rf = rng.randint(1, min(3, len(brokers)))
        # Placed on a random subset of the brokers, most often a few of them: uneven.
        pool = rng.sample(brokers, rng.randint(rf, len(brokers)))
        topics[f"t{t}"] = {p: rng.sample(pool, rf) for p in range(rng.randint(1, 24))}
    proposal = propose(topics, brokers)
    for topic, parts in topics.items():
        after = proposal.after[topic]
        assert_balanced(after, brokers)
        assert {p: len(r) for p, r in after.items()} == {p: len(r) for p, r in parts.items()}
        moved = sum(len(set(after[p]) - set(parts[p])) for p in parts)
        assert moved == excess(parts, brokers) == sum(m.topic == topic for m in proposal.moves)


def test_replicas_on_a_broker_that_is_gone_always_move() -> None:
    before = {"t": {0: [4, 1], 1: [4, 2], 2: [1, 2], 3: [2, 3]}}
    proposal = propose(before, BROKERS)
    assert all(4 not in r for r in proposal.after["t"].values())
    assert_balanced(proposal.after["t"], BROKERS)
    assert Counter(m.source for m in proposal.moves)[4] == 2


def test_more_replicas_than_live_brokers_is_refused_with_what_to_do() -> None:
    with pytest.raises(RebalanceError, match="start the missing brokers"):
        propose({"t": {0: [1, 2, 3]}}, [1, 2])
    with pytest.raises(RebalanceError, match="no live broker"):
        propose({"t": {0: [1]}}, [])


def test_the_reassignment_json_is_kafkas_format() -> None:
    proposal = propose({"t": {0: [1, 2], 1: [1, 2], 2: [1, 2]}}, BROKERS)
    plan = reassignment_json(proposal)
    assert plan["version"] == 1
    for entry in plan["partitions"]:
        assert set(entry) == {"topic", "partition", "replicas", "log_dirs"}
        assert entry["log_dirs"] == ["any"] * len(entry["replicas"])
        assert entry["replicas"] == proposal.after["t"][entry["partition"]]
    # Every partition whose list changes (set or order), and only those.
    assert [(e["topic"], e["partition"]) for e in plan["partitions"]] == proposal.changed
    d = to_dict(proposal)
    assert d["reassignment"] == plan
    assert d["after"]["t"]["0"] == proposal.after["t"][0]
    assert len(d["moves"]) == len(proposal.moves)


# -- the tools' output --------------------------------------------------------------------------


def test_verify_output_tells_done_moving_and_failed_partitions() -> None:
    out = """Status of partition reassignment:
Reassignment of partition rb.eu-west.orders-0 is completed.
Reassignment of partition rb.eu-west.orders-1 is still in progress.
There is no active reassignment of partition rb.eu-west.orders-2, but replica set is [1, 2] \
rather than [3, 2].

Clearing broker-level throttles on brokers 1,2,3
"""
    result = parse_verify(out)
    assert result.completed == {("rb.eu-west.orders", 0)}
    assert result.in_progress == {("rb.eu-west.orders", 1)}
    assert len(result.failed) == 1 and "orders-2" in result.failed[0]


def test_log_dirs_output_gives_the_largest_replica_of_each_partition() -> None:
    out = (
        "Querying brokers for log directories information\n"
        "Received log directory information from brokers 1,2\n"
        '{"brokers":[{"broker":1,"logDirs":[{"logDir":"/d","error":null,"partitions":['
        '{"partition":"a.b-c-0","size":100,"offsetLag":0,"isFuture":false},'
        '{"partition":"a.b-c-1","size":7,"offsetLag":0,"isFuture":false}]}]},'
        '{"broker":2,"logDirs":[{"logDir":"/d","error":null,"partitions":['
        '{"partition":"a.b-c-0","size":90,"offsetLag":10,"isFuture":false},'
        '{"partition":"a.b-c-1","size":9,"offsetLag":0,"isFuture":true}]}]}],"version":1}\n'
    )
    assert parse_log_dirs(out) == {("a.b-c", 0): 100, ("a.b-c", 1): 7}


def test_list_output_names_the_active_reassignments() -> None:
    assert parse_active("No partition reassignments found.\n") == []
    out = "Current partition reassignments:\nt-0: replicas: 1,2,3. adding: 3. removing: 1.\n"
    assert parse_active(out) == ["t-0: replicas: 1,2,3. adding: 3. removing: 1."]


def test_the_tools_log_in_with_the_connections_scram_login_over_tls() -> None:
    props = java_client_properties(
        {
            "bootstrap.servers": "127.0.10.1:9092",
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "admin",
            "sasl.password": 'p"w\\x',
            "ssl.ca.location": "/s/ca.pem",
        }
    )
    lines = dict(line.split("=", 1) for line in props.splitlines())
    assert lines["bootstrap.servers"] == "127.0.10.1:9092"
    assert lines["security.protocol"] == "SASL_SSL"
    assert lines["sasl.mechanism"] == "SCRAM-SHA-512"
    assert lines["ssl.truststore.type"] == "PEM"
    assert lines["ssl.truststore.location"] == "/s/ca.pem"
    # JAAS quoting, then the properties file's own backslash escaping.
    assert lines["sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="admin" password="p\\\\"w\\\\\\\\x";'
    )


def test_a_login_the_tools_cannot_use_is_refused() -> None:
    base = {"bootstrap.servers": "b:9092", "security.protocol": "SASL_SSL"}
    with pytest.raises(RebalanceError, match=r"sasl\.mechanism"):
        java_client_properties({**base, "sasl.mechanism": "OAUTHBEARER"})
    with pytest.raises(RebalanceError, match="no login or password"):
        java_client_properties({**base, "sasl.mechanism": "SCRAM-SHA-512"})


# -- growing a keyed topic ----------------------------------------------------------------------


def test_growing_a_keyed_topic_without_a_plan_is_refused_saying_why() -> None:
    with pytest.raises(PartitionGrowthRefused, match="key-to-partition mapping") as info:
        check_partition_growth("retail.eu-west.orders", 12, 24, None)
    assert "order" in str(info.value) and "plan" in str(info.value)
    with pytest.raises(PartitionGrowthRefused):
        check_partition_growth("retail.eu-west.orders", 12, 24, "   ")
    with pytest.raises(PartitionGrowthRefused, match="cannot remove partitions"):
        check_partition_growth("retail.eu-west.orders", 12, 6, "any plan")


def test_growing_with_a_plan_or_keeping_the_count_is_allowed() -> None:
    check_partition_growth("retail.eu-west.orders", 12, 12, None)
    check_partition_growth(
        "retail.eu-west.orders", 12, 24, "producers stopped, every group drained to lag 0"
    )
