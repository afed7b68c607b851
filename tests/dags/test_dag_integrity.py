"""Every DAG in dags/ imports cleanly, carries what operators rely on (owner, tags, retries,
docs, typed params that validate), and does no heavy work at import time."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from retail.settings import PROJECT_ROOT

DAGS = PROJECT_ROOT / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def bag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports_without_error(bag: DagBag) -> None:
    assert bag.import_errors == {}
    assert DAG_FILES, "no DAG files found"
    assert {Path(d.fileloc).name for d in bag.dags.values()} == {p.name for p in DAG_FILES}


def test_every_dag_has_owner_tags_retries_docs_and_typed_params(bag: DagBag) -> None:
    for dag_id, dag in bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md.strip()) > 40, f"{dag_id} has no doc_md"
        assert dag.catchup is False, f"{dag_id} would backfill every interval since its start"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
            # A hung call (a node that stops answering mid-read) must not hold the DAG's only
            # active run for ever.
            assert task.execution_timeout is not None, (
                f"{dag_id}.{task.task_id} has no execution_timeout"
            )
        for name in dag.params:
            param = dag.params.get_param(name)
            assert "type" in param.schema, f"{dag_id} param {name} is untyped"
            assert param.description, f"{dag_id} param {name} has no help text"
        dag.params.validate()  # the defaults themselves pass the form's validation


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_importing_a_dag_file_touches_no_network_and_starts_no_process(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{path.name} does work at import time: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    spec = importlib.util.spec_from_file_location(f"dagfile_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
