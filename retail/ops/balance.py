"""Balance checks: how evenly Kafka partitions and Cassandra nodes carry the load.

Kafka, per topic: each partition's rate over a recent window and its size, skew (max over mean
rate), the keys of the hottest partition (a sample, to name a hot store), consumer lag per
group and partition, and partition leaders per broker. Cassandra: each node's share of its DC's
token ring and its load, their skew per DC, the largest partition of every table, and the free
space of each node's data directory where this machine can see it.

Why rates come from ``offsets_for_times`` and not from two watermark samples a few seconds
apart: one call gives the number of messages appended since ``now - window`` on every partition,
so the rate covers the whole interval between two runs (five minutes) instead of a few seconds
of it, and the check never sleeps. It relies on message timestamps (the producers' CreateTime);
a producer with a wrong clock would shift its messages in or out of the window, which the
offsets of a well-keyed stream tolerate.

No Airflow here: the operator in ``plugins/retail_airflow/operators/balance.py`` calls
:func:`check_kafka` and :func:`check_cassandra`, then :func:`recommendations` and :func:`gauges`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from retail.credentials import Login
from retail.errors import RetailError
from retail.jolokia import (
    MAX_PARTITION_SIZE,
    STORAGE_SERVICE,
    JolokiaError,
    dc_ownership,
    jolokia_read,
    ring_view,
)
from retail.kafka import BALANCE_GROUP, ClientConfig, Topics
from retail.ops.kafka_rebalance import RebalanceError, propose
from retail.topology import Topology

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "retail"
# Keys read from the hottest partition of each topic to name its hot key.
KEY_SAMPLE = 2000
# Below this many messages in the window a topic's skew is chance, not a hot key.
MIN_MESSAGES_FOR_SKEW = 50


class BalanceError(RetailError):
    """The balance check could not read what it needs (Kafka unreachable, no topic)."""


def skew(values: Iterable[float]) -> float:
    """Max over mean: 1.0 is perfectly even; 0.0 when there is nothing (all zero or empty)."""
    vals = list(values)
    if not vals or sum(vals) <= 0:
        return 0.0
    return max(vals) / (sum(vals) / len(vals))


def metric_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The topic's name in metric names: for the platform's own topics the name without the
    prefix (``eu-west_orders``, ``deadletter``), as the metrics contract says; ``<prefix>_...``
    for topics under another prefix (a staging or test prefix), so they never share a series
    with the platform's."""
    name = Topics.named(prefix).metric_name(topic)
    return name if prefix == DEFAULT_PREFIX else f"{prefix.replace('.', '_')}_{name}"


# -- Kafka ---------------------------------------------------------------------------------------


@dataclass
class PartitionStats:
    partition: int
    messages: int  # between the low and high watermarks: what the partition holds now
    window_messages: int  # appended during the window
    rate: float  # window_messages / window seconds
    leader: int


@dataclass
class TopicStats:
    topic: str
    partitions: list[PartitionStats]
    skew: float
    hot_partition: int | None = None
    hot_partition_share: float = 0.0  # of the topic's messages in the window
    hot_keys: list[tuple[str, float]] = field(default_factory=list)  # share of the partition

    @property
    def window_messages(self) -> int:
        return sum(p.window_messages for p in self.partitions)


@dataclass
class KafkaBalance:
    window_seconds: float
    topics: list[TopicStats]
    # group -> topic -> partition -> lag; a group with no committed offset on a topic is absent
    lag: dict[str, dict[str, dict[int, int]]]
    groups_without_commits: list[str]
    leaders: dict[int, int]  # broker id -> partitions it leads (every topic of the cluster)
    missing_topics: list[str] = field(default_factory=list)
    # group -> topic -> partition -> messages between its committed offset and the log start:
    # deleted (retention) before the group read them. Only partitions where that is above 0.
    deleted_unread: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    # What the kafka_rebalance DAG would do to even these topics over the live brokers
    # (retail.ops.kafka_rebalance.propose on the metadata, sizes left out); None: not proposed.
    rebalance_moves: int | None = None
    rebalance_leader_changes: int | None = None


