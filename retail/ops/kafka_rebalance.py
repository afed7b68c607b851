"""Kafka partition and leader balancing: the proposal, as pure logic.

From a topic's current replica assignment (``{partition: [broker ids]}``, the first broker the
preferred leader), the live brokers and the partitions' sizes, :func:`propose` computes where
every replica should be so that, **per topic**, each live broker carries an even share (within
one) of the replicas and of the preferred leaders, while moving as few replicas, and among
equally few the fewest bytes, as it can:

- a partition keeps its replication factor, and never holds two replicas on one broker;
- a replica on a broker that is not live always moves;
- the brokers that already carry the most keep the "one more" slots of an uneven division, so
  the number of moves is the sum of every broker's excess over its share: the least possible;
- from an over-full broker the smallest partition that can go moves first (bytes are what the
  throttle spends its time on);
- preferred leaders are then evened by reordering replica lists only (no data moves), along the
  shortest chains of changes, keeping each partition's current leader where it can.

The result names every replica move with its bytes, and renders Kafka's reassignment JSON (the
``--reassignment-json-file`` of ``kafka-reassign-partitions``). Applying it is
:mod:`retail.ops.kafka_reassign`; no I/O here.

Why the keys stay where they are: a reassignment moves a partition's *replicas* between brokers,
never a message between partitions, so a store's events keep their partition and their order.
Growing a topic's partition count does move keys (:func:`retail.kafka.add_partitions` refuses
it without a plan).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from retail.errors import RetailError

# topic -> partition -> replicas (broker ids), the first the preferred leader
Assignment = Mapping[str, Mapping[int, Sequence[int]]]


class RebalanceError(RetailError):
    """A rebalance that cannot be proposed or applied as asked."""


@dataclass(frozen=True)
class Move:
    """One replica of ``topic``/``partition`` going from broker ``source`` to ``target``."""

    topic: str
    partition: int
    source: int
    target: int
    bytes: int


@dataclass
class Proposal:
    """Where the replicas are and where they should be, and what that takes."""

    brokers: list[int]
    before: dict[str, dict[int, list[int]]]
    after: dict[str, dict[int, list[int]]]
    moves: list[Move] = field(default_factory=list)
    # Partitions whose preferred leader changes (a reordered replica list, or a moved leader).
    leader_changes: list[tuple[str, int, int, int]] = field(default_factory=list)
    # Topics whose leaders could not be evened with the replicas where they are.
    uneven_leaders: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[tuple[str, int]]:
        """The partitions whose replica list changes (set or order), sorted."""
        return sorted(
            (t, p)
            for t, parts in self.after.items()
            for p, r in parts.items()
            if list(self.before[t][p]) != r
        )

    @property
    def bytes_to_move(self) -> int:
        return sum(m.bytes for m in self.moves)

    @property
    def empty(self) -> bool:
        return not self.changed


def replica_counts(parts: Mapping[int, Sequence[int]], brokers: Sequence[int]) -> dict[int, int]:
    """Replicas per broker (every broker of ``brokers`` present, 0 if it holds none)."""
    counts = dict.fromkeys(brokers, 0)
    for replicas in parts.values():
        for b in replicas:
            counts[b] = counts.get(b, 0) + 1
    return counts


def leader_counts(parts: Mapping[int, Sequence[int]], brokers: Sequence[int]) -> dict[int, int]:
    """Preferred leaders (first replicas) per broker (every broker of ``brokers`` present)."""
    counts = dict.fromkeys(brokers, 0)
    for replicas in parts.values():
        if replicas:
            counts[replicas[0]] = counts.get(replicas[0], 0) + 1
    return counts


def is_even(counts: Mapping[int, int]) -> bool:
    """Whether every broker's count is within one of every other's."""
    return not counts or max(counts.values()) - min(counts.values()) <= 1


def _targets(current: Mapping[int, int], brokers: Sequence[int], total: int) -> dict[int, int]:
    """Each live broker's share of ``total``: ``total // n``, plus one for the ``total % n``
    brokers that carry the most now (so they keep it: fewer moves)."""
    base, extra = divmod(total, len(brokers))
    ranked = sorted(brokers, key=lambda b: (-current.get(b, 0), b))
    return {b: base + (1 if i < extra else 0) for i, b in enumerate(ranked)}


def _place_replicas(
    topic: str,
    parts: dict[int, list[int]],
    brokers: list[int],
    sizes: Mapping[tuple[str, int], int],
) -> list[Move]:
    """Move replicas of ``parts`` (in place) until every live broker holds its share."""
    live = set(brokers)
    counts = replica_counts(parts, brokers)
    total = sum(len(r) for r in parts.values())
    target = _targets({b: c for b, c in counts.items() if b in live}, brokers, total)
    for b in counts:
        target.setdefault(b, 0)  # a broker that is gone keeps nothing
    moves: list[Move] = []

    def size(p: int) -> int:
        return sizes.get((topic, p), 0)

    while True:
        over = sorted((b for b in counts if counts[b] > target[b]), key=lambda b: (b in live, b))
        if not over:
            return moves
        source = over[0]  # a broker that is gone first, then by id: deterministic
        under = [b for b in brokers if counts[b] < target[b]]
        # The smallest partition on ``source`` that some under-full broker does not hold yet.
        # One always exists: ``source`` holds more partitions than any under-full broker.
        choices = sorted(
            (size(p), p, u)
            for p, replicas in parts.items()
            if source in replicas
            for u in under
            if u not in replicas
        )
        if not choices:
            raise RebalanceError(
                f"{topic}: no replica of broker {source} can move to {under}; the topic's "
                f"replication factor exceeds the live brokers {brokers}"
            )
        _, p, dest = min(choices, key=lambda c: (c[0], c[1], counts[c[2]] - target[c[2]], c[2]))
        replicas = parts[p]
        replicas[replicas.index(source)] = dest  # same position: a moved leader stays leader
        counts[source] -= 1
        counts[dest] += 1
        moves.append(Move(topic, p, source, dest, size(p)))


def _even_leaders(parts: dict[int, list[int]], brokers: list[int]) -> bool:
    """Reorder replica lists (in place) until preferred leaders are within one per broker;
    returns whether they are. Each step shifts one leadership along the shortest chain from a
    broker with the most to one with at least two fewer (partition ``p`` led by ``x`` and
    replicated on ``y`` passes to ``y``), so few partitions change leader; each step lowers
    the sum of squared counts, so it ends."""
    while True:
        counts = leader_counts(parts, brokers)
        top = max(counts.values())
        if top - min(counts.values()) <= 1:
            return True
        path = _leader_path(parts, brokers, counts, top)
        if path is None:
            return False
        for p, new_leader in path:
            replicas = parts[p]
            replicas.remove(new_leader)
            replicas.insert(0, new_leader)


def _leader_path(
    parts: Mapping[int, list[int]], brokers: list[int], counts: Mapping[int, int], top: int
) -> list[tuple[int, int]] | None:
    """Breadth first from the brokers leading ``top`` partitions to one leading ``top - 2`` or
    fewer: the (partition, new leader) changes along the way, or None if there is no chain."""
    led: dict[int, list[int]] = {b: [] for b in brokers}
    for p in sorted(parts):
        led.setdefault(parts[p][0], []).append(p)
    start = [b for b in brokers if counts[b] == top]
    came: dict[int, tuple[int, int] | None] = dict.fromkeys(start)
    queue = deque(start)
    while queue:
        x = queue.popleft()
        for p in led.get(x, []):
            for y in parts[p][1:]:
                if y in came or y not in counts:
                    continue
                came[y] = (x, p)
                if counts[y] <= top - 2:
                    path: list[tuple[int, int]] = []
                    node = y
                    while came[node] is not None:
                        prev, part = came[node]  # type: ignore[misc]
                        path.append((part, node))
                        node = prev
                    return path
                queue.append(y)
    return None


def propose(
    assignment: Assignment,
    brokers: Sequence[int],
    sizes: Mapping[tuple[str, int], int] | None = None,
) -> Proposal:
    """The proposal that evens ``assignment`` over the live ``brokers``, topic by topic.

    ``sizes``: bytes of each (topic, partition), to move the smallest first and to report what
    the moves cost; missing ones count as 0. Raises :class:`RebalanceError` when a partition
    has more replicas than there are live brokers (nothing could hold them all).
    """
    live = sorted(set(brokers))
    if not live:
        raise RebalanceError("no live broker to place replicas on; is Kafka up?")
    sizes = sizes or {}
    before = {t: {p: list(r) for p, r in parts.items()} for t, parts in assignment.items()}
    after = {t: {p: list(r) for p, r in parts.items()} for t, parts in assignment.items()}
    proposal = Proposal(brokers=live, before=before, after=after)
    for topic in sorted(after):
        parts = after[topic]
        for p, replicas in sorted(parts.items()):
            if len(set(replicas)) != len(replicas):
                raise RebalanceError(f"{topic}[{p}] lists a broker twice: {replicas}")
            if len(replicas) > len(live):
                raise RebalanceError(
                    f"{topic}[{p}] has {len(replicas)} replicas but only {len(live)} live "
                    f"brokers {live}: start the missing brokers before rebalancing"
                )
        proposal.moves += _place_replicas(topic, parts, live, sizes)
        if not _even_leaders(parts, live):
            proposal.uneven_leaders.append(topic)
        for p in sorted(parts):
            old, new = before[topic][p][0], parts[p][0]
            if old != new:
                proposal.leader_changes.append((topic, p, old, new))
    return proposal


def reassignment_json(proposal: Proposal) -> dict[str, Any]:
    """Kafka's reassignment file for the partitions whose replica list changes (a reordered
    list too: that is how a preferred leader changes); ``log_dirs`` ``any``, the broker's own
    choice. Empty ``partitions`` when nothing changes."""
    return {
        "version": 1,
        "partitions": [
            {
                "topic": t,
                "partition": p,
                "replicas": proposal.after[t][p],
                "log_dirs": ["any"] * len(proposal.after[t][p]),
            }
            for t, p in proposal.changed
        ],
    }


def human_bytes(n: float) -> str:
    """``512 B``, ``3.0 KiB``, ``1.2 MiB``, ``4.0 GiB``."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def summary_lines(proposal: Proposal) -> list[str]:
    """What the proposal does, readable: per topic replicas and leaders per broker before and
    after, then every move with its bytes."""
    lines = [
        f"{len(proposal.moves)} replica move(s), {human_bytes(proposal.bytes_to_move)} to copy, "
        f"{len(proposal.leader_changes)} preferred leader change(s) over brokers "
        f"{proposal.brokers}"
    ]
    for topic in sorted(proposal.after):
        b, a = proposal.before[topic], proposal.after[topic]
        lines.append(
            f"{topic}: replicas per broker {replica_counts(b, proposal.brokers)} -> "
            f"{replica_counts(a, proposal.brokers)}, leaders {leader_counts(b, proposal.brokers)}"
            f" -> {leader_counts(a, proposal.brokers)}"
        )
    for m in proposal.moves:
        lines.append(
            f"move {m.topic}[{m.partition}] from broker {m.source} to {m.target} "
            f"({human_bytes(m.bytes)})"
        )
    for topic in proposal.uneven_leaders:
        lines.append(
            f"{topic}: leaders cannot be evened with its replicas where they are; "
            "its replication factor leaves too few choices"
        )
    if proposal.empty:
        lines.append("balanced: nothing to move")
    return lines


