"""The runner: one experiment folder, driven to its end through the graph, on the folder's own checkpoint and under its lock.

main.py puts a terminal around it; `run_experiment` is the same without one, for scripts and notebooks.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, StateSnapshot

from adapters.checkpoints import prune_checkpoints
from adapters.executor import close_executor, listen
from adapters.files import ExperimentFiles
from adapters.grader import is_graded
from adapters.llm import LLMError
from adapters.machine import check_python, describe_machine, gpu_devices, machine_text
from adapters.preflight import preflight
from adapters.process import allow_new_runs, cancel_requested, cancel_running_scripts, check_limit_tools
from adapters.sandbox import python_installation, resolve_mode
from adapters.tracking import local_store_uri, mlflow_installed
from adapters.training import sandbox_for
from goal import goal_from_idea, parse_goal
from graph import build_graph
from graph.experiment import halt, resume_halted
from nodes.report import report
from nodes.review import ReviewError, parse_decision
from nodes.stop_rules import run_limit
from settings import ENV_SETTINGS, Settings, UsageError, settings_env
from state import RunRecord

THREAD_ID = "experiment"
"""One experiment folder, one checkpoint database, one thread."""


def load_settings(experiment: Path, overrides: dict, mlflow: bool = False, export: bool = False) -> Settings:
    """Settings from `overrides` (flags, keyword arguments) over settings_env().

    With `export` (the command line), the .env files' variables also go into this process's environment,
    where the MLflow client and train.py's SANDBOX_ENV names find them; a Python caller's environment is
    left as it was, so one experiment's .env never leaks into the next.
    """
    env = settings_env(experiment)
    if export:
        for name, value in env.items():
            os.environ.setdefault(name, value)
    if mlflow and "mlflow_tracking_uri" not in overrides:
        overrides = {**overrides, "mlflow_tracking_uri": ENV_SETTINGS["MLFLOW_TRACKING_URI"].read(env) or local_store_uri(experiment)}
    settings = Settings.from_env(env, **{name: value for name, value in overrides.items() if value is not None})
    if settings.mlflow_tracking_uri and not mlflow_installed():
        asked = "--mlflow is given" if mlflow else "MLFLOW_TRACKING_URI is set"
        raise UsageError(f"{asked} but mlflow is not installed: pip install -e '.[mlflow]'")
    settings.check()
    # What no run could work without stops here, before any LLM call: the training interpreter, the limits' tools, the sandbox.
    if settings.executor == "ray":  # the nodes answer for themselves, once the folder's own checks pass (prepare)
        return settings
    if settings.train_python:
        settings.train_python = check_python(settings.train_python)  # as it names itself: absolute, past any wrapper
    check_limit_tools()
    devices = gpu_devices(settings.gpus)
    if settings.gpus_per_run > len(devices) and (devices or settings.gpus == "none"):
        given = f"only {len(devices)} GPUs are given ({','.join(devices)})" if devices else "GPUS=none gives none"
        raise UsageError(f"GPUS_PER_RUN={settings.gpus_per_run} but {given}: no run could start")
    if resolve_mode(settings.sandbox, no_network=settings.no_network)[0] == "bwrap":
        python_installation(settings.python)
    return settings


def prepare(
    experiment_dir: str, resume: bool, overrides: dict, mlflow: bool = False, export: bool = False, fresh: bool = False
) -> tuple[ExperimentFiles, Settings]:
    """The experiment's files and settings, once everything that can be checked before any LLM call is (UsageError otherwise)."""
    files = ExperimentFiles(experiment_dir)
    if not files.root.is_dir():
        raise UsageError(f"experiment directory {experiment_dir} does not exist")
    settings = load_settings(files.root, overrides, mlflow, export)
    if fresh and resume:
        raise UsageError("--fresh starts anew and --resume goes on: give one of them")
    if resume and not files.checkpoints.is_file():
        raise UsageError(f"nothing to resume in {files.root}: {_no_checkpoint(files, settings, experiment_dir)}")
    if not resume:
        idea = files.read_idea()  # ExperimentInputError when missing or empty
        try:
            goal_from_idea(idea)
        except ValueError as exc:  # a goal line that does not parse
            raise UsageError(f"{files.idea}: {exc}") from None
    if is_graded(files.root):  # train.py must not see grade.py or private/: SandboxError (exit 2) when auto finds no bwrap
        sandbox_for(settings, graded=True)
        if settings.executor == "ray" and settings.sandbox == "auto":
            settings.sandbox = "bwrap"  # on every node: the check below refuses a node without it
    if settings.executor == "ray":  # last, as it joins (or starts) a cluster: sandbox, limits' tools, TRAIN_PYTHON, room for a run, data
        from adapters.cluster import check

        check(settings, files.root)
    return files, settings


