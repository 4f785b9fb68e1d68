"""The jobs that train runs: the local backend of the executor (train.py in the sandbox within the limits on the
devices it is handed), or, with EXECUTOR=ray, the Ray backend's (adapters.cluster); what both record mechanically
the moment a run ends (run_N/result.json), graded by the experiment's grade.py when it has one."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from adapters.executor import Job
from adapters.files import ExperimentFiles
from adapters.grader import GRADE_LOG, grade_run, is_graded
from adapters.logs import LogSummary, summarize_log
from adapters.machine import cpu_count, gpu_devices, gpus_per_run, share_text
from adapters.process import Limits, ProcessResult, kill_leftover, run_script
from adapters.sandbox import (
    GRADED_WITHOUT_SANDBOX,
    child_environment,
    resolve_graded_mode,
    resolve_mode,
    sandbox_command,
    scrub_run_folder,
    share_environment,
    workspace,
)
from settings import Settings
from state import InFlight, RunRecord
from trust import disagreements, suspicious

MAX_TASKS = 8192
"""Processes and threads a run may have at once. A fork bomb stops here; a training job with many data-loader
workers on a many-core machine stays far below (each worker counts its threads too)."""


@dataclass
class Ended:
    """What a job leaves when its train.py has ended: the process's result and, unless it was cancelled, the run's record."""

    result: ProcessResult
    record: RunRecord | None
    log: LogSummary | None


def training_job(files: ExperimentFiles, settings: Settings, flight: InFlight, mode: str) -> Job:
    """The job that runs `flight`'s train.py in the sandbox, within the limits, on the devices the executor hands it, and
    records mechanically what happened (run_N/result.json) as soon as it ends. Whatever an earlier runner left of
    the run (a process, a partial log) is dealt with first: killed, and kept aside as output.interrupted-K.log."""
    number = flight["number"]
    run_dir = files.run_dir(number)
    data_dir = files.root / "data"
    script = run_dir / "train.py"
    log_path = run_dir / "output.log"
    pid_file = files.child_file(number)
    prepare_run(files, number)
    limits = run_limits(settings)
    python = shutil.which(settings.python) or settings.python  # a name on PATH (python3) as the path the sandbox must show
    gpus_given = settings.gpus == "none" or bool(gpu_devices(settings.gpus))
    threads = max(1, cpu_count() // settings.workers) if settings.workers > 1 else None

    def start(devices: list[str], cancel: threading.Event, emit: Callable[[dict], None]) -> Ended:
        started = started_event(flight, devices)
        emit(started)
        with workspace(mode, run_dir, data_dir) as home:
            env = child_environment(os.environ, home=home, data_dir=str(data_dir), extra_names=settings.sandbox_env, tmpdir="/tmp" if mode == "bwrap" else None)
            env.update(share_environment(devices if gpus_given else None, threads, keep=settings.sandbox_env))
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
                on_output=lambda lines: emit({"event": "output", "run": number, "lines": lines}),
                on_redraw=lambda line: emit({"event": "output_redraw", "run": number, "line": line}),
                pid_file=pid_file,
                cancel=cancel,
                pid_note=child_note(started),
            )
        if result.stopped == "cancelled":  # stop_runs records it, or a resume runs it again
            return Ended(result, None, None)
        return record_ended(files, settings, flight, result, emit, gpus=devices, cancel=cancel)

    return Job(number=number, start=start, devices=gpus_per_run(settings.gpus_per_run, gpu_devices(settings.gpus), settings.workers))


def job_for(files: ExperimentFiles, settings: Settings, flight: InFlight, mode: str) -> Job:
    """The job that trains `flight`: here, or as a Ray task (EXECUTOR=ray)."""
    if settings.executor == "ray":
        from adapters.cluster import ray_job

        return ray_job(files, settings, flight, mode)
    return training_job(files, settings, flight, mode)


def devices_for(settings: Settings) -> list[str]:
    """The devices the executor hands out: this machine's GPUs; none with EXECUTOR=ray, where Ray hands them out."""
    return [] if settings.executor == "ray" else gpu_devices(settings.gpus)


