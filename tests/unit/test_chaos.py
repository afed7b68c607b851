"""The chaos schedule: seeded, every kind asked for, within the run, heavy faults one by one."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime

import pytest

from retail.chaos import (
    CONSUMER_KILL,
    HOLD,
    KINDS,
    SCHEDULER_KILL,
    ChaosResult,
    Done,
    Fault,
    Findings,
    Targets,
    plan,
    run_window,
)
from retail.generator import StreamGenerator

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
        assert all(b - a >= 75 for a, b in itertools.pairwise(heavy))


def test_only_the_kinds_asked_for() -> None:
    faults = plan(1, 120, ["consumer_kill", "node_kill"], TARGETS, 3)
    assert Counter(f.kind for f in faults) == {"consumer_kill": 3, "node_kill": 1}


def test_an_unknown_kind_or_nothing_to_hit_is_refused_with_what_is_known() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds \\['disk_full'\\]; known: consumer"):
        plan(1, 120, ["disk_full"], TARGETS, 0)
    no_brokers = Targets(TARGETS.consumers, TARGETS.nodes, TARGETS.dcs, ())
    with pytest.raises(ValueError, match="broker_kill: the stack has nothing to hit"):
        plan(1, 120, ["broker_kill"], no_brokers, 0)


def _result(detail: str = "", **findings: int) -> ChaosResult:
    f = Findings(
        **{
            "produced": 100,
            "written": 100,
            "lost": 0,
            "duplicated": 0,
            "rollup_buckets_wrong": 0,
            "invalid": 5,
            "dead_letters_missing": 0,
            **findings,
        }
    )
    done = Done(Fault(10.0, SCHEDULER_KILL, "airflow-scheduler", 0.0), 10.0, 12.0, 30.0, detail)
    return ChaosResult(600.0, f, [done], consumer_restarts=0)


def test_any_loss_duplicate_wrong_bucket_missing_dead_letter_or_failed_run_fails_the_run() -> None:
    assert _result("balance_check run success").ok
    for figure in ("lost", "duplicated", "rollup_buckets_wrong", "dead_letters_missing"):
        assert not _result(**{figure: 1}).ok, figure
    assert not _result("balance_check run failed").ok
    figures = _result("balance_check run success").to_dict()
    assert figures["faults_injected"] == 1 and figures["longest_recovery_s"] == 30.0
    assert figures["faults_by_kind"] == {SCHEDULER_KILL: 1}


def test_the_rollup_window_is_the_whole_hours_of_the_events() -> None:
    def at(hh: int, mm: int) -> datetime:
        return datetime(2026, 11, 30, hh, mm, 7, tzinfo=UTC)

    gen = StreamGenerator(seed=1, start=at(9, 58), events_per_second=1)
    events = list(gen.events(300))  # 9:58 to past 10:02
    window = run_window(events)
    assert (window.start, window.end) == (at(9, 0).replace(second=0), at(11, 0).replace(second=0))


def test_an_event_missing_in_its_own_dc_before_the_repair_fails_the_run() -> None:
    repaired = _result()
    repaired.findings.lost_before_repair = 12  # another DC needed the repair: not a loss
    assert repaired.ok
    repaired.findings.lost_in_home_dc_before_repair = 1
    assert not repaired.ok
