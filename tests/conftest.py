"""Shared by every test directory: Airflow's configuration, set before anything imports
Airflow (it reads its config at import time). Its home is in the state dir, the DAGs and
plugins are the repo's, and its metrics go to the test stack's StatsD."""

from __future__ import annotations

import os
import sys

from retail.connections import airflow_environment
from retail.settings import PROJECT_ROOT
from retail.topology import profile_topology

for _key, _value in airflow_environment(profile_topology("test")).items():
    os.environ.setdefault(_key, _value)
# Airflow puts plugins/ on sys.path when it starts; pytest imports DAG files itself.
if str(PROJECT_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