def _no_checkpoint(files: ExperimentFiles, settings: Settings, experiment_dir: str) -> str:
    """Why there is nothing to resume, and what to do."""
    if runs := files.existing_runs():
        return (
            f"it holds {len(runs)} run folder(s) but no checkpoint (.runner/checkpoints.sqlite is missing, so they cannot be continued): "
            f"start afresh with `{settings.start_command(experiment_dir)} --fresh`, which moves them aside into a dated folder"
        )
    return f"start it with `{settings.start_command(experiment_dir)}`"


@contextmanager
def checkpointed(files: ExperimentFiles) -> Iterator[tuple[CompiledStateGraph, dict]]:
    """The experiment graph on the folder's own checkpoint database (the caller holds the runner lock)."""
    with SqliteSaver.from_conn_string(str(files.checkpoints)) as checkpointer:
        yield build_graph().compile(checkpointer=checkpointer, name="experiment"), {"configurable": {"thread_id": THREAD_ID}}


def drive(app: CompiledStateGraph, config: dict, stream_input, settings: Settings, *, on_event, on_update, answer) -> dict:
    """Stream the graph to its end: custom events to `on_event`, node updates to `on_update`, each interrupt to `answer`; the final state."""
    while True:
        for mode, chunk in app.stream(stream_input, config, context=settings, stream_mode=["updates", "custom"], durability="sync"):
            if mode == "custom":
                on_event(chunk)
            else:
                for node, update in chunk.items():
                    if node != "__interrupt__":
                        on_update(node, update)
                    if node == "analyze" and settings.keep_checkpoints:  # once a run: the database stays the size of the latest few
                        prune_checkpoints(app.checkpointer, config["configurable"]["thread_id"], settings.keep_checkpoints)
        snapshot = app.get_state(config)
        if not snapshot.interrupts:
            return snapshot.values
        stream_input = Command(resume=answer(snapshot.interrupts[0].value))


@dataclass
class Session:
    """An experiment opened for this invocation, under its lock: what to stream into the graph, and what was found on the way."""

    files: ExperimentFiles
    settings: Settings
    app: CompiledStateGraph
    config: dict
    stream_input: dict | Command | None | bool
    """The graph's input: a fresh input, None or a Command to resume, or False when it is finished and nothing more is asked."""
    warnings: list[str] = field(default_factory=list)
    """What the checks before the first step found worth saying (preflight)."""
    moved_aside: Path | None = None
    """With --fresh: where the earlier experiment's outputs went."""

    @property
    def finished(self) -> bool:
        return self.stream_input is False

    def values(self) -> dict:
        return self.app.get_state(self.config).values

    def runs(self, values: dict | None = None) -> list[RunRecord]:
        """Every finished run's record, from run_N/result.json (the state only counts them)."""
        return self.files.runs_of(values if values is not None else self.values())

    def drive(self, *, on_event: Callable[[dict], None], on_update: Callable[[str, dict], None], answer: Callable[[dict], dict]) -> dict:
        """Stream the graph to its end (see drive); the final state.

        The runs in flight report their output as it comes, from their own threads, straight to `on_event`; `on_event`
        and `on_update` are called one at a time, never two at once. Whatever still runs when this returns or raises is stopped.
        """
        lock = threading.Lock()

        def one_at_a_time(event: dict) -> None:
            with lock:
                on_event(event)

        def updated(node: str, update: dict) -> None:
            with lock:
                on_update(node, update)

        listen(self.files.root, one_at_a_time)
        try:
            return drive(self.app, self.config, self.stream_input, self.settings, on_event=one_at_a_time, on_update=updated, answer=answer)
        finally:
            listen(self.files.root, None)
            close_executor(self.files.root)


