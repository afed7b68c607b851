"""The consumers read at the cheapest consistency that still overlaps their writes' quorum."""

from __future__ import annotations

import pytest

from retail.cassandra import read_level_for


@pytest.mark.parametrize(
    "write, rf, read",
    [
        ("LOCAL_QUORUM", 1, "LOCAL_ONE"),  # the test profile: one replica per DC
        ("LOCAL_QUORUM", 2, "LOCAL_ONE"),  # the demo profile: a quorum of two is both
        ("LOCAL_QUORUM", 3, "LOCAL_QUORUM"),  # 2 + 2 > 3; 2 + 1 is not
        ("local_quorum", 5, "LOCAL_QUORUM"),
        ("ALL", 3, "LOCAL_ONE"),
        ("LOCAL_ONE", 2, "LOCAL_QUORUM"),  # one replica written: ask both
        ("LOCAL_ONE", 3, "ALL"),  # ... or all three (no level says "all of this DC")
        ("EACH_QUORUM", 3, "LOCAL_QUORUM"),  # unknown here: the safe default
    ],
)
def test_reads_overlap_the_write_quorum(write: str, rf: int, read: str) -> None:
    assert read_level_for(write, rf) == read
