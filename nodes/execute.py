"""Runs of train.py: execute submits the coming run to the executor, wait takes the first run in flight that ends and
records it, stop_runs stops the rest when the experiment ends. The processes and threads live in the executor
(adapters.executor) and its jobs (adapters.training); these nodes only hand it jobs and read what they left in the run folders."""

from __future__ import annotations

import time
from collections.abc import Callable

from langgraph.runtime import Runtime

from adapters.executor import Executor, executor_for
from adapters.files import ExperimentFiles, write_atomic
from adapters.grader import GRADER, is_graded
from adapters.logs import missing_package_hint, summarize_log
from adapters.process import kill_leftover
from adapters.sandbox import scrub_run_folder
from adapters.tracking import TrackingError, log_run
from adapters.training import Ended, devices_for, job_for, judge, sandbox_for, write_record
from nodes.records import record_summary
from nodes.stop_rules import halt
from nodes.summarize import coming_run
from settings import Settings
from state import ExperimentState, InFlight, RunRecord
from trust import grader_failing

_warned: set[str] = set()
"""Warnings already shown by this runner process: auto's fallback to no sandbox is said once, not every run."""


def execute(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Submit the coming run: it starts at once on free devices (or waits in line for them) and trains while the graph goes on."""
    settings = runtime.context
    files = ExperimentFiles(state["experiment_dir"])
    coming = coming_run(state)
    mode, warning = sandbox_for(settings, is_graded(files.root))  # SandboxError when what was asked for cannot work here
    pool = executor_for(files.root, devices_for(settings), settings.workers)
    in_flight = [flight for flight in state.get("in_flight") or [] if flight["number"] != coming["number"]]
    flight = InFlight(**coming, submitted_at=round(time.time(), 3))
    runtime.stream_writer(
        {
            "event": "stage",
            "stage": "execute",
            "run": coming["number"],
            "timeout_s": settings.timeout_seconds,
            "sandbox": mode,
            "operator": coming["operator"],
            "parent": coming["parent"],
            "in_flight": len(in_flight) + 1,
        }
    )
    _warn_once(warning, runtime)
    if not (files.run_dir(coming["number"]) / "train.py").exists():
        write_atomic(files.run_dir(coming["number"]) / "train.py", state.get("code", ""))
    pool.submit(job_for(files, settings, flight, mode))
    pool.relay(runtime.stream_writer)
    return {"in_flight": [*in_flight, flight], "slots": settings.workers + settings.ahead}


def wait(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Wait for the first run in flight to end (the others train on), and record it for analyze."""
    settings = runtime.context
    files = ExperimentFiles(state["experiment_dir"])
    in_flight = list(state.get("in_flight") or [])
    if not in_flight:
        raise ValueError("wait was entered with no run in flight")
    numbers = [flight["number"] for flight in in_flight]
    waiting = {"reason": f"for the first of runs {', '.join(map(str, numbers))} to end"} if len(numbers) > 1 else {}
    runtime.stream_writer({"event": "stage", "stage": "wait", "run": numbers[0] if len(numbers) == 1 else None, **waiting})
    mode = _sandbox_mode(settings, runtime, is_graded(files.root))
    pool = executor_for(files.root, devices_for(settings), settings.workers)
    recorded = _resubmit_unknown(state, in_flight, pool, files, settings, mode, runtime)
    if recorded is not None:  # ended and recorded by a runner that was killed before it could take the run
        flight, record = recorded
        log = summarize_log(files.run_dir(record["number"]) / "output.log", files.run_dir(record["number"]) / "metrics.json")
    else:
        ended = pool.wait_first([flight["number"] for flight in in_flight], relay=runtime.stream_writer)
        pool.take(ended.job.number)
        if ended.error is not None:
            raise ended.error
        outcome: Ended = ended.outcome
        flight = next(flight for flight in in_flight if flight["number"] == ended.job.number)
        record, log = outcome.record, outcome.log
    number = record["number"]
    summary = record_summary(files.run_dir(number), record, settings.python, log)
    if hint := missing_package_hint(record["error"], settings.python):  # a fix outside the code: said to the user too
        runtime.stream_writer({"event": "warning", "message": f"run {number}: {hint}"})
    if settings.mlflow_tracking_uri:
        _track(files, settings, record, mode, summary, runtime.stream_writer)
    update = {
        "latest_run": record,
        "run_count": state.get("run_count", 0) + 1,
        "last_summary": summary,
        "in_flight": [other for other in in_flight if other["number"] != number],
        "latest_change": flight.get("change", ""),
    }
    if record["status"] == "grade_failed" and (failing := grader_failing([*files.runs_of(state), record])):
        # Taken, then cut short: a resume (once grade.py is fixed) analyses this run and goes on.
        numbers = ", ".join(str(run["number"]) for run in failing)
        message = f"the same grader failure on runs {numbers} in a row: {record['error']}; fix {GRADER}, then resume"
        return {**update, **halt(state, "analyze", "fatal", message)}
    return update


def stop_runs(state: ExperimentState, settings: Settings, emit: Callable[[dict], None]) -> dict:
    """The runs still in flight when the experiment ends, stopped. At a final stop (goal_met, stuck, plateau, …) each is
    recorded as cancelled with its partial log and counted; when the experiment was cut short (an error, Ctrl-C) they
    stay in flight, unrecorded, and a resume starts them again. The state's update."""
    in_flight = list(state.get("in_flight") or [])
    if not in_flight:
        return {}
    files = ExperimentFiles(state["experiment_dir"])
    pool = executor_for(files.root, devices_for(settings), settings.workers)
    stopped = {flight.job.number: flight for flight in pool.cancel([flight["number"] for flight in in_flight])}
    why = f"cancelled: the experiment stopped ({state.get('stop_reason') or 'max_runs'}) while it ran"
    ended = []
    for flight in in_flight:
        number = flight["number"]
        ran = stopped.get(number)
        outcome = ran.outcome if ran is not None and isinstance(ran.outcome, Ended) else None
        if files.read_result(number) is not None:  # it ended by itself just before, or a report cut short recorded it
            ended.append(number)
            continue
        if state.get("halted"):  # cut short: it stays in flight, and a resume starts it again
            continue
        kill_leftover(files.child_file(number))  # a runner killed while stopping it left it running
        run_dir = files.run_dir(number)
        removed = scrub_run_folder(run_dir)  # before the runner reads anything there
        log = summarize_log(run_dir / "output.log", run_dir / "metrics.json")
        duration = outcome.result.duration_s if outcome is not None else (ran.ended - ran.started if ran and ran.started and ran.ended else 0.0)
        write_record(files, flight, None, duration, judge(files, settings, number, "cancelled", why, log.metrics, removed=removed), emit)
        ended.append(number)
    if not ended:
        return {}
    return {"in_flight": [flight for flight in in_flight if flight["number"] not in ended], "run_count": state.get("run_count", 0) + len(ended)}


def _resubmit_unknown(
    state: ExperimentState, in_flight: list[InFlight], pool: Executor, files: ExperimentFiles, settings: Settings, mode: str, runtime: Runtime[Settings]
) -> tuple[InFlight, RunRecord] | None:
    """After a resume, the runs the state has in flight are unknown to this process's executor: one already recorded
    (it ended just before the runner was killed) is returned to be taken as ended; the others start again."""
    recorded = None
    for flight in in_flight:
        if pool.knows(flight["number"]):
            continue
        if (record := files.read_result(flight["number"])) is not None:  # ended: never run again; the next wait takes the others
            recorded = recorded or (flight, record)
            continue
        runtime.stream_writer({"event": "warning", "message": f"run {flight['number']} was in flight when the runner stopped: it starts again"})
        pool.submit(job_for(files, settings, flight, mode))
    return recorded


def restart_flights(state: ExperimentState, runtime: Runtime[Settings]) -> None:
    """After a resume, start again at once the runs the state has in flight and this process's executor does not know,
    whichever step the experiment goes on with (they need not wait for the next execute or wait)."""
    in_flight = state.get("in_flight") or []
    files = ExperimentFiles(state["experiment_dir"])
    pool = executor_for(files.root, devices_for(runtime.context), runtime.context.workers)
    if all(pool.knows(flight["number"]) for flight in in_flight):
        return
    _resubmit_unknown(state, list(in_flight), pool, files, runtime.context, _sandbox_mode(runtime.context, runtime, is_graded(files.root)), runtime)


def _sandbox_mode(settings: Settings, runtime: Runtime[Settings], graded: bool) -> str:
    """bwrap or none (SandboxError when what was asked for cannot work here); auto's fallback is said once."""
    mode, warning = sandbox_for(settings, graded)
    _warn_once(warning, runtime)
    return mode


def _warn_once(warning: str | None, runtime: Runtime[Settings]) -> None:
    """Auto's fallback to no sandbox: said once per runner process, not every run."""
    if warning and warning not in _warned:
        _warned.add(warning)
        runtime.stream_writer({"event": "warning", "message": warning})


def _track(files: ExperimentFiles, settings: Settings, record: RunRecord, mode: str, summary: str, emit: Callable[[dict], None]) -> None:
    """Log the run to MLflow too: a tracking failure costs that record only, never the run."""
    number = record["number"]
    params = {
        "run_number": number,
        "code_model": settings.code_model,
        "summarize_model": settings.summarize_model,
        "report_model": settings.report_model,
        "sandbox": mode,
        "no_network": settings.no_network,
        "status": record["status"],
    }
    run_dir = files.run_dir(number)
    try:
        log_run(
            settings.mlflow_tracking_uri,
            files.root,
            record,
            params=params,
            artifacts=[run_dir / "train.py", run_dir / "output.log"],
            log_path=run_dir / "output.log",
            description=summary,
        )
    except TrackingError as exc:
        emit({"event": "warning", "message": str(exc)})
