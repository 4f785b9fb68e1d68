"""Running train.py as a child process: streamed log, wall-clock limit, and no process left behind."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|^OPENROUTER_|^LLM_", re.IGNORECASE)
READ_BYTES = 64 * 1024
ECHO_LINE_CHARS = 1000
ECHO_BUFFER_LINES = 200
"""Lines held between two flushes to the terminal; older ones are counted, not kept."""
KILL_GRACE_S = 5.0


class RunCancelled(Exception):
    """The run was stopped from outside (Ctrl-C): it has no result to record."""


_running: set[int] = set()
"""Process-group ids of the scripts running now."""
_running_lock = threading.Lock()
_cancelled = threading.Event()


def cancel_running_scripts() -> None:
    """Kill every running script's process group; run_script then raises RunCancelled, and no new one starts."""
    _cancelled.set()
    with _running_lock:
        for pgid in _running:
            kill_group(pgid)


@dataclass
class ProcessResult:
    """How the child ended."""

    exit_code: int | None
    """Exit status; negative when a signal ended it."""
    duration_s: float
    timed_out: bool


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without anything that looks like a secret, Python unbuffered."""
    env = {k: v for k, v in parent.items() if not SECRET_NAME.search(k)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel to SIGKILL us if the runner dies (even by SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_leftover(pid_file: Path) -> bool:
    """Kill the process group recorded in `pid_file` by a runner that died, if any of it still runs in that run's folder."""
    try:
        record = json.loads(pid_file.read_text())
        pgid, cwd = int(record["pid"]), record["cwd"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    pid_file.unlink(missing_ok=True)
    # The group's leader may be gone while its children live on: look for any member working in the run's folder.
    ours = any(_process_group(pid) == pgid and _cwd(pid).startswith(cwd) for pid in _pids())
    if ours:
        kill_group(pgid)
    return ours


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _process_group(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


class _LogPump(threading.Thread):
    """Copies the child's output into the log file and keeps recent lines for the terminal."""

    def __init__(self, pipe, log_file):
        super().__init__(daemon=True)
        self.pipe, self.log_file = pipe, log_file
        self.lock = threading.Lock()
        self.pending: deque[str] = deque(maxlen=ECHO_BUFFER_LINES)
        self.skipped = 0

    def run(self) -> None:
        partial = b""
        while chunk := self.pipe.readline(READ_BYTES):
            self.log_file.write(chunk)
            self.log_file.flush()
            if not chunk.endswith(b"\n") and self.pipe.peek(1):
                partial = partial or chunk[:ECHO_LINE_CHARS]
                continue  # the line goes on: only its first piece is echoed
            line = (partial or chunk).decode("utf-8", "replace").rstrip("\r\n")[:ECHO_LINE_CHARS]
            partial = b""
            with self.lock:
                if len(self.pending) == self.pending.maxlen:
                    self.skipped += 1
                self.pending.append(line)

    def take(self) -> list[str]:
        with self.lock:
            lines = ([f"… {self.skipped} lines not shown"] if self.skipped else []) + list(self.pending)
            self.pending.clear()
            self.skipped = 0
        return lines


def run_script(
    script: Path,
    *,
    log_path: Path,
    timeout_s: float,
    env: Mapping[str, str],
    on_output: Callable[[list[str]], None] | None = None,
    pid_file: Path | None = None,
) -> ProcessResult:
    """Run `python script` in its folder; stdout and stderr go, line by line, to `log_path` and `on_output`.

    The child gets its own session; on timeout, on any exception here (Ctrl-C included) and on
    return, its whole process group is killed, and the kernel kills it if the runner dies.
    """
    if _cancelled.is_set():
        raise RunCancelled("interrupted before the run started")
    start = time.monotonic()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, script.name],
            cwd=script.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        with _running_lock:
            _running.add(proc.pid)
        if pid_file is not None:
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(json.dumps({"pid": proc.pid, "cwd": str(script.parent.resolve())}))
        pump = _LogPump(proc.stdout, log_file)
        pump.start()
        timed_out = False
        try:
            deadline = start + timeout_s
            while proc.poll() is None:
                if _cancelled.is_set():
                    break
                if time.monotonic() >= deadline:
                    timed_out = True
                    _stop(proc)
                    break
                try:
                    proc.wait(timeout=min(0.25, max(deadline - time.monotonic(), 0.01)))
                except subprocess.TimeoutExpired:
                    pass
                if on_output and (lines := pump.take()):
                    on_output(lines)
        finally:
            kill_group(proc.pid)
            proc.wait()
            with _running_lock:
                _running.discard(proc.pid)
            pump.join(timeout=2.0)
            if not pump.is_alive():  # else a process that escaped the group still holds the pipe
                proc.stdout.close()
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
        if on_output and (lines := pump.take()):
            on_output(lines)
    if _cancelled.is_set():
        raise RunCancelled(f"run interrupted after {time.monotonic() - start:.1f} s")
    return ProcessResult(exit_code=proc.returncode if not timed_out else None, duration_s=time.monotonic() - start, timed_out=timed_out)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
