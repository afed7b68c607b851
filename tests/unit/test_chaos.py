"""The chaos schedule: seeded, every kind asked for, within the run, heavy faults one by one."""

from __future__ import annotations

from collections import Counter

import pytest

from retail.chaos import CONSUMER_KILL, HOLD, KINDS, Targets, plan

TARGETS = Targets(
    consumers=("consumer-eu-west-1", "consumer-us-east-1", "consumer-ap-southeast-2"),
    nodes=("eu-west-1", "eu-west-2", "us-east-1", "us-east-2"),
    dcs=("eu-west", "us-east"),
    brokers=("kafka-1", "kafka-2", "kafka-3"),
)


def test_a_seed_decides_the_schedule() -> None:
    assert plan(7, 600, KINDS, TARGETS, 12) == plan(7, 600, KINDS, TARGETS, 12)
    assert plan(7, 600, KINDS, TARGETS, 12) != plan(8, 600, KINDS, TARGETS, 12)


def test_every_kind_asked_for_is_in_the_schedule_within_the_run() -> None:
    for seed in range(50):
        faults = plan(seed, 600, KINDS, TARGETS, 12)
        kinds = Counter(f.kind for f in faults)
        assert kinds == {**{k: 1 for k in KINDS}, CONSUMER_KILL: 12}
        assert all(0 < f.at < 600 for f in faults)
        assert [f.at for f in faults] == sorted(f.at for f in faults)
        for f in faults:
            assert f.target in TARGETS.of(f.kind)
            assert f.hold == HOLD.get(f.kind, 0.0)


def test_heavy_faults_each_have_a_slot_of_their_own() -> None:
    # Five heavy kinds in 600 s: slots of 100 s, fault i starting between 100 (i + 1/2) and
    # 100 (i + 3/4) seconds, so at least 75 s after the one before.
    for seed in range(50):
        heavy = [f.at for f in plan(seed, 600, KINDS, TARGETS, 0) if f.kind != CONSUMER_KILL]
        assert len(heavy) == len(KINDS) - 1
        assert all(b - a >= 75 for a, b in zip(heavy, heavy[1:], strict=False))


def test_only_the_kinds_asked_for() -> None:
    faults = plan(1, 120, ["consumer_kill", "node_kill"], TARGETS, 3)
    assert Counter(f.kind for f in faults) == {"consumer_kill": 3, "node_kill": 1}


def test_an_unknown_kind_or_nothing_to_hit_is_refused_with_what_is_known() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds \\['disk_full'\\]; known: consumer"):
        plan(1, 120, ["disk_full"], TARGETS, 0)
    no_brokers = Targets(TARGETS.consumers, TARGETS.nodes, TARGETS.dcs, ())
    with pytest.raises(ValueError, match="broker_kill: the stack has nothing to hit"):
        plan(1, 120, ["broker_kill"], no_brokers, 0)
