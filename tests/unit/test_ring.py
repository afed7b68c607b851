from __future__ import annotations

import pytest

from retail.jolokia import RingView, _parse_load, dc_ownership, endpoint_address
from retail.topology import balanced_tokens


def test_dc_ownership_is_each_nodes_share_of_its_own_dcs_ring() -> None:
    tokens = {
        "a1": [balanced_tokens(2, 0)[0]],
        "a2": [balanced_tokens(2, 0)[1]],
        "b1": [balanced_tokens(1, 1)[0]],
    }
    shares = dc_ownership(tokens, {"a1": "A", "a2": "A", "b1": "B"})
    assert shares == pytest.approx({"a1": 0.5, "a2": 0.5, "b1": 1.0})


def test_an_unbalanced_dc_shows_in_ownership() -> None:
    ring = 2**64
    tokens = {"x": [-(2**63)], "y": [-(2**63) + ring // 4]}
    shares = dc_ownership(tokens, {"x": "A", "y": "A"})
    assert shares["y"] == pytest.approx(0.25)
    assert shares["x"] == pytest.approx(0.75)


def test_nodes_without_tokens_own_nothing() -> None:
    assert dc_ownership({}, {"x": "A"}) == {"x": 0.0}


def test_ring_view_states_read_like_nodetool() -> None:
    view = RingView(
        observer="1",
        up=frozenset({"1", "2", "4"}),
        down=frozenset({"3"}),
        joining=frozenset({"4"}),
        leaving=frozenset(),
        moving=frozenset(),
        load_bytes={},
        tokens={},
    )
    assert [view.state(a) for a in "1234"] == ["UN", "UN", "DN", "UJ"]


def test_jmx_values_parse() -> None:
    assert endpoint_address("/127.0.1.1:7000") == "127.0.1.1"
    assert endpoint_address("127.0.2.3:7000") == "127.0.2.3"
    assert _parse_load("127.86 KiB") == pytest.approx(127.86 * 1024)
    assert _parse_load("2 GiB") == 2 * 1024**3
    assert _parse_load("garbage") == 0.0
