"""Regional consumers as local background processes (the demo and the integration tests).

In production each is a container (docker/); here the same ``python -m streaming`` runs under
:class:`stack.process.ManagedProcess`, which finds it again by PID file and stops it cleanly.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stack.process import ManagedProcess


def consumer_process(
    region: str, home: Path, *args: str, env: dict[str, str] | None = None
) -> ManagedProcess:
    """``python -m streaming --region REGION ARGS`` with its PID file and log in ``home``."""
    argv = [sys.executable, "-m", "streaming", "--region", region, *args]
    return ManagedProcess(name=f"consumer-{region}", argv=argv, home=home / region, env=env or {})
