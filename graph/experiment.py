"""The wiring: initialize, then summarize → codegen → review → execute → wait → analyze until a stop reason, then report.

With WORKERS > 1, execute only submits its run and leads back to summarize while a worker is free, so the next
run's code is written while the others train; wait takes whichever run ends first, and analyze judges it while
the rest go on (adapters.executor holds them across steps: no step waits for a batch).

An LLM error that retrying cannot fix, and Ctrl-C, end the loop too: the node records why and where
(`halted`) and hands over to report, which writes the record without asking the LLM. A resume re-enters
the node that was cut short (see `resume_halted`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from adapters.executor import existing_executor
from adapters.llm import LLMError, is_retryable
from adapters.process import RunCancelled, cancel_requested
from nodes.analyze import analyze
from nodes.codegen import codegen
from nodes.execute import execute, restart_flights, wait
from nodes.initialize import initialize
from nodes.report import report
from nodes.review import review
from nodes.stop_rules import halt
from nodes.summarize import summarize
from settings import Settings, SettingsError, settings_env
from state import ExperimentState, Halt, InputState, OutputState, Usage


def after_analyze(state: ExperimentState) -> Literal["summarize", "report"]:
    """Loop for another run until analyze has recorded why to stop (or the step was cut short)."""
    return "report" if state.get("stop_reason") else "summarize"


def after_summarize(state: ExperimentState) -> Literal["codegen", "wait", "report"]:
    """A new run when no limit, budget or busy worker forbids it; else wait for a run in flight (and report once none is)."""
    if state.get("stop_reason") or state.get("halted"):
        return "report"
    if state.get("next_run") is None and state.get("in_flight"):
        return "wait"
    return "codegen"


def after_execute(state: ExperimentState) -> Literal["summarize", "wait", "report"]:
    """Another run while a worker is free (its code is written while the others train); else wait for the first to end."""
    if state.get("halted"):
        return "report"
    return "summarize" if len(state.get("in_flight") or []) < state.get("slots", 1) else "wait"


def after_review(state: ExperimentState) -> Literal["codegen", "execute", "report"]:
    """A rejected train.py goes back to codegen with the reviewer's reason."""
    if state.get("halted"):
        return "report"
    return "codegen" if state.get("review_feedback") else "execute"


def unless_halted(next_node: str) -> Callable[[ExperimentState], str]:
    """The edge to `next_node`, or to report when the step was cut short."""

    def route(state: ExperimentState) -> str:
        return "report" if state.get("halted") else next_node

    route.__name__ = f"to_{next_node}"
    return route


LLM_NODE_ATTEMPTS = 3
"""Tries of a node whose LLM call keeps failing transiently; each try is itself 1 + LLM_MAX_RETRIES requests."""

MAX_BACKOFF_SECONDS = 60.0
"""The longest wait between two tries of a node, unless the server asked for a longer one."""


def backoff_seconds(settings: Settings, failed_tries: int, exc: LLMError) -> float:
    """The wait after `failed_tries` tries: LLM_RETRY_BACKOFF_SECONDS, doubled after each (at most 60 s), or what the server asked for if longer.

    The openai SDK already retries each request LLM_MAX_RETRIES times, honouring Retry-After; these waits
    between the node's tries give the provider time to recover.
    """
    doubled = min(settings.llm_retry_backoff_seconds * 2 ** (failed_tries - 1), MAX_BACKOFF_SECONDS)
    return max(doubled, exc.retry_after or 0.0)