@contextmanager
def session(
    experiment_dir: str,
    *,
    resume: bool,
    max_runs: int | None,
    overrides: dict,
    mlflow: bool = False,
    export: bool = False,
    fresh: bool = False,
    check: Callable[[Settings], None] | None = None,
) -> Iterator[Session]:
    """The one way an experiment is started or resumed, for main.py and run_experiment alike: prepare (settings and input
    checked, then the caller's own `check` of the settings) → lock → start or resume → preflight (key and models), before
    anything is spent. With `fresh`, preflight comes first and only then, under the lock, are the earlier outputs moved aside."""
    files, settings = prepare(experiment_dir, resume, overrides, mlflow, export, fresh)
    try:
        if check:
            check(settings)
        with files.runner_lock():
            warnings, moved_aside = [], None
            if fresh:
                warnings = _checked_before_spending(settings, nothing_saved=True)
                moved_aside = files.move_aside()
            with checkpointed(files) as (app, config):
                started = Session(files, settings, app, config, start_or_resume(app, config, files, resume, max_runs, settings), warnings, moved_aside)
                if not fresh and not started.finished:
                    started.warnings = _checked_before_spending(settings, nothing_saved=isinstance(started.stream_input, dict))
                yield started
    finally:
        if settings.executor == "ray":  # joined (or started) in prepare: left whatever happened since
            from adapters.cluster import disconnect

            disconnect()


def _checked_before_spending(settings: Settings, nothing_saved: bool) -> list[str]:
    """Preflight's warnings; its LLMError says whether anything is saved (a fresh start: the same command again, not --resume)."""
    try:
        return preflight(settings)
    except LLMError as exc:
        exc.nothing_saved = nothing_saved
        raise


def run_experiment(
    experiment_dir: str | Path,
    max_runs: int | None = None,
    *,
    resume: bool = False,
    fresh: bool = False,
    on_event: Callable[[dict], None] | None = None,
    on_review: Callable[[dict], dict] | None = None,
    **settings,
) -> dict:
    """What `python main.py` does, without the terminal: start (or with resume=True, continue) an experiment; its final state,
    with `runs`: every run's record (draft, improve or debug, its parent, status and metrics), in order.

    `settings` are Settings fields (e.g. code_model="...", max_cost_usd=2.0, sandbox="none") over the
    environment and .env files. `on_event` receives the progress events the nodes emit. With review on
    (review=True), `on_review(request)` answers each pause: {"action": "approve"}, {"action": "reject", "reason": ...} or
    {"action": "edit", "code": ...}. With fresh=True, the outputs of an earlier experiment in the folder are moved
    aside into a dated folder first. Bad input raises UsageError, a key or model the provider rejects
    LLMError; an experiment cut short returns with stop_reason fatal, llm_unavailable or interrupted.
    """
    on_event = on_event or _ignore

    def can_review(chosen: Settings) -> None:
        if chosen.review and on_review is None:
            raise UsageError("review is on: pass on_review=, a function that answers each pause")

    overrides = {"program": "run_experiment", **settings}
    with session(str(experiment_dir), resume=resume, max_runs=max_runs, overrides=overrides, fresh=fresh, check=can_review) as started:
        chosen = started.settings

        def answer(request: dict) -> dict:
            if not (chosen.review and on_review):
                return {"action": "approve"}
            decision = on_review(request)
            try:
                return parse_decision(decision)  # a bad answer is refused here, before it is saved and replayed on every resume
            except ReviewError as exc:
                raise UsageError(f"on_review answered {decision!r}: {exc}") from None

        if started.finished:
            return with_runs(started, started.values())
        if started.moved_aside:
            on_event({"event": "warning", "message": f"the earlier experiment's outputs were moved to {started.moved_aside}"})
        for warning in started.warnings:
            on_event({"event": "warning", "message": warning})
        with _stopped_by_ctrl_c():
            return with_runs(started, started.drive(on_event=on_event, on_update=lambda node, update: None, answer=answer))


