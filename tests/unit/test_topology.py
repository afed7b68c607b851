from __future__ import annotations

from pathlib import Path

import pytest

from retail.errors import ConfigError
from retail.jolokia import dc_ownership
from retail.settings import Settings
from retail.topology import (
    MAX_RF,
    REGIONS,
    Topology,
    as_new_cluster,
    balanced_tokens,
    build_topology,
    current_topology,
    joining_token,
    parse_node_counts,
    profile_topology,
    with_node_added,
    without_node,
)


def test_test_profile_is_one_node_per_dc_with_rf_one() -> None:
    topo = profile_topology("test")
    assert [dc.name for dc in topo.datacenters] == ["eu-west", "us-east", "ap-southeast"]
    assert [len(dc.nodes) for dc in topo.datacenters] == [1, 1, 1]
    assert topo.replication() == {
        "class": "NetworkTopologyStrategy",
        "eu-west": 1,
        "us-east": 1,
        "ap-southeast": 1,
    }
    assert len(topo.brokers) == 1


def test_demo_profile_is_two_nodes_per_dc_on_two_racks() -> None:
    topo = profile_topology("demo")
    for dc in topo.datacenters:
        assert [n.rack for n in dc.nodes] == ["rack1", "rack2"]
        assert dc.replication_factor == 2


def test_replication_factor_never_exceeds_nodes_or_max() -> None:
    topo = build_topology({"eu-west": 5, "us-east": 2, "ap-southeast": 1})
    assert topo.replication() == {
        "class": "NetworkTopologyStrategy",
        "eu-west": MAX_RF,
        "us-east": 2,
        "ap-southeast": 1,
    }


def test_addresses_ports_and_tokens_are_unique_and_seeds_are_one_per_dc() -> None:
    topo = build_topology(3, brokers=3)
    nodes = topo.nodes
    assert len({n.address for n in nodes}) == len(nodes)
    assert len({n.jmx_port for n in nodes}) == len(nodes)
    assert len({n.token for n in nodes}) == len(nodes)
    assert [s.dc for s in topo.seeds] == [r.dc for r in REGIONS]
    assert all(
        n.address.startswith(f"127.0.{r.index}.")
        for r in REGIONS
        for n in topo.datacenter(r.dc).nodes
    )
    assert topo.bootstrap_servers == "127.0.10.1:9092,127.0.10.2:9092,127.0.10.3:9092"


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_balanced_tokens_split_the_ring_evenly(count: int) -> None:
    tokens = balanced_tokens(count, dc_offset=0)
    gaps = {(tokens[(i + 1) % count] - tokens[i]) % 2**64 for i in range(count)}
    assert max(gaps) - min(gaps) <= count  # equal up to integer rounding
    assert all(-(2**63) <= t < 2**63 for t in tokens)


def test_node_counts_parse_one_number_or_one_per_dc() -> None:
    assert parse_node_counts("2") == {"eu-west": 2, "us-east": 2, "ap-southeast": 2}
    assert parse_node_counts("eu-west=3,us-east=1,ap-southeast=2") == {
        "eu-west": 3,
        "us-east": 1,
        "ap-southeast": 2,
    }


@pytest.mark.parametrize(
    "spec, message",
    [
        ("eu-west=2", "missing: us-east, ap-southeast"),
        ("eu-west=2,mars=1", "unknown data center 'mars'"),
        ("eu-west:2", "expected DC=COUNT"),
        ("0", "needs 1 to"),
    ],
)
def test_bad_node_counts_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_node_counts(spec)


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="test, demo"):
        profile_topology("huge")


def test_lookup_by_name_or_address_and_a_clear_error_otherwise() -> None:
    topo = profile_topology("demo")
    assert topo.node("us-east-2") is topo.node("127.0.2.2")
    with pytest.raises(ConfigError, match="eu-west-1"):
        topo.node("eu-west-9")
    with pytest.raises(ConfigError, match="unknown data center"):
        topo.datacenter("moon")


def test_topology_survives_a_json_round_trip() -> None:
    topo = build_topology({"eu-west": 2, "us-east": 1, "ap-southeast": 3}, brokers=3)
    assert Topology.from_json(topo.to_json()) == topo


