"""What every platform DAG shares: its owner, retries, and a start date in the past."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

OWNER = "retail-platform"
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
}
