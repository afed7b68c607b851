"""ManagedProcess on real (tiny) processes: start, find again, stop, tell PID reuse apart."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from stack.process import ManagedProcess, tail_file


def _sleeper(tmp_path: Path, script: str = "sleep 60") -> ManagedProcess:
    return ManagedProcess("sleeper", ["sh", "-c", script], tmp_path / "sleeper")


def test_start_is_found_again_from_its_pid_file_and_stop_ends_it(tmp_path: Path) -> None:
    proc = _sleeper(tmp_path)
    pid = proc.start()
    again = _sleeper(tmp_path)  # a new handle, as a later `retail stack` command has
    assert again.pid() == pid
    assert again.start() == pid  # starting a running process starts nothing
    assert (again.rss_mb() or 0) > 0
    assert again.stop(timeout=5)
    assert not proc.alive()
    assert proc.rss_mb() is None
    assert not proc.pid_file.exists()


def _wait_for(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text().strip()):
            return text
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except OSError:
        return False
    return state not in "ZX"


def test_stop_reaches_children_of_the_process(tmp_path: Path) -> None:
    proc = _sleeper(tmp_path, "sleep 60 & echo $! > child.pid; wait")
    proc.start()
    child_pid = int(_wait_for(proc.home / "child.pid"))
    assert _running(child_pid)
    proc.stop(timeout=5)
    deadline = time.monotonic() + 5
    while _running(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child_pid)


def test_a_reused_pid_is_not_mistaken_for_ours(tmp_path: Path) -> None:
    proc = _sleeper(tmp_path)
    proc.home.mkdir(parents=True)
    # Our own PID is alive, but its start time is not the one recorded: not our process.
    proc.pid_file.write_text(json.dumps({"pid": os.getpid(), "start_time": 1, "argv": []}))
    assert proc.pid() is None
    assert proc.stop() is False  # and it must not be signalled


def test_kill_is_immediate(tmp_path: Path) -> None:
    proc = _sleeper(tmp_path, "trap '' TERM; sleep 60")
    proc.start()
    assert proc.kill()
    assert not proc.alive()


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_file(log, 3) == "line 97\nline 98\nline 99"
    assert "no log" in tail_file(tmp_path / "missing.log")
