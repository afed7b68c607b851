"""Balance arithmetic, findings and gauge names, without servers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from retail.ops.balance import (
    CassandraBalance,
    KafkaBalance,
    NodeStats,
    PartitionStats,
    TopicStats,
    _largest_partitions,
    disk_free_ratio,
    gauges,
    hottest,
    key_shares,
    metric_topic,
    recommendations,
    skew,
    summary_lines,
    to_dict,
)
from retail.settings import PROJECT_ROOT

MAPPING = PROJECT_ROOT / "monitoring" / "statsd" / "mapping.yml"


def test_skew_is_max_over_mean_and_zero_when_idle() -> None:
    assert skew([1, 1, 1, 1]) == 1.0
    assert skew([4, 0, 0, 0]) == 4.0
    assert skew([3, 1]) == pytest.approx(1.5)
    assert skew([0, 0]) == 0.0
    assert skew([]) == 0.0


def test_platform_topics_keep_their_short_name_others_carry_their_prefix() -> None:
    assert metric_topic("retail.eu-west.orders") == "eu-west_orders"
    assert metric_topic("retail.deadletter") == "deadletter"
    assert metric_topic("it1234.us-east.inventory", "it1234") == "it1234_us-east_inventory"


def test_hottest_partition_and_its_share() -> None:
    assert hottest({0: 1.0, 1: 3.0, 2: 0.0}) == (1, 0.75)
    assert hottest({0: 0.0, 1: 0.0}) == (None, 0.0)


def test_key_shares_rank_the_sample() -> None:
    keys = [b"store-0017"] * 6 + [b"store-0001"] * 3 + [None]
    assert key_shares(keys, top=2) == [("store-0017", 0.6), ("store-0001", 0.3)]
    assert key_shares([]) == []


def _kafka(rates: list[float], hot_key: str = "store-0017") -> KafkaBalance:
    parts = [PartitionStats(p, 1000 + p, int(r * 300), r, leader=1) for p, r in enumerate(rates)]
    part, share = hottest({p.partition: p.rate for p in parts})
    topic = TopicStats("retail.eu-west.orders", parts, skew(rates), part, share, [(hot_key, 0.9)])
    return KafkaBalance(
        300.0,
        [topic],
        {"retail-eu-west": {"retail.eu-west.orders": {0: 5, 3: 20_000}}},
        ["retail-us-east"],
        {1: 12},
        rebalance_moves=4,
        rebalance_leader_changes=2,
    )


def _cassandra() -> CassandraBalance:
    nodes = [
        NodeStats("eu-west-1", "eu-west", "127.0.1.1", True, 0.5, 3e9, 0.1),
        NodeStats("eu-west-2", "eu-west", "127.0.1.2", True, 0.5, 1e9, None),
    ]
    return CassandraBalance(
        nodes,
        {"eu-west": 1.0},
        {"eu-west": skew([3e9, 1e9])},
        {"orders_by_store_day": (200 * 1024**2, "eu-west-1"), "orders": (900, "eu-west-2")},
        [],
        ["eu-west-2"],
        {"eu-west": 1},  # eu-west-2 still joining
    )


def test_a_hot_partition_is_named_with_its_share_and_key() -> None:
    advice = recommendations(_kafka([1, 1, 1, 9, 1, 1]), None, skew_threshold=1.5)
    assert advice[0].startswith(
        "partition 3 of retail.eu-west.orders carries 64% of the traffic "
        "(skew 3.86, threshold 1.5); hot key store-0017"
    )
    assert any("retail-eu-west is 20005 messages behind" in a for a in advice)
    assert any("group retail-us-east has committed nothing" in a for a in advice)
    moves = "4 replica move(s) and 2 preferred leader change(s)"
    assert any(a.startswith(moves) and "kafka_rebalance" in a for a in advice)


def test_even_traffic_or_a_trickle_gives_no_skew_finding() -> None:
    assert not any("carries" in a for a in recommendations(_kafka([2] * 6), None))
    trickle = _kafka([0.01, 0, 0, 0.05, 0, 0])  # 18 messages: chance, not a hot key
    assert not any("carries" in a for a in recommendations(trickle, None))


def test_cassandra_findings_name_the_node_table_and_disk() -> None:
    advice = "\n".join(recommendations(None, _cassandra()))
    assert "load in eu-west is uneven (skew 1.50)" not in advice  # at the threshold: fine
    assert "largest partition: orders_by_store_day on eu-west-1, 200.0 MiB" in advice
    assert "eu-west-1 has 10% of its data disk free" in advice


def _mapped(name: str, mappings: list[dict]) -> tuple[str, dict[str, str]] | None:
    """What statsd_exporter's glob mapping makes of a gauge (first match wins, as it does for
    same-length globs listed in order)."""
    for m in mappings:
        if m.get("match_type") == "regex" or m.get("match_metric_type") not in (None, "gauge"):
            continue
        pattern = "^" + re.escape(m["match"]).replace(r"\*", "([^.]+)") + "$"
        found = re.match(pattern, name)
        if found:
            labels = {
                k: re.sub(r"\$(\d+)", lambda g, f=found: f.group(int(g.group(1))), v)
                for k, v in (m.get("labels") or {}).items()
            }
            return m["name"], labels
    return None


def test_every_gauge_maps_to_a_labelled_prometheus_metric() -> None:
    mappings = yaml.safe_load(Path(MAPPING).read_text())["mappings"]
    sent = gauges(_kafka([1, 1, 1, 9, 1, 1]), _cassandra())
    got = {name: _mapped(f"retail.{name}", mappings) for name in sent}
    assert None not in got.values(), [n for n, v in got.items() if v is None]
    assert got["balance.kafka.eu-west_orders.skew"] == (
        "retail_balance_kafka_skew_ratio",
        {"topic": "eu-west_orders"},
    )
    assert got["balance.kafka.eu-west_orders.3.rate"] == (
        "retail_balance_kafka_partition_rate",
        {"topic": "eu-west_orders", "partition": "3"},
    )
    assert got["balance.kafka.retail-eu-west.eu-west_orders.3.lag"] == (
        "retail_balance_kafka_consumer_lag",
        {"group": "retail-eu-west", "topic": "eu-west_orders", "partition": "3"},
    )
    assert got["balance.kafka.broker.1.leaders"] == (
        "retail_balance_kafka_leaders",
        {"broker": "1"},
    )
    assert got["balance.cassandra.eu-west.eu-west-1.ownership"] == (
        "retail_balance_cassandra_ownership_ratio",
        {"dc": "eu-west", "node": "eu-west-1"},
    )
    assert got["balance.cassandra.orders.largest_partition_bytes"] == (
        "retail_balance_cassandra_largest_partition_bytes",
        {"table": "orders"},
    )
    assert got["balance.cassandra.eu-west.nodes_changing"] == (
        "retail_balance_cassandra_nodes_changing",
        {"dc": "eu-west"},
    )
    assert sent["balance.cassandra.eu-west.nodes_changing"] == 1
    assert got["balance.kafka.rebalance_moves"] == ("retail_balance_kafka_rebalance_moves", {})
    assert sent["balance.kafka.rebalance_moves"] == 4
    # A node whose disk is not visible from here sends no disk gauge rather than a made-up one.
    assert "balance.cassandra.eu-west.eu-west-2.disk_free_ratio" not in sent


def test_summary_and_xcom_form_are_readable_and_serialisable(tmp_path: Path) -> None:
    import json

    kafka, cassandra = _kafka([1, 1, 1, 9, 1, 1]), _cassandra()
    lines = summary_lines(kafka, cassandra)
    assert lines[0].startswith("retail.eu-west.orders: 4200 messages in 300s over 6 partitions")
    assert "eu-west-2 (eu-west, up): owns 50.0% of its DC, load 953.7 MiB, disk not visible" in (
        "\n".join(lines)
    )
    assert "eu-west: 2 node(s), load 3814.7 MiB, ownership skew 1.00, load skew 1.50" in lines
    data = json.loads(json.dumps(to_dict(kafka, cassandra)))
    assert data["kafka"]["topics"][0]["hot_keys"] == [["store-0017", 0.9]]
    assert data["cassandra"]["largest_partition"]["orders"] == {"bytes": 900, "node": "eu-west-2"}


def test_disk_free_ratio_of_a_local_directory(tmp_path: Path) -> None:
    ratio = disk_free_ratio([str(tmp_path)])
    assert ratio is not None and 0.0 < ratio <= 1.0
    assert disk_free_ratio([str(tmp_path / "absent")]) is None


def test_largest_partitions_from_a_jolokia_pattern_read() -> None:
    bean = "org.apache.cassandra.metrics:type=Table,keyspace=retail,scope={},name=MaxPartitionSize"
    raw = {bean.format("orders"): {"Value": 1234}, bean.format("stock_by_store"): {"Value": 0}}
    assert _largest_partitions("n", raw) == {"orders": 1234, "stock_by_store": 0}


def test_a_group_committed_below_the_log_start_is_a_finding_and_a_gauge() -> None:
    kafka = _kafka([1, 1, 1, 1, 1, 1])
    kafka.deleted_unread = {"retail-eu-west": {"retail.eu-west.orders": {3: 120}}}
    found = [f for f in recommendations(kafka, None) if "below the log start" in f]
    assert found and "120 messages it never read" in found[0] and "[3]" in found[0]
    got = gauges(kafka, None)
    assert got["balance.kafka.retail-eu-west.eu-west_orders.3.deleted_unread"] == 120
    assert got["balance.kafka.retail-eu-west.eu-west_orders.0.deleted_unread"] == 0
    assert not [f for f in recommendations(_kafka([1, 1, 1, 1, 1, 1]), None) if "log start" in f]