def hottest(rates: Mapping[int, float]) -> tuple[int | None, float]:
    """The partition with the highest rate and its share of the total (None if all idle)."""
    total = sum(rates.values())
    if total <= 0:
        return None, 0.0
    part = max(rates, key=lambda p: (rates[p], -p))
    return part, rates[part] / total


def key_shares(keys: Iterable[bytes | None], top: int = 3) -> list[tuple[str, float]]:
    """The most frequent keys of a sample and their share of it."""
    counts = Counter((k or b"").decode(errors="replace") or "<no key>" for k in keys)
    n = sum(counts.values())
    return [(k, c / n) for k, c in counts.most_common(top)] if n else []


def _consumer(client: ClientConfig, group: str) -> Consumer:
    # A group id is required by the client, but nothing is subscribed or committed with it.
    return Consumer(
        {
            **client,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )


def _sample_keys(
    consumer: Consumer, topic: str, partition: int, start: int, end: int, timeout: float
) -> list[bytes | None]:
    """Keys of the messages at offsets [start, end) of one partition (at most KEY_SAMPLE)."""
    start = max(start, end - KEY_SAMPLE)
    if end <= start:
        return []
    consumer.assign([TopicPartition(topic, partition, start)])
    keys: list[bytes | None] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is not None:
                    continue  # partition EOF, or a transient error: the deadline bounds it
                if msg.offset() >= end:
                    return keys
                keys.append(msg.key())
                if msg.offset() >= end - 1:
                    return keys
    finally:
        consumer.unassign()
    log.warning("%s[%d]: key sample incomplete after %.0fs", topic, partition, timeout)
    return keys


def check_kafka(
    client: ClientConfig,
    topics: list[str],
    groups: list[str],
    *,
    window_seconds: float = 300.0,
    timeout: float = 10.0,
    now: float | None = None,
) -> KafkaBalance:
    """Rates, sizes, skew and hot keys of ``topics``; lag of ``groups``; leaders per broker.
    ``client`` is the librdkafka config that reaches Kafka (credentials and TLS included)."""
    now = time.time() if now is None else now
    since_ms = int((now - window_seconds) * 1000)
    consumer = _consumer(client, BALANCE_GROUP)
    try:
        try:
            meta = consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise BalanceError(
                f"Kafka at {client.get('bootstrap.servers')} did not answer: {exc}"
            ) from exc
        leaders: Counter[int] = Counter()
        for tmeta in meta.topics.values():
            for pmeta in tmeta.partitions.values():
                leaders[pmeta.leader] += 1
        missing = [t for t in topics if t not in meta.topics]
        if missing:
            log.warning("topic(s) %s do not exist: nothing to measure there", ", ".join(missing))
        topics = [t for t in topics if t in meta.topics]
        moves, leader_changes = _proposal_size(meta, topics)
        watermarks: dict[str, dict[int, tuple[int, int]]] = {}
        results: list[TopicStats] = []
        for topic in topics:
            parts = sorted(meta.topics[topic].partitions)
            marks = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                for p in parts
            }
            watermarks[topic] = marks
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, since_ms) for p in parts], timeout=timeout
            )
            # -1: no message at or after the time, so nothing arrived in the window.
            start = {
                tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1]
                for tp in found
            }
            stats = [
                PartitionStats(
                    partition=p,
                    messages=marks[p][1] - marks[p][0],
                    window_messages=marks[p][1] - start[p],
                    rate=(marks[p][1] - start[p]) / window_seconds,
                    leader=meta.topics[topic].partitions[p].leader,
                )
                for p in parts
            ]
            ts = TopicStats(topic, stats, skew(s.rate for s in stats))
            ts.hot_partition, ts.hot_partition_share = hottest({s.partition: s.rate for s in stats})
            if ts.hot_partition is not None:
                hp = ts.hot_partition
                keys = _sample_keys(consumer, topic, hp, start[hp], marks[hp][1], timeout)
                ts.hot_keys = key_shares(keys)
            log.info(
                "%s: %d messages in the last %.0fs, skew %.2f, hottest partition %s",
                topic,
                ts.window_messages,
                window_seconds,
                ts.skew,
                ts.hot_partition,
            )
            results.append(ts)
    finally:
        consumer.close()

    lag: dict[str, dict[str, dict[int, int]]] = {}
    deleted: dict[str, dict[str, dict[int, int]]] = {}
    without: list[str] = []
    for group in groups if topics else []:
        gc = _consumer(client, group)
        try:
            wanted = [TopicPartition(t, p) for t in topics for p in watermarks[t]]
            committed = gc.committed(wanted, timeout=timeout)
        except KafkaException as exc:
            raise BalanceError(f"could not read the offsets of group {group}: {exc}") from exc
        finally:
            gc.close()
        per_topic: dict[str, dict[int, int]] = {}
        for tp in committed:
            if tp.offset < 0:  # this group never committed on this partition
                continue
            low, high = watermarks[tp.topic][tp.partition]
            per_topic.setdefault(tp.topic, {})[tp.partition] = max(high - tp.offset, 0)
            if tp.offset < low:
                deleted.setdefault(group, {}).setdefault(tp.topic, {})[tp.partition] = (
                    low - tp.offset
                )
        if per_topic:
            lag[group] = per_topic
        else:
            without.append(group)
    return KafkaBalance(
        window_seconds,
        results,
        lag,
        without,
        dict(leaders),
        missing,
        deleted,
        rebalance_moves=moves,
        rebalance_leader_changes=leader_changes,
    )


