"""The supervisor restarts a service that exits, with backoff, records it, and stops them all:
real child processes (sh, sleep), no stack needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack.supervisor import (
    ServiceSpec,
    Supervisor,
    backoff,
    read_state,
    read_states,
    specs_digest,
    write_specs,
)


def test_backoff_doubles_from_one_second_up_to_thirty() -> None:
    assert [backoff(n) for n in (0, 1, 2, 3, 4, 5, 6, 10)] == [1, 1, 2, 4, 8, 16, 30, 30]


def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


Supervise = Callable[[list[ServiceSpec]], tuple[threading.Event, Supervisor]]


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Supervise]:
    """Runs a supervisor of ``specs`` in a thread; gives its stop event and itself."""
    threads: list[tuple[threading.Thread, threading.Event]] = []

    def start(specs: list[ServiceSpec]) -> tuple[threading.Event, Supervisor]:
        write_specs(tmp_path, specs)
        stop, supervisor = threading.Event(), Supervisor(tmp_path, specs)
        thread = threading.Thread(target=supervisor.run, args=(stop,))
        thread.start()
        threads.append((thread, stop))
        return stop, supervisor

    yield start
    for thread, stop in threads:
        stop.set()
        thread.join(30)


def test_a_service_that_dies_is_restarted_and_the_restart_recorded(
    supervise: Supervise, tmp_path: Path
) -> None:
    supervise([ServiceSpec("worker", ["sleep", "60"], region="eu-west")])
    _until(lambda: read_states(tmp_path).get("worker") is not None)
    first = read_states(tmp_path)["worker"]
    assert first.state == "running" and first.restarts == 0
    os.kill(first.pid, signal.SIGKILL)  # a crash

    def restarted() -> bool:
        st = read_states(tmp_path)["worker"]
        return st.state == "running" and st.restarts == 1

    _until(restarted)
    again = read_states(tmp_path)["worker"]
    assert again.pid != first.pid
    assert again.last_exit == -signal.SIGKILL
    assert again.region == "eu-west"


def test_a_service_failing_at_once_waits_longer_each_time(
    supervise: Supervise, tmp_path: Path
) -> None:
    supervise([ServiceSpec("broken", ["sh", "-c", "echo cannot start; exit 3"])])
    _until(lambda: (st := read_states(tmp_path).get("broken")) is not None and st.restarts >= 2)
    st = read_states(tmp_path)["broken"]
    assert st.last_exit == 3
    assert st.quick_failures >= 2
    # Its output is kept where `retail stack logs` reads it.
    assert (tmp_path / "broken" / "stdout.log").read_text().count("cannot start") >= 2
    # After three quick failures the wait is 4 s: it is not restarted at once.
    _until(lambda: read_states(tmp_path)["broken"].quick_failures >= 3)
    st = read_states(tmp_path)["broken"]
    assert st.state == "backoff"
    assert st.next_start_at - st.last_exit_at == pytest.approx(4.0, abs=0.01)


def test_a_stop_terminates_every_service_and_restarts_none(
    supervise: Supervise, tmp_path: Path
) -> None:
    # The service traps SIGTERM to say it drained, as a consumer does.
    script = "trap 'echo drained; exit 0' TERM; while true; do sleep 0.1; done"
    stop, _ = supervise([ServiceSpec("a", ["sh", "-c", script]), ServiceSpec("b", ["sleep", "60"])])
    _until(lambda: len(read_states(tmp_path)) == 2)
    _until(lambda: "--- started" in (tmp_path / "a" / "stdout.log").read_text())
    time.sleep(0.3)  # the trap is set once sh runs its first command
    pids = [st.pid for st in read_states(tmp_path).values()]
    stop.set()
    _until(lambda: all(st.state == "stopped" for st in read_states(tmp_path).values()))
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "drained" in (tmp_path / "a" / "stdout.log").read_text()
    assert all(st.restarts == 0 for st in read_states(tmp_path).values())


def test_a_service_that_stops_touching_its_health_file_is_killed_and_restarted(
    supervise: Supervise, tmp_path: Path
) -> None:
    alive = tmp_path / "alive"
    stuck = ServiceSpec("stuck", ["sleep", "60"], health_file=str(alive), stale_after=1.0)
    touching = f"while true; do touch {tmp_path / 'ok'}; sleep 0.2; done"
    well = ServiceSpec("well", ["sh", "-c", touching], health_file=str(tmp_path / "ok"))
    supervise([stuck, well])
    _until(lambda: (st := read_states(tmp_path).get("stuck")) is not None and st.restarts >= 1)
    states = read_states(tmp_path)
    assert states["stuck"].last_exit == -signal.SIGKILL
    assert states["well"].restarts == 0


def test_new_specs_start_what_was_added_and_stop_what_was_removed_touching_nothing_else(
    supervise: Supervise, tmp_path: Path
) -> None:
    keep, drop = ServiceSpec("keep", ["sleep", "60"]), ServiceSpec("drop", ["sleep", "60"])
    _, supervisor = supervise([keep, drop])
    _until(lambda: len(read_states(tmp_path)) == 2)
    before = read_states(tmp_path)
    added = ServiceSpec("added", ["sleep", "60"])
    write_specs(tmp_path, [keep, added])
    supervisor.reload.set()  # what SIGHUP does
    _until(lambda: read_state(tmp_path)[0] == specs_digest([keep, added]))
    after = read_states(tmp_path)
    assert list(after) == ["keep", "added"]
    assert after["keep"].pid == before["keep"].pid  # untouched
    assert after["added"].state == "running"
    with pytest.raises(ProcessLookupError):
        os.kill(before["drop"].pid, 0)


def test_the_services_of_a_supervisor_that_dies_get_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = f"trap 'echo drained > {out}; exit 0' TERM; while true; do sleep 0.1; done"
    write_specs(tmp_path, [ServiceSpec("a", ["sh", "-c", script])])
    sup = subprocess.Popen([sys.executable, "-m", "stack.supervisor", str(tmp_path)])
    _until(lambda: (st := read_states(tmp_path).get("a")) is not None and st.pid is not None)
    time.sleep(0.3)  # the trap is set once sh runs its first command
    child = read_states(tmp_path)["a"].pid
    sup.kill()  # the supervisor crashes: no chance to stop its services itself
    sup.wait()
    _until(out.exists)
    _until(lambda: not Path(f"/proc/{child}").exists() or _zombie(child))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    except OSError:
        return True
