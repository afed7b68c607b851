"""The stack's long-running services (the regional consumers, the demo's event stream) under a
supervisor, as supervisord or a Compose restart policy would keep them.

``python -m stack.supervisor HOME`` reads ``HOME/services.json`` (what to run), starts each
service with its output appended to ``HOME/<name>/stdout.log``, and restarts one that exits,
after a backoff that doubles with each quick failure (1 s up to 30 s) and starts again from 1 s
once a run has lasted a minute. It writes what it did to ``HOME/state.json`` (pid, restarts,
last exit) on every change, which ``retail stack status`` reads. SIGTERM stops every service
with SIGTERM (a consumer drains and commits) and waits for it, then SIGKILLs what is left.

The services stay in the supervisor's process group, so a stop of the group by the stack reaches
them too; a service killed alone (``retail stack kill consumer-eu-west-1``) is restarted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("stack.supervisor")

MIN_BACKOFF = 1.0
MAX_BACKOFF = 30.0
HEALTHY_RUN = 60.0  # a run this long resets the backoff


@dataclass(frozen=True)
class ServiceSpec:
    """A service to keep running: its command, environment and how long a stop may take."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 90.0
    region: str | None = None  # for a consumer: the region whose group it belongs to


@dataclass
class ServiceState:
    """What the supervisor knows of one service, as ``state.json`` records it."""

    name: str
    region: str | None = None
    state: str = "starting"  # running | backoff | stopped
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None  # epoch seconds of the current (or last) run
    last_exit: int | None = None  # exit code (negative: killed by that signal)
    last_exit_at: float | None = None
    quick_failures: int = 0
    next_start_at: float | None = None


def backoff(quick_failures: int) -> float:
    """Seconds to wait before restarting after ``quick_failures`` failures in a row."""
    return min(MIN_BACKOFF * 2 ** max(quick_failures - 1, 0), MAX_BACKOFF)


def write_specs(home: Path, specs: list[ServiceSpec]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    _write_json(home / "services.json", [asdict(s) for s in specs])


def read_specs(home: Path) -> list[ServiceSpec]:
    try:
        return [ServiceSpec(**s) for s in json.loads((home / "services.json").read_text())]
    except FileNotFoundError:
        return []


def read_states(home: Path) -> dict[str, ServiceState]:
    """The last state the supervisor wrote, by service name (empty if it never ran)."""
    try:
        raw = json.loads((home / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {s["name"]: ServiceState(**s) for s in raw}


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # readers never see half a file


class Supervisor:
    """Runs the services of ``home/services.json`` until ``stop`` is set."""

    def __init__(self, home: Path, specs: list[ServiceSpec]) -> None:
        self.home = home
        self.specs = {s.name: s for s in specs}
        self.states = {s.name: ServiceState(s.name, s.region) for s in specs}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, stop: threading.Event) -> None:
        for name in self.specs:
            self._start(name)
        self._save()
        while not stop.wait(0.5):
            # A stop of the whole process group reaches the services first: what exits then
            # is stopping, not failing, and is not started again.
            if self._reap() | (not stop.is_set() and self._restart_due()):
                self._save()
        self._stop_all()

    def _start(self, name: str) -> None:
        spec, st = self.specs[name], self.states[name]
        out_dir = self.home / name
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "stdout.log").open("ab") as out:
            out.write(f"\n--- started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
            out.flush()
            proc = subprocess.Popen(
                spec.argv,
                cwd=out_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env},
            )
        self.procs[name] = proc
        st.state, st.pid, st.started_at, st.next_start_at = "running", proc.pid, time.time(), None
        log.info("%s started as pid %d", name, proc.pid)

    def _reap(self) -> bool:
        """Record the services that exited and when each is due again; True if any did."""
        changed = False
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[name]
            st, now = self.states[name], time.time()
            ran = now - (st.started_at or now)
            st.quick_failures = 0 if ran >= HEALTHY_RUN else st.quick_failures + 1
            delay = backoff(st.quick_failures)
            st.state, st.pid, st.last_exit, st.last_exit_at = "backoff", None, code, now
            st.next_start_at = now + delay
            log.warning(
                "%s exited with %s after %.0fs; restarting in %.0fs (see %s)",
                name,
                code,
                ran,
                delay,
                self.home / name / "stdout.log",
            )
            changed = True
        return changed

    def _restart_due(self) -> bool:
        due = [
            n
            for n, st in self.states.items()
            if st.state == "backoff" and (st.next_start_at or 0) <= time.time()
        ]
        for name in due:
            self.states[name].restarts += 1
            self._start(name)
        return bool(due)

    def _stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(self.specs[name].stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; SIGKILL", name)
                proc.kill()
                proc.wait()
        for st in self.states.values():
            st.state, st.pid, st.next_start_at = "stopped", None, None
        self._save()

    def _save(self) -> None:
        _write_json(self.home / "state.json", [asdict(s) for s in self.states.values()])


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stack.supervisor HOME  (HOME holds services.json)")
    home = Path(sys.argv[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    specs = read_specs(home)
    if not specs:
        sys.exit(f"no services in {home / 'services.json'}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Supervisor(home, specs).run(stop)


if __name__ == "__main__":
    main()
