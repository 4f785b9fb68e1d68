"""Run run_N/train.py in the sandbox, within the limits, and record mechanically what happened."""

from __future__ import annotations

import os
import shutil

from langgraph.runtime import Runtime

from adapters.files import ExperimentFiles, write_atomic
from adapters.logs import missing_package_hint, run_summary, summarize_log
from adapters.process import Limits, ProcessResult, kill_leftover, run_script
from adapters.sandbox import child_environment, resolve_mode, sandbox_command, workspace
from adapters.tracking import TrackingError, log_run
from nodes.summarize import coming_run
from settings import Settings
from state import ExperimentState, RunRecord

MAX_TASKS = 8192
"""Processes and threads a run may have at once. A fork bomb stops here; a training job with many data-loader
workers on a many-core machine stays far below (each worker counts its threads too)."""

_warned: set[str] = set()
"""Warnings already shown by this runner process: auto's fallback to no sandbox is said once, not every run."""


def execute(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Execute the run's train.py with its folder as working directory, log to output.log."""
    settings = runtime.context
    files = ExperimentFiles(state["experiment_dir"])
    coming = coming_run(state)
    number = coming["number"]
    run_dir = files.run_dir(number)
    data_dir = files.root / "data"
    script = run_dir / "train.py"
    log_path = run_dir / "output.log"

    # 1. Where it runs: bwrap or none (SandboxError when what was asked for cannot work here).
    mode, warning = resolve_mode(settings.sandbox, no_network=settings.no_network)
    runtime.stream_writer({"event": "stage", "stage": "execute", "run": number, "timeout_s": settings.timeout_seconds, "sandbox": mode})
    if warning and warning not in _warned:
        _warned.add(warning)
        runtime.stream_writer({"event": "warning", "message": warning})

    # 2. A runner killed during this run left its child and a partial log: stop the one, keep the other.
    pid_file = files.private / "child.json"
    kill_leftover(pid_file)
    if log_path.exists():
        attempt = 1
        while (kept := run_dir / f"output.interrupted-{attempt}.log").exists():
            attempt += 1
        log_path.rename(kept)
    (run_dir / "metrics.json").unlink(missing_ok=True)
    (run_dir / "result.json").unlink(missing_ok=True)
    if not script.exists():
        write_atomic(script, state.get("code", ""))

    # 3. Run it.
    limits = Limits(
        timeout_s=settings.timeout_seconds,
        memory_mb=settings.memory_limit_mb,
        file_size_mb=settings.file_size_limit_mb,
        max_processes=MAX_TASKS,
        log_max_bytes=settings.log_max_mb * 2**20,
    )
    python = shutil.which(settings.python) or settings.python  # a name on PATH (python3) as the path the sandbox must show
    with workspace(mode, run_dir, data_dir) as home:
        env = child_environment(os.environ, home=home, data_dir=str(data_dir), extra_names=settings.sandbox_env, tmpdir="/tmp" if mode == "bwrap" else None)
        argv = sandbox_command(
            [python, script.name],
            mode=mode,
            run_dir=run_dir,
            experiment_dir=files.root,
            data_dir=data_dir,
            home=home,
            network=not settings.no_network,
            python=python,
        )
        result = run_script(
            argv,
            cwd=run_dir,
            log_path=log_path,
            limits=limits,
            env=env,
            on_output=lambda lines: runtime.stream_writer({"event": "output", "run": number, "lines": lines}),
            on_redraw=lambda line: runtime.stream_writer({"event": "output_redraw", "run": number, "line": line}),
            pid_file=pid_file,
        )

    # 4. Record what happened: a limit the runner enforced wins over whatever the log says.
    log = summarize_log(log_path, run_dir / "metrics.json")
    status = "timeout" if result.stopped == "timeout" else "ok" if result.exit_code == 0 and not result.stopped else "failed"
    record = RunRecord(
        number=number,
        status=status,
        exit_code=result.exit_code,
        duration_s=round(result.duration_s, 3),
        metrics=log.metrics,
        error=_stop_reason(result, settings) or log.error,
        operator=coming["operator"],
        parent=coming["parent"],
    )
    summary = run_summary(run_dir, number, status, result.exit_code, record["duration_s"], record["error"], settings.python, log)
    if hint := missing_package_hint(record["error"], settings.python):  # a fix outside the code: said to the user too
        runtime.stream_writer({"event": "warning", "message": f"run {number}: {hint}"})
    files.write_result(record)
    runtime.stream_writer(
        {
            "event": "run_done",
            "run": number,
            "status": status,
            "duration_s": record["duration_s"],
            "metrics": log.metrics,
            "operator": record["operator"],
            "parent": record["parent"],
        }
    )

    # 5. With tracking on, log it to MLflow too: a tracking failure costs that record only, never the run.
    if settings.mlflow_tracking_uri:
        params = {
            "run_number": number,
            "code_model": settings.code_model,
            "summarize_model": settings.summarize_model,
            "report_model": settings.report_model,
            "sandbox": mode,
            "no_network": settings.no_network,
            "status": status,
        }
        try:
            log_run(settings.mlflow_tracking_uri, files.root, record, params=params, artifacts=[script, log_path], log_path=log_path, description=summary)
        except TrackingError as exc:
            runtime.stream_writer({"event": "warning", "message": str(exc)})
    return {"latest_run": record, "run_count": number, "last_summary": summary}


def _stop_reason(result: ProcessResult, settings: Settings) -> str:
    """Why the runner stopped the script, as the run's error; empty when it ended by itself."""
    if result.stopped == "timeout":
        return f"timed out after {settings.timeout_seconds} s"
    if result.stopped == "memory":
        return f"stopped: memory limit (MEMORY_LIMIT_MB={settings.memory_limit_mb}) exceeded"
    if result.stopped == "processes":
        return f"stopped: too many processes (more than {MAX_TASKS} processes and threads)"
    return ""
