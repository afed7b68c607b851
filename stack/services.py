"""The stack's supervised services: the regional consumers (``--consumers N`` per region) and,
in the demo, an event stream at a modest rate (``--stream-rate R``).

They run under one supervisor process (:mod:`stack.supervisor`) whose home is
``<stack dir>/services``; this module says what to run and reads back how it goes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from retail.topology import Topology
from stack.errors import StackError
from stack.process import ManagedProcess
from stack.supervisor import (
    ServiceSpec,
    read_specs,
    read_state,
    read_states,
    specs_digest,
    write_specs,
)


def consumer_process(
    region: str, home: Path, *args: str, env: dict[str, str] | None = None
) -> ManagedProcess:
    """``python -m streaming --region REGION ARGS`` as a process of its own, with its PID file
    and log in ``home/REGION`` (the integration tests and benchmarks drive consumers so)."""
    argv = [sys.executable, "-m", "streaming", "--region", region, *args]
    return ManagedProcess(name=f"consumer-{region}", argv=argv, home=home / region, env=env or {})


def service_specs(
    topology: Topology, consumers: int, stream_rate: float, home: Path
) -> list[ServiceSpec]:
    """``consumers`` consumer processes per region (members of the region's group), each with
    a health file its poll loop touches, and a producer of ``stream_rate`` events per second if
    it is above 0. ``home`` is the supervisor's (where each service's files go)."""
    specs = []
    for dc in topology.datacenters:
        for i in range(1, consumers + 1):
            name = f"consumer-{dc.name}-{i}"
            alive = str(home / name / "alive")
            specs.append(
                ServiceSpec(
                    name=name,
                    argv=[
                        *(sys.executable, "-m", "streaming", "--region", dc.name),
                        *("--health-file", alive),
                    ],
                    region=dc.name,
                    health_file=alive,
                )
            )
    if stream_rate > 0:
        specs.append(
            ServiceSpec(
                name="producer",
                argv=[sys.executable, "-m", "retail", "produce", "--rate", f"{stream_rate:g}"],
                stop_timeout=30.0,
            )
        )
    return specs


@dataclass(frozen=True)
class SupervisedStatus:
    name: str
    region: str | None
    state: str  # running | backoff | stopped | down (the supervisor is not running)
    pid: int | None
    restarts: int
    last_exit: int | None
    uptime_s: float | None
    lag: int | None  # for a consumer: what its region's group has not committed yet


class Services:
    """The supervisor of one stack, found through its home directory."""

    def __init__(self, stack_dir: Path) -> None:
        self.home = stack_dir / "services"
        self.process = ManagedProcess(
            name="supervisor",
            argv=[sys.executable, "-m", "stack.supervisor", str(self.home)],
            home=self.home,
            log_file=self.home / "stdout.log",
        )

    def specs(self) -> list[ServiceSpec]:
        return read_specs(self.home)

    def configure(self, specs: list[ServiceSpec]) -> None:
        """Make ``specs`` what the supervisor runs. A running supervisor applies them at once
        (SIGHUP), touching only the services that differ; none at all stops it. A supervisor
        not running starts with them when the stack starts its components."""
        old = self.specs()
        if specs == old:
            return
        grace = sum(s.stop_timeout for s in old) + 10
        if not specs:
            self.process.stop(timeout=grace)
            (self.home / "services.json").unlink(missing_ok=True)
            return
        write_specs(self.home, specs)
        if (pid := self.process.pid()) is None:
            return
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + grace
        while read_state(self.home)[0] != specs_digest(specs):
            if time.monotonic() > deadline:
                raise StackError(
                    f"the supervisor did not apply the new services within {grace:.0f}s; "
                    f"see {self.process.main_log}"
                )
            time.sleep(0.2)

    def probe(self) -> str | None:
        """None once the supervisor runs the services configured, else what is awaited."""
        if read_state(self.home)[0] != specs_digest(self.specs()):
            return "starting the services"
        return None

    def log_of(self, name: str) -> Path:
        return self.home / name / "stdout.log"

    def status(self, lag_of: dict[str, int | None]) -> list[SupervisedStatus]:
        """Every service as the supervisor last recorded it; all ``down`` if it is not running."""
        up = self.process.alive()
        states = read_states(self.home)
        now = time.time()
        out = []
        for spec in self.specs():
            st = states.get(spec.name)
            running = up and st is not None and st.state == "running"
            out.append(
                SupervisedStatus(
                    name=spec.name,
                    region=spec.region,
                    state=(st.state if st else "starting") if up else "down",
                    pid=st.pid if running and st else None,
                    restarts=st.restarts if st else 0,
                    last_exit=st.last_exit if st else None,
                    uptime_s=now - st.started_at if running and st and st.started_at else None,
                    lag=lag_of.get(spec.region) if spec.region else None,
                )
            )
        return out

    def kill(self, name: str) -> int:
        """SIGKILL one service's process, as a crash would; the supervisor restarts it."""
        st = read_states(self.home).get(name)
        if st is None or st.pid is None or st.state != "running" or not self.process.alive():
            raise LookupError(f"{name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(st.pid, signal.SIGKILL)
        return st.pid
