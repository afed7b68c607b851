"""A short fuzz of the live pipeline (``retail fuzz`` runs 10,000 on the demo stack): hostile
messages among valid events into a run's own topics, real consumers, the check from outside."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from retail.fuzz import KINDS, hostile_messages, produce, reconcile, wait_consumed
from retail.generator import StreamGenerator
from tests.integration.pipeline import PipelineRun


def test_hostile_messages_all_reach_the_dead_letter_topic_and_valid_ones_all_land(
    run: PipelineRun,
) -> None:
    now = datetime.now(UTC)
    events = list(StreamGenerator(seed=21, start=now).events(1_600))
    valid, base = events[:800], events[800:]
    hostile = list(hostile_messages(base, run.topics, seed=21, now=now))
    assert set(Counter(h.kind for h in hostile)) >= set(KINDS) - {"oversized"}
    run.start_all()
    pids = {name: p.pid() for name, p in run.consumers.items()}
    sent = produce(run.topology, valid, hostile, run.topics, seed=21)
    wait_consumed(run.topology, run.topics, timeout=300)
    result = reconcile(run.topology, run.topics, sent)
    # The same processes, alive throughout: no hostile message crashed one.
    assert {name: p.pid() for name, p in run.consumers.items() if p.alive()} == pids
    assert result.ok, "\n".join([result.summary(), *result.examples])
    assert result.dead_lettered == len(hostile) and result.valid_written == len(valid)