def to_dict(proposal: Proposal) -> dict[str, Any]:
    """A JSON-serialisable proposal (for XCom): partition keys become strings."""
    return {
        "brokers": proposal.brokers,
        "moves": [
            {
                "topic": m.topic,
                "partition": m.partition,
                "from": m.source,
                "to": m.target,
                "bytes": m.bytes,
            }
            for m in proposal.moves
        ],
        "bytes_to_move": proposal.bytes_to_move,
        "leader_changes": [
            {"topic": t, "partition": p, "from": old, "to": new}
            for t, p, old, new in proposal.leader_changes
        ],
        "uneven_leaders": proposal.uneven_leaders,
        "before": _str_keys(proposal.before),
        "after": _str_keys(proposal.after),
        "reassignment": reassignment_json(proposal),
    }


def _str_keys(a: Mapping[str, Mapping[int, list[int]]]) -> dict[str, dict[str, list[int]]]:
    return {t: {str(p): list(r) for p, r in sorted(parts.items())} for t, parts in a.items()}


def counts_summary(assignment: Assignment, brokers: Sequence[int]) -> dict[str, Any]:
    """Replicas and leaders per broker, per topic: what a user checks after a rebalance."""
    return {
        t: {
            "replicas": replica_counts(parts, brokers),
            "leaders": leader_counts(parts, brokers),
        }
        for t, parts in assignment.items()
    }
