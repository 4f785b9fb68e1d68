"""The wiring: initialize, then summarize → codegen → review → execute → analyze until a stop reason, then report.

An LLM error that retrying cannot fix, and Ctrl-C, end the loop too: the node records why and where
(`halted`) and hands over to report, which writes the record without asking the LLM. A resume re-enters
the node that was cut short (see `resume_halted`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, RetryPolicy

from adapters.llm import LLMError, is_retryable
from adapters.process import RunCancelled, cancel_requested
from nodes.analyze import analyze
from nodes.codegen import codegen
from nodes.execute import execute
from nodes.initialize import initialize
from nodes.report import report
from nodes.review import review
from nodes.summarize import summarize
from settings import ENV_SETTINGS, Settings
from state import ExperimentState, Halt, InputState, OutputState


def after_analyze(state: ExperimentState) -> Literal["summarize", "report"]:
    """Loop for another run until analyze has recorded why to stop (or the step was cut short)."""
    return "report" if state.get("stop_reason") else "summarize"


def after_summarize(state: ExperimentState) -> Literal["codegen", "report"]:
    """A new run only when no limit or budget forbids it (and the step was not cut short)."""
    return "report" if state.get("stop_reason") or state.get("halted") else "codegen"


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


def llm_retry_policy(backoff_seconds: float | None = None) -> RetryPolicy:
    """Retry an LLM node on rate limits, 5xx, timeouts and lost connections only, never on a bad key or model.

    The openai SDK already retries each request LLM_MAX_RETRIES times, honouring Retry-After; these
    node-level tries wait backoff_seconds, then twice that (at most 60 s), for the provider to recover.
    """
    if backoff_seconds is None:  # retry policies are fixed when the graph is built, not per invocation like the context
        backoff_seconds = ENV_SETTINGS["LLM_RETRY_BACKOFF_SECONDS"].read(os.environ)
    # LangGraph's jitter adds 0-1 s: it spreads waits of seconds, and would swamp the short ones tests use.
    return RetryPolicy(
        initial_interval=backoff_seconds,
        backoff_factor=2.0,
        max_interval=60.0,
        max_attempts=LLM_NODE_ATTEMPTS,
        jitter=backoff_seconds >= 1,
        retry_on=is_retryable,
    )


def halt(state: ExperimentState, stage: str, reason: str, message: str, usage: list | None = None) -> dict:
    """Cut the experiment short: the update recording why and where (and what the failed step spent), after which the edges lead to report."""
    halted = Halt(stage=stage, stop_reason=state.get("stop_reason"), stop_detail=state.get("stop_detail", ""))
    return {"stop_reason": reason, "stop_detail": message, "halted": halted, "usage": usage or []}


def resume_halted(halted: Halt, update: dict | None = None) -> Command:
    """The input that re-enters the node an experiment was cut short in; the halt is cleared only once that node succeeds.

    So a runner killed while the node runs again leaves the halt in place, and the next resume re-enters it once more.
    """
    return Command(goto=halted["stage"], update=update or None)


def stops_cleanly(node: Callable, stage: str, attempts: int = 1) -> Callable:
    """`node`, turned to a halt when the runner is stopping, or when its LLM error is final (fatal, or its last try).

    The node cut short runs again on resume (see resume_halted): it then sees the state as it was before
    the halt, and its success clears the halt. The report node, cut short itself, writes the record of its
    own halt at once: its edge leads to END.
    """

    @functools.wraps(node)
    def run(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
        halted = state.get("halted")
        if halted and halted["stage"] != stage:  # report, writing the record of a halt: nothing may cut it short again
            return node(state, runtime)
        resumed = {}
        if halted:  # entered again on resume
            resumed = {"halted": None, "stop_reason": halted["stop_reason"], "stop_detail": halted["stop_detail"]}
            state = {**state, **resumed}
        if cancel_requested():
            stopped = halt(state, stage, "interrupted", f"stopped by the user before {stage}")
        else:
            try:
                return {**resumed, **node(state, runtime)}
            except RunCancelled as exc:
                stopped = halt(state, stage, "interrupted", f"stopped by the user: {exc}")
            except LLMError as exc:
                info = runtime.execution_info
                if is_retryable(exc) and info is not None and info.node_attempt < attempts:
                    raise  # the retry policy tries the node again
                stopped = halt(state, stage, "llm_unavailable" if exc.kind == "unavailable" else "fatal", str(exc), exc.usage)
        if stage == "report":
            return {**stopped, **node({**state, **stopped, "usage": [*state.get("usage", []), *stopped["usage"]]}, runtime)}
        return stopped

    return run


def build_graph() -> StateGraph:
    """The experiment graph, uncompiled: callers choose the checkpointer."""
    builder = StateGraph(ExperimentState, context_schema=Settings, input_schema=InputState, output_schema=OutputState)
    llm_retry = llm_retry_policy()
    for name, node in (("initialize", initialize), ("codegen", codegen), ("analyze", analyze), ("report", report)):
        builder.add_node(name, stops_cleanly(node, name, LLM_NODE_ATTEMPTS), retry_policy=llm_retry)
    for name, node in (("summarize", summarize), ("review", review), ("execute", execute)):
        builder.add_node(name, stops_cleanly(node, name))

    builder.add_edge(START, "initialize")
    for node, next_node in (("initialize", "summarize"), ("codegen", "review"), ("execute", "analyze")):
        builder.add_conditional_edges(node, unless_halted(next_node), [next_node, "report"])
    builder.add_conditional_edges("summarize", after_summarize)
    builder.add_conditional_edges("review", after_review)
    builder.add_conditional_edges("analyze", after_analyze)
    builder.add_edge("report", END)
    return builder


# No checkpointer: LangGraph Studio and parent graphs supply their own; main.py compiles its own copy.
graph = build_graph().compile(name="experiment")