def with_runs(started: Session, values: dict) -> dict:
    """The final state as run_experiment returns it: with `runs`, every run's record (read from the run folders)."""
    return {**values, "runs": started.runs(values)}


@contextmanager
def _stopped_by_ctrl_c() -> Iterator[None]:
    """While the graph runs: the first Ctrl-C (SIGINT, a notebook's interrupt) kills the running train.py and ends the
    experiment as interrupted, resumable; a second one raises KeyboardInterrupt at once. Only the main thread gets signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame) -> None:
        if cancel_requested():
            raise KeyboardInterrupt
        cancel_running_scripts()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        allow_new_runs()


def _ignore(event: dict) -> None:
    pass


def start_or_resume(app: CompiledStateGraph, config: dict, files: ExperimentFiles, resume: bool, max_runs: int | None, settings: Settings):
    """The graph input for this invocation: a fresh input, None or a Command to resume, or False when it is finished and nothing more is asked."""
    snapshot = app.get_state(config)
    has_state = bool(snapshot.values)
    if not resume:
        if has_state:
            resume_hint = settings.resume_command(str(files.root))
            fresh = f"{settings.start_command(str(files.root))} --fresh"
            raise UsageError(f"{files.root} already holds an experiment: continue it with `{resume_hint}`, or start afresh with `{fresh}`")
        if files.existing_runs():
            raise UsageError(f"{files.root} {_no_checkpoint(files, settings, str(files.root)).removeprefix('it ')}")
        return {"experiment_dir": str(files.root), "max_runs": max_runs or settings.max_runs}

    if not has_state:
        raise UsageError(f"nothing to resume in {files.root}: {_no_checkpoint(files, settings, str(files.root))}")
    values = snapshot.values
    update: dict = {}
    if values.get("experiment_dir") != str(files.root):  # the folder was moved or renamed
        update["experiment_dir"] = str(files.root)
    if (machine := values.get("machine")) and not machine.partition("\n")[0].endswith(f" at {settings.python}"):
        update["machine"] = machine_text(describe_machine(settings.python))  # resumed with another TRAIN_PYTHON: tell the model anew
    if "run_count" not in values and (legacy := saved_channel(app, config, "runs")) is not None:
        update["run_count"] = len(legacy)  # saved before the tree search, when the state held every run's record
    runs_done = update.get("run_count", values.get("run_count", 0))
    in_flight = values.get("in_flight") or []
    runs_given = runs_done + len(in_flight)  # the runs in flight were started: they finish, or start again
    halted = values.get("halted")
    pending = unfinished(snapshot)
    if pending or halted:
        if max_runs:
            if max_runs < runs_given:
                started = f"{runs_given} runs already started ({len(in_flight)} of them in flight)" if in_flight else f"{runs_done} runs already done"
                raise UsageError(f"--max-runs {max_runs} is below the {started}")
            update["max_runs"] = max_runs
        resume_at = halted["stage"] if halted else pending[0]
        if resume_at in ("codegen", "review") and update.get("max_runs", values.get("max_runs", 0)) <= runs_given:
            # Past the check before each run (summarize), under a run limit lowered since: no new run.
            if in_flight:  # those in flight finish first
                app.update_state(config, {**update, "next_run": None, "halted": None}, as_node="summarize")
                return None
            stop = run_limit(update.get("max_runs", values.get("max_runs", 0)))
            app.update_state(config, {**update, "stop_reason": stop.reason, "stop_detail": stop.detail, "halted": None}, as_node="analyze")
            return None
    if halted and not (halted["stage"] == "report" and update.get("max_runs", 0) > runs_done):
        if pending:  # killed while report wrote the record of the halt: that record is not needed now
            app.update_state(config, None, as_node=pending[0])
        return resume_halted(halted, update)  # cut short by an error or Ctrl-C: run that step again
    if pending:  # stopped between steps (killed, or left during an LLM call): go on from the last finished one
        if update:
            app.update_state(config, update)
        return None

    # Finished: only a higher run limit gives it more to do.
    if not max_runs or max_runs <= runs_done:
        return False
    app.update_state(config, {**update, "max_runs": max_runs, "stop_reason": None, "stop_detail": "", "halted": None}, as_node="analyze")
    return None


def saved_channel(app: CompiledStateGraph, config: dict, name: str):
    """A channel of the latest checkpoint as saved, also one the graph no longer has (and so leaves out of get_state); None if absent."""
    saved = app.checkpointer.get_tuple(config) if app.checkpointer else None
    return saved.checkpoint["channel_values"].get(name) if saved else None


def unfinished(snapshot: StateSnapshot) -> list[str]:
    """The steps the graph has yet to run, or to finish recording: a step whose output is saved but not yet checkpointed
    is among the snapshot's tasks, not in its `next`. Empty when the graph has ended."""
    return [task.name for task in snapshot.tasks]


