"""The schema_migrations DAG against the live cluster."""

from __future__ import annotations

import pytest

from retail import migrations
from tests.integration.airflow import run_dag, task_states, xcom


def test_a_dry_run_lists_nothing_pending_on_an_up_to_date_schema(airflow: None) -> None:
    run = run_dag("schema_migrations", {"dry_run": True})
    assert str(run.state) == "success", task_states(run)
    result = xcom(run, "apply_migrations")
    versions = [m.version for m in migrations.load()]
    assert result == {
        "applied_before": versions,
        "pending": [],
        "applied_now": [],
        "dry_run": True,
    }


def test_an_edited_applied_migration_is_refused(
    airflow: None, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = migrations.load()[-1].path
    original = path.read_text()
    path.write_text(original + "-- an edit after the fact\n")
    try:
        run = run_dag("schema_migrations", {"dry_run": False})
    finally:
        path.write_text(original)
    assert str(run.state) == "failed"
    assert task_states(run) == {"apply_migrations": "failed"}
    out = capfd.readouterr()
    told = out.out + out.err + caplog.text
    assert f"{path.name} changed after it was applied" in told
