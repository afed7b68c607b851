"""Shared by every test directory: Airflow's configuration, set before anything imports
Airflow (it reads its config at import time). Its home is in the state dir, the DAGs and
plugins are the repo's, and its metrics go to the test stack's StatsD."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from retail.connections import airflow_environment
from retail.errors import ConfigError
from retail.settings import PROJECT_ROOT, Settings
from retail.topology import profile_topology

try:
    _env = airflow_environment(profile_topology("test"))
except ConfigError:
    # No stack has generated its secrets yet (the connections carry its Kafka login): use a
    # throwaway set; the integration session points Airflow at the live stack's once it is up
    # (tests/integration/airflow.py: prepare_airflow).
    from stack import secrets as _secrets

    _stack = Path(tempfile.mkdtemp(prefix="retail-test-secrets-"))
    _secrets.ensure(_stack, profile_topology("test"))
    _env = airflow_environment(
        profile_topology("test"), Settings(secrets_dir=_secrets.secrets_dir(_stack))
    )
for _key, _value in _env.items():
    os.environ.setdefault(_key, _value)
# Airflow puts plugins/ on sys.path when it starts; pytest imports DAG files itself.
if str(PROJECT_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