def sandbox_for(settings: Settings, graded: bool = False) -> tuple[str, str | None]:
    """The sandbox mode and its warning (SandboxError when what was asked for cannot work here); with EXECUTOR=ray
    the mode asked for, which each node resolves for itself (and the check at start has said where it falls back).
    A `graded` experiment (grade.py) needs bwrap under auto, and warns under none (sandbox.resolve_graded_mode)."""
    if settings.executor == "ray":
        if graded:
            return ("none", GRADED_WITHOUT_SANDBOX) if settings.sandbox == "none" else ("bwrap", None)
        return settings.sandbox, None
    if graded:
        return resolve_graded_mode(settings.sandbox, no_network=settings.no_network)
    return resolve_mode(settings.sandbox, no_network=settings.no_network)


def share_for(settings: Settings) -> str:
    """What one run gets, as the code model should know it (empty for one run on the whole machine)."""
    if settings.executor == "ray":
        from adapters.cluster import share_text as cluster_share_text

        return cluster_share_text(settings)
    devices = gpu_devices(settings.gpus)
    return share_text(settings.workers, devices, gpus_per_run(settings.gpus_per_run, devices, settings.workers))


def run_limits(settings: Settings) -> Limits:
    """What one run may use, wherever it runs."""
    return Limits(
        timeout_s=settings.timeout_seconds,
        memory_mb=settings.memory_limit_mb,
        file_size_mb=settings.file_size_limit_mb,
        max_processes=MAX_TASKS,
        shared_processes=MAX_TASKS * settings.workers,  # runs in flight on one machine share the sandbox's user
        log_max_bytes=settings.log_max_mb * 2**20,
    )


def started_event(flight: InFlight, gpus: list[str], node: str = "") -> dict:
    """The run_started event: the run, how it came about, where it runs, when it started."""
    event = {"event": "run_started", "run": flight["number"], "operator": flight["operator"], "parent": flight["parent"], "gpus": gpus}
    return {**event, **({"node": node} if node else {}), "started": round(time.time(), 3)}


def child_note(started: dict) -> dict:
    """What .runner/child-N.json says of a run in flight, for `status` and view_tasks.py: its run_started event, less the event's name."""
    return {name: value for name, value in started.items() if name != "event"}


def record_ended(
    files: ExperimentFiles,
    settings: Settings,
    flight: InFlight,
    result: ProcessResult,
    emit: Callable[[dict], None],
    gpus: list[str],
    node: str = "",
    cancel: threading.Event | None = None,
) -> Ended:
    """The record of a run that ended by itself or was stopped at a limit, from its process's result, its log and its grade;
    a run whose `cancel` is set while grade.py grades it is not recorded (stop_runs records it as cancelled)."""
    run_dir = files.run_dir(flight["number"])
    removed = scrub_run_folder(run_dir)  # before the runner reads anything there
    log = summarize_log(run_dir / "output.log", run_dir / "metrics.json")
    # A limit the runner enforced wins over whatever the log says.
    status = "timeout" if result.stopped == "timeout" else "ok" if result.exit_code == 0 and not result.stopped else "failed"
    judged = judge(files, settings, flight["number"], status, stop_reason(result, settings) or log.error, log.metrics, cancel, removed)
    if judged is None:
        return Ended(dataclasses.replace(result, stopped="cancelled"), None, None)
    recorded = write_record(files, flight, result.exit_code, result.duration_s, judged, emit, gpus=gpus, node=node)
    return Ended(result, recorded, log)


@dataclass
class Judged:
    """How a run is recorded once its numbers are judged: by its grade when the experiment has a grader, else as it reported them."""

    status: str
    metrics: dict[str, float]
    """What judges the run: the grade, or (without a grader) the self-report."""
    error: str
    reported: dict[str, float] | None = None
    """With a grader: the self-report, kept beside the grade."""
    flags: list[str] = dataclasses.field(default_factory=list)