def record_interrupt(app, config: dict, settings: Settings) -> None:
    """Leaving on Ctrl-C while a step still runs (an LLM call, the review prompt): record the halt and write REPORT.md, as the graph would have."""
    try:
        snapshot = app.get_state(config)
        running = [task.name for task in snapshot.tasks if task.result is None]
        if not running or snapshot.values.get("halted"):
            return
        stage = running[0]
        app.update_state(config, halt(snapshot.values, stage, "interrupted", f"stopped by the user during {stage}"), as_node=stage)
        written = report(app.get_state(config).values, Runtime(context=settings))  # a halt's report: the record, no LLM call
        app.update_state(config, written, as_node="report")
    except Exception:  # leaving matters more: a resume goes on from the last finished step all the same
        pass


def outcome(values: dict) -> str:
    """The last word of every run: why it stopped, the best run and its goal metric, and where the report is."""
    reason = values.get("stop_reason") or "max_runs"
    if halted := values.get("halted"):
        why = f"{reason} during {halted['stage']}"
    else:
        why = f"{reason} ({values['stop_detail']})" if values.get("stop_detail") else reason
    parts = [f"Stopped: {why} after {values.get('run_count', 0)} runs"]
    best, goal = values.get("best_run"), parse_goal(values.get("goal", ""))
    if best is not None and goal is not None and goal.metric in best["metrics"]:
        parts.append(f"best: run {best['number']} ({goal.metric}={best['metrics'][goal.metric]:.6g})")
    if values.get("report_path"):
        parts.append(f"report: {values['report_path']}" + (" (unfinished)" if halted else ""))
    return " · ".join(parts)


def read_state(files: ExperimentFiles) -> StateSnapshot:
    """The experiment's latest checkpoint, opened read-only: a runner at work is not disturbed."""
    connection = sqlite3.connect(f"file:{files.checkpoints}?mode=ro", uri=True, timeout=10, check_same_thread=False)
    try:
        return build_graph().compile(checkpointer=SqliteSaver(connection)).get_state({"configurable": {"thread_id": THREAD_ID}})
    finally:
        connection.close()
