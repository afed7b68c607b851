"""The one schema-agreement wait every schema change goes through (migrations, view rebuilds,
replication fixes): it asks the driver's control connection, and says what to do when late."""

from __future__ import annotations

from typing import Any

import pytest

from retail.cassandra import SchemaAgreementError, wait_for_schema_agreement
from retail.errors import RetailError


class FakeCluster:
    max_schema_agreement_wait = 10

    def __init__(self, agrees: bool) -> None:
        self.asked: list[Any] = []
        outer = self

        class ControlConnection:
            @staticmethod
            def wait_for_schema_agreement(wait_time: float) -> bool:
                outer.asked.append(wait_time)
                return agrees

        self.control_connection = ControlConnection()


def test_agreement_returns_how_long_it_took() -> None:
    cluster = FakeCluster(agrees=True)
    assert wait_for_schema_agreement(cluster, "creating t") >= 0  # type: ignore[arg-type]
    assert cluster.asked == [120]


def test_late_agreement_raises_the_callers_error_with_what_to_do() -> None:
    class ViewError(RetailError):
        pass

    cluster = FakeCluster(agrees=False)
    with pytest.raises(SchemaAgreementError, match=r"within 30s after creating t; check"):
        wait_for_schema_agreement(cluster, "creating t", timeout=30)  # type: ignore[arg-type]
    with pytest.raises(ViewError, match=r"slow or down; the task retries$"):
        wait_for_schema_agreement(
            cluster,  # type: ignore[arg-type]
            "dropping v",
            then="; the task retries",
            error=ViewError,
        )
    # No timeout: the driver's own wait.
    with pytest.raises(SchemaAgreementError, match="within 10s"):
        wait_for_schema_agreement(cluster, "altering ks", timeout=None)  # type: ignore[arg-type]
    assert cluster.asked == [30, 120, 10]