def _proposal_size(meta: Any, topics: list[str]) -> tuple[int | None, int | None]:
    """How many replica moves and preferred leader changes would even ``topics`` over the
    brokers of the cluster metadata ``meta``: pure arithmetic on what the check has read."""
    assignment = {
        t: {p: list(pm.replicas) for p, pm in meta.topics[t].partitions.items()} for t in topics
    }
    try:
        proposal = propose(assignment, sorted(meta.brokers))
    except RebalanceError as exc:
        log.warning("no rebalance proposal: %s", exc)
        return None, None
    return len(proposal.moves), len(proposal.leader_changes)


# -- Cassandra -----------------------------------------------------------------------------------


@dataclass
class NodeStats:
    node: str
    dc: str
    address: str
    up: bool
    ownership: float  # share of its own DC's ring, 0..1
    load_bytes: float
    disk_free_ratio: float | None  # None: the data directory is not visible from here


@dataclass
class CassandraBalance:
    nodes: list[NodeStats]
    ownership_skew: dict[str, float]
    load_skew: dict[str, float]
    largest_partition: dict[str, tuple[int, str]]  # table -> (bytes, node)
    unreachable: list[str]
    disk_not_local: list[str]
    # Per DC, the nodes joining, leaving or moving: a ring change in progress (streaming).
    changing: dict[str, int] = field(default_factory=dict)


