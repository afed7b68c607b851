"""A server process the stack starts, finds again by PID file, and stops.

Processes are started in a session of their own so that they outlive ``retail stack up`` and
so that a stop reaches the whole process group. A PID file alone is not proof: the PID may have
been reused since, so the file also records the process's start time (from ``/proc``), and a
process only counts as ours if both match.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process.

    A zombie (exited, not yet reaped by its parent) counts as gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass
class ManagedProcess:
    """One long-running process of the stack.

    ``home`` holds its PID file and its stdout/stderr capture; ``log_file`` is the log worth
    reading when it fails (a server's own log, or the capture).
    """

    name: str
    argv: list[str]
    home: Path
    log_file: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Set when this handle reaps the process as its own child: how it exited.
    returncode: int | None = field(default=None, init=False)

    @property
    def pid_file(self) -> Path:
        return self.home / "process.json"

    @property
    def stdout_file(self) -> Path:
        return self.home / "stdout.log"

    @property
    def main_log(self) -> Path:
        return self.log_file or self.stdout_file

    def pid(self) -> int | None:
        """The PID if the process we started is still running, else None."""
        try:
            info = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        pid = int(info["pid"])
        with contextlib.suppress(ChildProcessError):
            reaped, status = os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
            if reaped == pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        if _proc_start_time(pid) != info.get("start_time"):
            return None
        return pid

    def alive(self) -> bool:
        return self.pid() is not None

    def start(self) -> int:
        """Start the process detached from the caller; returns its PID."""
        if (pid := self.pid()) is not None:
            return pid
        self.home.mkdir(parents=True, exist_ok=True)
        with self.stdout_file.open("ab") as out:
            out.write(f"\n--- started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
            out.flush()
            proc = subprocess.Popen(
                self.argv,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        info = {"pid": proc.pid, "start_time": _proc_start_time(proc.pid), "argv": self.argv}
        self.pid_file.write_text(json.dumps(info))
        log.debug("started %s as pid %d", self.name, proc.pid)
        return proc.pid

    def terminate(self) -> bool:
        """Send SIGTERM to the process group without waiting; True if something was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._signal(pid, signal.SIGTERM)
        return True

    def wait_stopped(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the process to exit after :meth:`terminate`,
        then SIGKILL what is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if (pid := self.pid()) is not None:
            log.warning(
                "%s did not stop within %.0fs of SIGTERM; sending SIGKILL", self.name, timeout
            )
            self._signal(pid, signal.SIGKILL)
            self._wait_gone(10.0)
        self.pid_file.unlink(missing_ok=True)

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout`` seconds.

        Returns True if something was running.
        """
        if not self.terminate():
            return False
        self.wait_stopped(timeout)
        return True

    def kill(self) -> bool:
        """SIGKILL the process group at once (a crash, for failure tests)."""
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGKILL)
        self._wait_gone(10.0)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _wait_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.1)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        # The process leads its own session, so its group id is its pid: the signal reaches
        # any child it started too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    def rss_mb(self, *, peak: bool = False) -> float | None:
        """Resident memory of the process in MiB, now (VmRSS) or its peak so far (VmHWM);
        None if it is not running."""
        pid = self.pid()
        if pid is None:
            return None
        field = "VmHWM:" if peak else "VmRSS:"
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the main log (what to show when it failed)."""
        return tail_file(self.main_log, lines)


def tail_file(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])
