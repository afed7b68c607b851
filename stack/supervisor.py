"""The stack's long-running services (the regional consumers, the demo's event stream) under a
supervisor, as supervisord or a Compose restart policy would keep them.

``python -m stack.supervisor HOME`` reads ``HOME/services.json`` (what to run), starts each
service with its output appended to ``HOME/<name>/stdout.log``, and restarts one that exits,
after a backoff that doubles with each quick failure (1 s up to 30 s) and starts again from 1 s
once a run has lasted a minute. A service with a health file (a consumer touches one while its
poll loop turns) that stops touching it is killed and restarted, as a liveness probe would. It
writes what it did to ``HOME/state.json`` (pid, restarts,
last exit) on every change, which ``retail stack status`` reads. SIGTERM stops every service
with SIGTERM (a consumer drains and commits) and waits for it, then SIGKILLs what is left.
SIGHUP re-reads ``services.json``: services added are started, services removed or changed are
stopped (and a changed one started again), the others run on untouched.

The services stay in the supervisor's process group, so a stop of the group by the stack reaches
them too; a service killed alone (``retail stack kill consumer-eu-west-1``) is restarted. If the
supervisor itself dies, its services get SIGTERM from the kernel (PR_SET_PDEATHSIG) and drain:
no service outlives it unsupervised.
"""

from __future__ import annotations

import ctypes
import hashlib
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
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class ServiceSpec:
    """A service to keep running: its command, environment and how long a stop may take."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 90.0
    region: str | None = None  # for a consumer: the region whose group it belongs to
    # Touched by the service while it works; not touched for ``stale_after`` seconds (counted
    # from its start at the earliest): stuck, killed and restarted.
    health_file: str | None = None
    stale_after: float = 300.0


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


def specs_digest(specs: list[ServiceSpec]) -> str:
    """Names a set of specs: the state file says which set the supervisor runs."""
    return hashlib.sha256(json.dumps([asdict(s) for s in specs]).encode()).hexdigest()[:16]


def read_state(home: Path) -> tuple[str | None, dict[str, ServiceState]]:
    """The digest of the specs the supervisor runs and each service's state by name, as it
    last wrote them (None and empty if it never ran)."""
    try:
        raw = json.loads((home / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return None, {}
    return raw["specs"], {s["name"]: ServiceState(**s) for s in raw["services"]}


def read_states(home: Path) -> dict[str, ServiceState]:
    return read_state(home)[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
        self.reload = threading.Event()  # set on SIGHUP

    def run(self, stop: threading.Event) -> None:
        for name in self.specs:
            self._start(name)
        self._save()
        while not stop.wait(0.5):
            if self.reload.is_set():
                self.reload.clear()
                self._apply(read_specs(self.home))
                self._save()
            # A stop of the whole process group reaches the services first: what exits then
            # is stopping, not failing, and is not started again.
            self._kill_stuck()
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
                preexec_fn=_die_with_parent,
            )
        self.procs[name] = proc
        st.state, st.pid, st.started_at, st.next_start_at = "running", proc.pid, time.time(), None
        log.info("%s started as pid %d", name, proc.pid)

    def _apply(self, specs: list[ServiceSpec]) -> None:
        """Run ``specs`` from now on, touching only the services that differ."""
        new = {s.name: s for s in specs}
        for name in [n for n, spec in self.specs.items() if new.get(n) != spec]:
            log.info("%s removed or changed: stopping it", name)
            self._stop([name])
            del self.specs[name], self.states[name]
        for name, spec in new.items():
            if name not in self.specs:
                self.specs[name], self.states[name] = spec, ServiceState(name, spec.region)
                self._start(name)
        self.specs = {n: self.specs[n] for n in new}  # in the file's order, as its digest
        self.states = {n: self.states[n] for n in new}

    def _kill_stuck(self) -> None:
        """SIGKILL a running service whose health file has gone stale; the reap restarts it."""
        now = time.time()
        for name, proc in self.procs.items():
            spec, st = self.specs[name], self.states[name]
            if spec.health_file is None:
                continue
            try:
                touched = os.path.getmtime(spec.health_file)
            except OSError:
                touched = 0.0
            if now - max(touched, st.started_at or now) > spec.stale_after:
                log.warning(
                    "%s has not touched %s for %.0fs: stuck; killing it to restart it",
                    name,
                    spec.health_file,
                    spec.stale_after,
                )
                proc.kill()

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
        self._stop(list(self.states))
        self._save()

    def _stop(self, names: list[str]) -> None:
        """SIGTERM the services together, wait for each, SIGKILL one that overstays."""
        procs = {n: self.procs.pop(n) for n in names if n in self.procs}
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                proc.wait(self.specs[name].stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; SIGKILL", name)
                proc.kill()
                proc.wait()
        for name in names:
            st = self.states[name]
            st.state, st.pid, st.next_start_at = "stopped", None, None

    def _save(self) -> None:
        _write_json(
            self.home / "state.json",
            {
                "specs": specs_digest(list(self.specs.values())),
                "services": [asdict(s) for s in self.states.values()],
            },
        )


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stack.supervisor HOME  (HOME holds services.json)")
    stop, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    home = Path(sys.argv[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    specs = read_specs(home)
    if not specs:
        sys.exit(f"no services in {home / 'services.json'}")
    supervisor = Supervisor(home, specs)
    supervisor.reload = reload
    supervisor.run(stop)


if __name__ == "__main__":
    main()