def _is_local(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def disk_free_ratio(paths: Iterable[str]) -> float | None:
    """The lowest free ratio among the data directories, or None if none exists here."""
    ratios = []
    for p in paths:
        if Path(p).exists():
            usage = shutil.disk_usage(p)
            ratios.append(usage.free / usage.total)
    return min(ratios) if ratios else None


def _largest_partitions(node_name: str, raw: Mapping[str, Mapping[str, float]]) -> dict[str, int]:
    """``{mbean name: {"Value": n}}`` of the MaxPartitionSize pattern read -> table -> bytes."""
    out: dict[str, int] = {}
    for mbean, attrs in raw.items():
        props = dict(kv.split("=", 1) for kv in mbean.split(":", 1)[1].split(","))
        out[props["scope"]] = int(attrs.get("Value") or 0)
    return out


def check_cassandra(
    topology: Topology, keyspace: str = "retail", login: Login | None = None
) -> CassandraBalance:
    """Ownership, load, skew per DC, largest partitions and disk, through each node's Jolokia.

    The ring (tokens, loads, who is up) comes from the first node that answers; the largest
    partitions and data directories from every node that answers. A node that does not answer
    is listed as unreachable, never counted as empty. ``login`` is the agents' (Jolokia user
    ``monitor``).
    """
    dc_of = {n.address: n.dc for n in topology.nodes}
    view = None
    for node in topology.nodes:
        try:
            view = ring_view(node, login)
            break
        except JolokiaError as exc:
            log.warning("%s", exc)
    if view is None:
        raise BalanceError("no Cassandra node answered over Jolokia; is the cluster up?")
    shares = dc_ownership(view.tokens, dc_of)
    nodes: list[NodeStats] = []
    largest: dict[str, tuple[int, str]] = {}
    unreachable: list[str] = []
    not_local: list[str] = []
    pattern = MAX_PARTITION_SIZE.format(keyspace=keyspace)
    for node in topology.nodes:
        free = None
        try:
            dirs = jolokia_read(node, STORAGE_SERVICE, ["AllDataFileLocations"], login=login)
            tables = _largest_partitions(
                node.name, jolokia_read(node, pattern, ["Value"], login=login)
            )
            for table, size in tables.items():
                if size > largest.get(table, (-1, ""))[0]:
                    largest[table] = (size, node.name)
            if _is_local(node.address):
                free = disk_free_ratio(dirs["AllDataFileLocations"] or [])
            if free is None:
                not_local.append(node.name)
        except JolokiaError as exc:
            log.warning("%s", exc)
            unreachable.append(node.name)
        nodes.append(
            NodeStats(
                node=node.name,
                dc=node.dc,
                address=node.address,
                up=node.address in view.up,
                ownership=shares.get(node.address, 0.0),
                load_bytes=view.load_bytes.get(node.address, 0.0),
                disk_free_ratio=free,
            )
        )
    dcs = [dc.name for dc in topology.datacenters]
    moving = view.joining | view.leaving | view.moving
    return CassandraBalance(
        nodes=nodes,
        ownership_skew={d: skew(n.ownership for n in nodes if n.dc == d) for d in dcs},
        load_skew={d: skew(n.load_bytes for n in nodes if n.dc == d) for d in dcs},
        largest_partition=largest,
        unreachable=unreachable,
        disk_not_local=not_local,
        changing={d: sum(dc_of.get(a) == d for a in moving) for d in dcs},
    )


# -- what it means -------------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / 1024**2:.1f} MiB"


def recommendations(
    kafka: KafkaBalance | None,
    cassandra: CassandraBalance | None,
    *,
    skew_threshold: float = 8.0,
    lag_threshold: int = 10_000,
    disk_free_min: float = 0.2,
) -> list[str]:
    """Readable findings, each saying what is uneven and what to do about it."""
    out: list[str] = []
    if kafka:
        for t in kafka.topics:
            if t.window_messages < MIN_MESSAGES_FOR_SKEW or t.skew <= skew_threshold:
                continue
            line = (
                f"partition {t.hot_partition} of {t.topic} carries "
                f"{100 * t.hot_partition_share:.0f}% of the traffic "
                f"(skew {t.skew:.2f}, threshold {skew_threshold:g})"
            )
            if t.hot_keys:
                key, share = t.hot_keys[0]
                line += f"; hot key {key} ({100 * share:.0f}% of that partition's recent messages)"
            out.append(line + ": a store sending far more than the others; its consumer lags first")
        for group, topics in sorted(kafka.lag.items()):
            for topic, parts in sorted(topics.items()):
                total = sum(parts.values())
                if total > lag_threshold:
                    worst = max(parts, key=parts.__getitem__)
                    out.append(
                        f"group {group} is {total} messages behind on {topic} "
                        f"(most on partition {worst}: {parts[worst]}): add consumers to the group "
                        f"or find why it is slow"
                    )
        for group, topics in sorted(kafka.deleted_unread.items()):
            for topic, parts in sorted(topics.items()):
                out.append(
                    f"group {group}'s committed offsets on {topic} are below the log start: "
                    f"{sum(parts.values())} messages it never read were deleted by retention "
                    f"(partitions {sorted(parts)}); its consumers stall there rather than skip. "
                    "Replay them from the producers if they can, then move the group to the "
                    "log start (DESIGN.md, Durability)"
                )
        for topic in kafka.missing_topics:
            out.append(f"topic {topic} does not exist: create it with `retail topics`")
        for group in kafka.groups_without_commits:
            out.append(
                f"group {group} has committed nothing on these topics: is its consumer running?"
            )
        if kafka.rebalance_moves or kafka.rebalance_leader_changes:
            out.append(
                f"{kafka.rebalance_moves} replica move(s) and {kafka.rebalance_leader_changes} "
                "preferred leader change(s) would even these topics over the brokers: trigger "
                "the kafka_rebalance DAG (its default dry run shows them)"
            )
        if len(kafka.leaders) > 1 and skew(kafka.leaders.values()) > skew_threshold:
            out.append(
                f"partition leadership is uneven across brokers "
                f"{dict(sorted(kafka.leaders.items()))}: run a preferred leader election "
                "(kafka-leader-election --election-type PREFERRED)"
            )
    if cassandra:
        for name in cassandra.unreachable:
            out.append(f"Cassandra node {name} did not answer: `retail stack status`")
        for dc, s in sorted(cassandra.ownership_skew.items()):
            if s > 1.2:
                out.append(
                    f"token ownership in {dc} is uneven (skew {s:.2f}): move tokens to the "
                    f"balanced layout of retail/topology.py, one node at a time"
                )
        for dc, s in sorted(cassandra.load_skew.items()):
            if s > skew_threshold:
                heavy = max((n for n in cassandra.nodes if n.dc == dc), key=lambda n: n.load_bytes)
                out.append(
                    f"load in {dc} is uneven (skew {s:.2f}): {heavy.node} holds "
                    f"{_mib(heavy.load_bytes)}; check the largest partitions and compactions"
                )
        if cassandra.largest_partition:
            table, (size, node) = max(cassandra.largest_partition.items(), key=lambda kv: kv[1][0])
            if size >= 100 * 1024**2:
                out.append(
                    f"largest partition: {table} on {node}, {_mib(size)}: a hot store or day; "
                    f"split the partition key (bucket it) before it passes 100 MiB"
                )
        for n in cassandra.nodes:
            if n.disk_free_ratio is not None and n.disk_free_ratio < disk_free_min:
                out.append(
                    f"{n.node} has {100 * n.disk_free_ratio:.0f}% of its data disk free: "
                    f"add disk or nodes before compactions fail"
                )
    return out


def gauges(
    kafka: KafkaBalance | None, cassandra: CassandraBalance | None, prefix: str = DEFAULT_PREFIX
) -> dict[str, float]:
    """The StatsD gauges of the metrics contract (names without the ``retail.`` prefix)."""
    g: dict[str, float] = {}
    if kafka:
        for t in kafka.topics:
            name = metric_topic(t.topic, prefix)
            for p in t.partitions:
                g[f"balance.kafka.{name}.{p.partition}.rate"] = round(p.rate, 3)
                g[f"balance.kafka.{name}.{p.partition}.messages"] = p.messages
            g[f"balance.kafka.{name}.skew"] = round(t.skew, 4)
        for group, topics in kafka.lag.items():
            for topic, parts in topics.items():
                name = metric_topic(topic, prefix)
                for part, lag in parts.items():
                    g[f"balance.kafka.{group}.{name}.{part}.lag"] = lag
                    # 0 where nothing was lost: the alert's series exist before they fire.
                    lost = kafka.deleted_unread.get(group, {}).get(topic, {}).get(part, 0)
                    g[f"balance.kafka.{group}.{name}.{part}.deleted_unread"] = lost
        for broker, n in kafka.leaders.items():
            g[f"balance.kafka.broker.{broker}.leaders"] = n
        if kafka.rebalance_moves is not None:
            g["balance.kafka.rebalance_moves"] = kafka.rebalance_moves
        if kafka.rebalance_leader_changes is not None:
            g["balance.kafka.rebalance_leader_changes"] = kafka.rebalance_leader_changes
    if cassandra:
        reachable = [n for n in cassandra.nodes if n.node not in cassandra.unreachable]
        for n in reachable:
            g[f"balance.cassandra.{n.dc}.{n.node}.ownership"] = round(n.ownership, 4)
            g[f"balance.cassandra.{n.dc}.{n.node}.load_bytes"] = n.load_bytes
            if n.disk_free_ratio is not None:
                g[f"balance.cassandra.{n.dc}.{n.node}.disk_free_ratio"] = round(
                    n.disk_free_ratio, 4
                )
        for dc, s in cassandra.ownership_skew.items():
            g[f"balance.cassandra.{dc}.ownership_skew"] = round(s, 4)
        for dc, s in cassandra.load_skew.items():
            g[f"balance.cassandra.{dc}.load_skew"] = round(s, 4)
        for table, (size, _) in cassandra.largest_partition.items():
            g[f"balance.cassandra.{table}.largest_partition_bytes"] = size
        for dc, n in cassandra.changing.items():
            g[f"balance.cassandra.{dc}.nodes_changing"] = n
    return g


def to_dict(kafka: KafkaBalance | None, cassandra: CassandraBalance | None) -> dict[str, object]:
    """A JSON-serialisable result (for XCom): lag keys become strings."""
    out: dict[str, object] = {}
    if kafka:
        k = asdict(kafka)
        for key, per_group in (("lag", kafka.lag), ("deleted_unread", kafka.deleted_unread)):
            k[key] = {
                g: {t: {str(p): v for p, v in parts.items()} for t, parts in topics.items()}
                for g, topics in per_group.items()
            }
        k["leaders"] = {str(b): n for b, n in kafka.leaders.items()}
        k["topics"] = [
            {
                "topic": t.topic,
                "skew": round(t.skew, 4),
                "window_messages": t.window_messages,
                "hot_partition": t.hot_partition,
                "hot_partition_share": round(t.hot_partition_share, 4),
                "hot_keys": [[key, round(s, 4)] for key, s in t.hot_keys],
                "partitions": [asdict(p) for p in t.partitions],
            }
            for t in kafka.topics
        ]
        out["kafka"] = k
    if cassandra:
        c = asdict(cassandra)
        c["largest_partition"] = {
            t: {"bytes": size, "node": node}
            for t, (size, node) in cassandra.largest_partition.items()
        }
        out["cassandra"] = c
    return out


def summary_lines(kafka: KafkaBalance | None, cassandra: CassandraBalance | None) -> list[str]:
    """A short readable picture of the balance, one line per topic, DC and group."""
    lines: list[str] = []
    if kafka:
        for t in kafka.topics:
            lines.append(
                f"{t.topic}: {t.window_messages} messages in {kafka.window_seconds:.0f}s over "
                f"{len(t.partitions)} partitions, skew {t.skew:.2f}, hottest partition "
                f"{t.hot_partition} ({100 * t.hot_partition_share:.0f}%)"
                + (f", top key {t.hot_keys[0][0]}" if t.hot_keys else "")
            )
        for group, topics in sorted(kafka.lag.items()):
            total = sum(sum(p.values()) for p in topics.values())
            lines.append(f"group {group}: lag {total}")
        lines.append(f"leaders per broker: {dict(sorted(kafka.leaders.items()))}")
    if cassandra:
        for n in cassandra.nodes:
            disk = (
                f"{100 * n.disk_free_ratio:.0f}% disk free"
                if n.disk_free_ratio is not None
                else "disk not visible from here"
            )
            lines.append(
                f"{n.node} ({n.dc}, {'up' if n.up else 'DOWN'}): owns "
                f"{100 * n.ownership:.1f}% of its DC, load {_mib(n.load_bytes)}, {disk}"
            )
        for dc in sorted(cassandra.ownership_skew):
            members = [n for n in cassandra.nodes if n.dc == dc]
            lines.append(
                f"{dc}: {len(members)} node(s), load {_mib(sum(n.load_bytes for n in members))}, "
                f"ownership skew {cassandra.ownership_skew[dc]:.2f}, "
                f"load skew {cassandra.load_skew[dc]:.2f}"
            )
        if cassandra.largest_partition:
            table, (size, node) = max(cassandra.largest_partition.items(), key=lambda kv: kv[1][0])
            lines.append(f"largest partition: {table} on {node}, {size} bytes")
    return lines