def judge(
    files: ExperimentFiles,
    settings: Settings,
    number: int,
    status: str,
    error: str,
    reported: dict[str, float],
    cancel: threading.Event | None = None,
    removed: list[str] | None = None,
) -> Judged | None:
    """Run `number`'s status, metrics and flags, from what it reported about itself (`reported`) and, in a graded
    experiment, from what grade.py makes of a run that ended well (a run that failed is not graded: its metrics are
    none; one whose submission grade.py rejects failed). `removed`: what scrub_run_folder took out of its folder.
    None when its `cancel` was set during grading. RunCancelled when the runner is stopping."""
    left = [f"removed from its folder before the runner read it: {entry}" for entry in removed or []]
    if not is_graded(files.root):
        return Judged(status, reported, error, flags=left + (suspicious(reported) if status != "cancelled" else []))
    if status != "ok":
        return Judged(status, {}, error, reported, left)
    env = child_environment(os.environ, home="", data_dir=str(files.root / "data"), extra_names=settings.sandbox_env)
    python = sys.executable if settings.executor == "ray" else settings.python  # TRAIN_PYTHON names the nodes' interpreter there
    grade = grade_run(files.root, number, python=python, env=env, timeout_s=settings.grade_timeout_seconds, cancel=cancel)
    if grade.cancelled:
        return None
    if grade.metrics is None:
        return Judged("failed" if grade.rejected else "grade_failed", {}, grade.failure, reported, left)
    return Judged("ok", grade.metrics, error, reported, left + disagreements(grade.metrics, reported, settings.grade_tolerance))


def prepare_run(files: ExperimentFiles, number: int) -> None:
    """Deal with whatever an earlier runner left of run `number`: its process killed, its partial log kept aside as
    output.interrupted-K.log, its metrics and result removed."""
    run_dir = files.run_dir(number)
    log_path = run_dir / "output.log"
    kill_leftover(files.child_file(number))
    kill_leftover(files.private / "child.json")  # a runner from before parallel runs kept one pid file
    if log_path.exists():
        attempt = 1
        while (kept := run_dir / f"output.interrupted-{attempt}.log").exists():
            attempt += 1
        log_path.rename(kept)
    for name in ("metrics.json", "result.json", "worker.json", GRADE_LOG):
        (run_dir / name).unlink(missing_ok=True)
    files.recorded_file(number).unlink(missing_ok=True)


def write_record(
    files: ExperimentFiles,
    flight: InFlight,
    exit_code: int | None,
    duration_s: float,
    judged: Judged,
    emit: Callable[[dict], None],
    gpus: list[str] | None = None,
    node: str = "",
) -> RunRecord:
    """Run `flight`'s record, written to its result.json and told as a run_done event; `gpus` and `node`: where it ran."""
    number, operator, parent = flight["number"], flight["operator"], flight["parent"]
    done = RunRecord(
        number=number,
        status=judged.status,
        exit_code=exit_code,
        duration_s=round(duration_s, 3),
        metrics=judged.metrics,
        error=judged.error,
        operator=operator,
        parent=parent,
    )
    if gpus is not None:
        done["gpus"] = list(gpus)
    if node:
        done["node"] = node
    if judged.reported is not None:
        done["reported"] = judged.reported
    if judged.flags:
        done["flags"] = judged.flags
    files.write_result(done)
    event = {"event": "run_done", "run": number, "status": done["status"], "duration_s": done["duration_s"], "metrics": done["metrics"]}
    event |= {"operator": operator, "parent": parent}
    emit({**event, **{name: done[name] for name in ("gpus", "node", "reported", "flags", "error") if done.get(name)}})
    return done


def stop_reason(result: ProcessResult, settings: Settings) -> str:
    """Why the runner stopped the script, as the run's error; empty when it ended by itself."""
    if result.stopped == "timeout":
        return f"timed out after {settings.timeout_seconds} s"
    if result.stopped == "memory":
        return f"stopped: memory limit (MEMORY_LIMIT_MB={settings.memory_limit_mb}) exceeded"
    if result.stopped == "processes":
        return f"stopped: too many processes (more than {MAX_TASKS} processes and threads)"
    return ""