def wait_unless_stopping(seconds: float) -> bool:
    """Sleep `seconds` in short slices, so a Ctrl-C is not kept waiting; False when the runner is stopping."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not cancel_requested():
        time.sleep(min(left, 0.1))
    return not cancel_requested()


_FOLDER_SETTINGS: dict[Path, tuple[object, Settings]] = {}
"""The settings last read from each experiment folder, with the graph run they were read for."""


def settings_for(state: ExperimentState, runtime: Runtime[Settings]) -> Settings:
    """The settings of this invocation: its context, else what main.py would use for the experiment folder.

    So a parent graph without a context schema, or a resume without context, needs no ceremony: the folder's
    settings (environment, then <experiment>/.env, then ./.env, then defaults) are read once per graph run.
    """
    if runtime.context is not None:
        return runtime.context
    folder = Path(state["experiment_dir"]).resolve()
    graph_run = getattr(runtime, "control", None)  # one per graph run, shared by its subgraphs; a LangGraph without it: read at each node
    read_for, settings = _FOLDER_SETTINGS.get(folder, (None, None))
    if settings is not None and graph_run is not None and read_for is graph_run:
        return settings
    try:
        settings = Settings.from_env(settings_env(folder))
        settings.check()
    except SettingsError as exc:
        raise SettingsError(f"{exc} (no context was passed to the graph, so the settings were read for {folder})") from None
    _FOLDER_SETTINGS[folder] = (graph_run, settings)
    return settings


def resume_halted(halted: Halt, update: dict | None = None) -> Command:
    """The input that re-enters the node an experiment was cut short in; the halt is cleared only once that node succeeds.

    So a runner killed while the node runs again leaves the halt in place, and the next resume re-enters it once more.
    """
    return Command(goto=halted["stage"], update=update or None)


def stops_cleanly(node: Callable, stage: str, attempts: int = 1) -> Callable:
    """`node`, tried up to `attempts` times on a transient LLM error, and turned to a halt when the runner is stopping
    or when its LLM error is final (fatal, or its last try).

    The answered calls of failed tries were paid for: their usage joins the update, or the halt. The node cut
    short runs again on resume (see resume_halted): it then sees the state as it was before the halt, and its
    success clears the halt. The report node, cut short itself, writes the record of its own halt at once:
    its edge leads to END. Without a context the node gets the experiment folder's settings (settings_for).
    """

    @functools.wraps(node)
    def run(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
        if runtime.context is None:
            runtime = runtime.override(context=settings_for(state, runtime))
        if (pool := existing_executor(Path(state["experiment_dir"]).resolve())) is not None:  # what the runs in flight said meanwhile
            pool.relay(runtime.stream_writer)
        if state.get("in_flight") and stage != "report" and not cancel_requested():  # resumed: the runs in flight start again at once
            restart_flights(state, runtime)
        halted = state.get("halted")
        if halted and halted["stage"] != stage:  # report, writing the record of a halt: nothing may cut it short again
            return node(state, runtime)
        resumed = {}
        if halted:  # entered again on resume
            resumed = {"halted": None, "stop_reason": halted["stop_reason"], "stop_detail": halted["stop_detail"]}
            state = {**state, **resumed}
        spent: list[Usage] = []  # the answered calls of failed tries: paid for, so counted
        for tried in range(1, attempts + 1):
            if cancel_requested():
                reason, message = "interrupted", f"stopped by the user before {stage}"
                break
            try:
                update = node(state, runtime)
            except RunCancelled as exc:
                reason, message = "interrupted", f"stopped by the user: {exc}"
                break
            except LLMError as exc:
                spent += exc.usage
                reason, message = ("llm_unavailable" if exc.kind == "unavailable" else "fatal"), str(exc)
                if not (is_retryable(exc) and tried < attempts):
                    break
                wait = backoff_seconds(runtime.context, tried, exc)
                runtime.stream_writer({"event": "warning", "message": f"{stage} tries again in {wait:g} s (try {tried + 1} of {attempts}): {exc}"})
                if not wait_unless_stopping(wait):
                    reason, message = "interrupted", f"stopped by the user while {stage} waited to try again"
                    break
                continue
            if spent:
                update = {**update, "usage": [*spent, *update.get("usage", [])]}
            return {**resumed, **update}
        stopped = halt(state, stage, reason, message, spent)
        if stage == "report":
            return {**stopped, **node({**state, **stopped, "usage": [*state.get("usage", []), *stopped["usage"]]}, runtime)}
        return stopped

    return run


def build_graph() -> StateGraph:
    """The experiment graph, uncompiled: callers choose the checkpointer."""
    builder = StateGraph(ExperimentState, context_schema=Settings, input_schema=InputState, output_schema=OutputState)
    for name, node in (("initialize", initialize), ("codegen", codegen), ("analyze", analyze), ("report", report)):
        builder.add_node(name, stops_cleanly(node, name, LLM_NODE_ATTEMPTS))
    for name, node in (("summarize", summarize), ("review", review), ("execute", execute), ("wait", wait)):
        builder.add_node(name, stops_cleanly(node, name))

    builder.add_edge(START, "initialize")
    for node, next_node in (("initialize", "summarize"), ("codegen", "review"), ("wait", "analyze")):
        builder.add_conditional_edges(node, unless_halted(next_node), [next_node, "report"])
    builder.add_conditional_edges("summarize", after_summarize)
    builder.add_conditional_edges("execute", after_execute)
    builder.add_conditional_edges("review", after_review)
    builder.add_conditional_edges("analyze", after_analyze)
    builder.add_edge("report", END)
    return builder


# No checkpointer: LangGraph Studio and parent graphs supply their own; main.py compiles its own copy.
graph = build_graph().compile(name="experiment")
