"""Run run_N/train.py as a child process and record mechanically what happened."""

from __future__ import annotations

import os

from langgraph.runtime import Runtime

from adapters.files import ExperimentFiles, write_atomic
from adapters.logs import render_summary, summarize_log
from adapters.process import child_environment, kill_leftover, run_script
from settings import Settings
from state import ExperimentState, RunRecord


def execute(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Execute the run's train.py with its folder as working directory, log to output.log."""
    settings = runtime.context
    files = ExperimentFiles(state["experiment_dir"])
    number = len(state.get("runs", [])) + 1
    run_dir = files.run_dir(number)
    script = run_dir / "train.py"
    log_path = run_dir / "output.log"
    runtime.stream_writer({"event": "stage", "stage": "execute", "run": number, "timeout_s": settings.timeout_seconds})

    # A runner killed during this run left its child and a partial log: stop the one, keep the other.
    pid_file = files.private / "child.json"
    kill_leftover(pid_file)
    if log_path.exists():
        attempt = 1
        while (kept := run_dir / f"output.interrupted-{attempt}.log").exists():
            attempt += 1
        log_path.rename(kept)
    (run_dir / "metrics.json").unlink(missing_ok=True)
    if not script.exists():
        write_atomic(script, state.get("code", ""))

    result = run_script(
        script,
        log_path=log_path,
        timeout_s=settings.timeout_seconds,
        env=child_environment(os.environ),
        on_output=lambda lines: runtime.stream_writer({"event": "output", "run": number, "lines": lines}),
        pid_file=pid_file,
    )

    log = summarize_log(log_path, run_dir / "metrics.json")
    status = "timeout" if result.timed_out else "ok" if result.exit_code == 0 else "failed"
    error = log.error or (f"timed out after {settings.timeout_seconds} s" if result.timed_out else "")
    record = RunRecord(
        number=number,
        status=status,
        exit_code=result.exit_code,
        duration_s=round(result.duration_s, 3),
        metrics=log.metrics,
        error=error,
        summary=render_summary(number, status, result.exit_code, result.duration_s, log),
    )
    runtime.stream_writer({"event": "run_done", "run": number, "status": status, "duration_s": record["duration_s"], "metrics": log.metrics})
    return {"runs": [record]}