def test_clients_read_the_topology_file_the_settings_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETAIL_TOPOLOGY_FILE", raising=False)
    monkeypatch.setenv("RETAIL_STATE_DIR", str(tmp_path / "state"))
    # Unset: the file the local stack writes, so nothing changes for the stack's users.
    assert Settings().topology_path == tmp_path / "state" / "stack" / "topology.json"
    deployed = tmp_path / "etc" / "topology.json"
    monkeypatch.setenv("RETAIL_TOPOLOGY_FILE", str(deployed))
    assert Settings().topology_path == deployed
    deployed.parent.mkdir()
    topo = profile_topology("demo")
    deployed.write_text(topo.to_json())
    assert current_topology(deployed) == topo


def test_a_missing_or_broken_topology_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"retail stack up.*RETAIL_TOPOLOGY_FILE"):
        current_topology(tmp_path / "nothing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"datacenters": []}')
    with pytest.raises(ConfigError, match="is not a topology"):
        current_topology(broken)


def _ownership(topo: Topology, dc: str) -> list[float]:
    tokens = {n.address: [n.token] for n in topo.nodes}
    shares = dc_ownership(tokens, {n.address: n.dc for n in topo.nodes})
    return [shares[n.address] for n in topo.datacenter(dc).nodes]


def test_a_node_joining_a_one_node_dc_takes_exactly_half_as_a_two_node_dc_would() -> None:
    grown, node = with_node_added(profile_topology("test"), "us-east")
    assert node.name == "us-east-2" and node.address == "127.0.2.2" and node.jmx_port == 7202
    assert node.rack == "rack2" and not node.is_seed and node.auto_bootstrap
    assert node.token == balanced_tokens(2, 1)[1]
    assert _ownership(grown, "us-east") == [0.5, 0.5]
    # Only that DC changed, and its replication factor stays (a join moves no replica count).
    two = build_topology({"eu-west": 1, "us-east": 2, "ap-southeast": 1})
    assert [n.token for n in grown.nodes] == [n.token for n in two.nodes]
    assert grown.datacenter("us-east").replication_factor == 1
    assert grown.datacenter("eu-west") == profile_topology("test").datacenter("eu-west")


def test_joins_split_the_widest_range_and_never_reuse_a_token() -> None:
    topo = profile_topology("test")
    for _ in range(3):
        topo, _ = with_node_added(topo, "eu-west")
    shares = _ownership(topo, "eu-west")
    assert sorted(shares) == [0.25] * 4
    tokens = [n.token for n in topo.nodes]
    assert len(set(tokens)) == len(tokens)
    assert all(-(2**63) <= t < 2**63 for t in tokens)
    # A token another DC holds is stepped past.
    dc = topo.datacenter("eu-west")
    wanted = joining_token(dc)
    assert joining_token(dc, {wanted}) == wanted + 1


def test_a_removed_nodes_number_is_given_to_the_next_join() -> None:
    topo, _ = with_node_added(profile_topology("test"), "eu-west")
    topo, _ = with_node_added(topo, "eu-west")
    smaller = without_node(topo, "eu-west-2")
    assert [n.name for n in smaller.datacenter("eu-west").nodes] == ["eu-west-1", "eu-west-3"]
    again, node = with_node_added(smaller, "eu-west")
    assert node.name == "eu-west-2"
    assert [n.name for n in again.datacenter("eu-west").nodes] == [
        "eu-west-1",
        "eu-west-2",
        "eu-west-3",
    ]
    assert Topology.from_json(again.to_json()) == again
    # Started afresh in that shape (`retail stack up --fresh`), no node bootstraps.
    fresh = as_new_cluster(again)
    assert not any(n.auto_bootstrap for n in fresh.nodes)
    assert [n.token for n in fresh.nodes] == [n.token for n in again.nodes]


@pytest.mark.parametrize(
    ("nodes", "remove", "message"),
    [
        (1, "eu-west-1", "last node of eu-west"),
        (2, "eu-west-2", r"replication factor 2.*1 nodes"),
        (4, "eu-west-1", "seed"),
    ],
)
def test_removing_what_would_lose_data_or_the_seed_is_refused(
    nodes: int, remove: str, message: str
) -> None:
    topo = build_topology({"eu-west": nodes, "us-east": 1, "ap-southeast": 1})
    with pytest.raises(ConfigError, match=message):
        without_node(topo, remove)


def test_a_full_dc_takes_no_more_nodes() -> None:
    topo = build_topology({"eu-west": 9, "us-east": 1, "ap-southeast": 1})
    with pytest.raises(ConfigError, match="9 nodes"):
        with_node_added(topo, "eu-west")
