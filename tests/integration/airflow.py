"""Running the platform's DAGs in-process with ``dag.test()`` against the live stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from retail.connections import airflow_environment
from retail.settings import PROJECT_ROOT
from retail.topology import Topology

DAGS = PROJECT_ROOT / "dags"


def prepare_airflow(topology: Topology) -> None:
    """Point this process's Airflow at the live stack and migrate its metadata DB (SQLite)."""
    os.environ.update(airflow_environment(topology))
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True,
        capture_output=True,
        timeout=300,
    )


def run_dag(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    """One run of ``dag_id`` with ``conf`` (validated against its params like a UI trigger);
    returns the finished DagRun."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id].test(run_conf=conf or {})


def task_states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def xcom(run: Any, task_id: str) -> Any:
    """The return value of ``task_id`` in ``run``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, key="return_value")
            .one_or_none()
        )
        return None if row is None else XComModel.deserialize_value(row)
