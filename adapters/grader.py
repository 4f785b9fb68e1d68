"""The grader: an experiment's own grade.py, run by the runner on each run that ended well, with private/ holding what
only it reads (the sandbox shows train.py neither). Its last line of stdout is a JSON object of metrics.

grade.py runs as `python grade.py run_N` from the experiment folder, outside the sandbox but with the sandbox's
environment allow-list (no LLM keys), within GRADE_TIMEOUT_SECONDS. Its output goes to run_N/grade.log for the
user; prompts get only the metrics it printed, or one line saying how it failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from adapters.logs import json_numbers
from adapters.process import Limits, RunCancelled, cancel_requested, child_command

GRADER = "grade.py"
"""The grader's file name in the experiment folder: its presence makes an experiment graded."""
PRIVATE = "private"
"""The folder of what only the grader reads (test labels, the answer key)."""
GRADE_LOG = "grade.log"
"""The grader's stdout and stderr on one run, in that run's folder."""
REJECTED = 2
"""grade.py's exit code for a submission missing or malformed: the run failed, not the grader (any other non-zero code)."""
OUTPUT_TAIL_BYTES = 64 * 1024
"""What is kept of each of the grader's streams: the end, where its JSON line and its traceback are."""
POLL_S = 0.05
NO_LIMITS = Limits(timeout_s=0)
"""The grader is the user's own code: only its timeout (GRADE_TIMEOUT_SECONDS) holds it."""


@dataclass
class Grade:
    """What the grader made of one run."""

    metrics: dict[str, float] | None
    """The numbers of the JSON object it printed last; None when it failed."""
    failure: str = ""
    """Why it failed, in one line that quotes neither grade.py nor private/ (its exception's last line at most)."""
    seconds: float = 0.0
    """How long it took."""
    rejected: bool = False
    """It exited with REJECTED: the submission is missing or malformed, the run's fault rather than the grader's."""
    cancelled: bool = False
    """The run was stopped while it was graded: no grade."""


def is_graded(root: Path) -> bool:
    """Whether the experiment in `root` has a grader."""
    return (Path(root) / GRADER).is_file()


def grade_run(root: Path, number: int, *, python: str, env: Mapping[str, str], timeout_s: float, cancel: threading.Event | None = None) -> Grade:
    """Run grade.py on run `number`'s folder; its output goes to run_N/grade.log. RunCancelled when the runner is stopping."""
    root = Path(root)
    run_dir = root / f"run_{number}"
    if shutil.which(python) is None:  # the shell that ties it to the runner would only say "not found", exit 127
        return Grade(None, f"{GRADER} could not start: no interpreter {python}")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="auto-ml-grade-", ignore_cleanup_errors=True) as scratch:
        streams = {name: Path(scratch) / name for name in ("stdout", "stderr")}
        with open(streams["stdout"], "wb") as out, open(streams["stderr"], "wb") as err:
            try:
                process = subprocess.Popen(
                    child_command([python, GRADER, run_dir.name], NO_LIMITS),  # killed with the runner, even by SIGKILL
                    cwd=root,
                    env={**env, "HOME": scratch, "XDG_CACHE_HOME": f"{scratch}/cache"},  # never a cache the runs could have planted in data/
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its whole group is killed on a timeout
                )
            except OSError as exc:
                return Grade(None, f"{GRADER} could not start ({exc.strerror or exc})")
            ended = _wait(process, timeout_s, cancel)
            _kill_group(process.pid)  # what it left running in the background, too
        stdout, stderr = (_tail(streams[name]) for name in ("stdout", "stderr"))
    seconds = time.monotonic() - began
    _write_log(run_dir / GRADE_LOG, [python, GRADER, run_dir.name], process.returncode, ended, stdout, stderr, seconds)
    if ended == "interrupted":
        raise RunCancelled(f"interrupted while {GRADER} graded run {number}")
    if ended == "cancelled":
        return Grade(None, seconds=seconds, cancelled=True)
    if ended == "timeout":
        return Grade(None, f"{GRADER} timed out after {timeout_s:g} s (GRADE_TIMEOUT_SECONDS)", seconds)
    why = last_line(stderr, leaving_out=source_lines(root / GRADER)) or "nothing on stderr"
    if process.returncode == REJECTED:
        return Grade(None, f"{GRADER} rejected the submission: {why}", seconds, rejected=True)
    if process.returncode != 0:
        return Grade(None, f"{GRADER} failed (exit code {process.returncode}): {why}", seconds)
    metrics = metrics_line(stdout)
    if metrics is None:
        return Grade(None, f"{GRADER} printed no JSON object of metrics as its last line of stdout", seconds)
    return Grade(metrics, seconds=seconds)


def metrics_line(stdout: str) -> dict[str, float] | None:
    """The numbers of the JSON object on the last non-empty line of `stdout`; None when that line is no object with a number."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return (json_numbers(lines[-1]) or None) if lines else None


def last_line(text: str, width: int = 300, leaving_out: Collection[str] = ()) -> str:
    """The last non-empty line of `text` that is not in `leaving_out` (a warning prints the source line that raised it),
    cut to `width` characters: an exception's type and message, not its traceback."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() not in leaving_out]
    return lines[-1][:width] if lines else ""


def source_lines(path: Path) -> set[str]:
    """The stripped lines of a source file, to keep them out of what prompts read."""
    try:
        return {line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()}
    except OSError:
        return set()


def _wait(process: subprocess.Popen, timeout_s: float, cancel: threading.Event | None) -> str:
    """Wait for the grader to end: "" when it did, else why it was killed (timeout, cancelled, interrupted)."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if why := _stop_why(cancel, deadline):
            _kill_group(process.pid)
            process.wait()
            return why
        time.sleep(POLL_S)
    return ""


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_why(cancel: threading.Event | None, deadline: float) -> str:
    if cancel_requested():
        return "interrupted"
    if cancel is not None and cancel.is_set():
        return "cancelled"
    return "timeout" if time.monotonic() > deadline else ""


def _tail(path: Path) -> str:
    with open(path, "rb") as stream:
        stream.seek(max(0, path.stat().st_size - OUTPUT_TAIL_BYTES))
        return stream.read().decode("utf-8", errors="replace")


def _write_log(path: Path, argv: list[str], exit_code: int | None, ended: str, stdout: str, stderr: str, seconds: float) -> None:
    how = f"killed ({ended})" if ended else f"exit code {exit_code}"
    text = f"$ {' '.join(argv)}\n{how} after {seconds:.1f} s\n\n--- stdout (its end) ---\n{stdout}\n--- stderr (its end) ---\n{stderr}"
    from adapters.files import write_atomic  # here: the sandbox imports this module on Ray's workers, which have adapters/ only

    try:
        write_atomic(path, text)  # a new file: never through a link, or into a file linked to another, that the run left
    except OSError:
        pass  # the record says how grading went; the log is for the user
