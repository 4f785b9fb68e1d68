"""The wiring: initialize, then summarize → codegen → review → execute → analyze until a stop reason, then report."""

from __future__ import annotations

import os
from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from adapters.llm import is_retryable
from nodes.analyze import analyze
from nodes.codegen import codegen
from nodes.execute import execute
from nodes.initialize import initialize
from nodes.report import report
from nodes.review import review
from nodes.summarize import summarize
from settings import ENV_SETTINGS, Settings
from state import ExperimentState, InputState, OutputState


def after_analyze(state: ExperimentState) -> Literal["summarize", "report"]:
    """Loop for another run until analyze has recorded why to stop."""
    return "report" if state.get("stop_reason") else "summarize"


def after_review(state: ExperimentState) -> Literal["codegen", "execute"]:
    """A rejected train.py goes back to codegen with the reviewer's reason."""
    return "codegen" if state.get("review_feedback") else "execute"


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


def build_graph() -> StateGraph:
    """The experiment graph, uncompiled: callers choose the checkpointer."""
    builder = StateGraph(ExperimentState, context_schema=Settings, input_schema=InputState, output_schema=OutputState)
    llm_retry = llm_retry_policy()
    builder.add_node("initialize", initialize, retry_policy=llm_retry)
    builder.add_node("summarize", summarize)
    builder.add_node("codegen", codegen, retry_policy=llm_retry)
    builder.add_node("review", review)
    builder.add_node("execute", execute)
    builder.add_node("analyze", analyze, retry_policy=llm_retry)
    builder.add_node("report", report, retry_policy=llm_retry)

    builder.add_edge(START, "initialize")
    builder.add_edge("initialize", "summarize")
    builder.add_edge("summarize", "codegen")
    builder.add_edge("codegen", "review")
    builder.add_conditional_edges("review", after_review)
    builder.add_edge("execute", "analyze")
    builder.add_conditional_edges("analyze", after_analyze)
    builder.add_edge("report", END)
    return builder


# No checkpointer: LangGraph Studio and parent graphs supply their own; main.py compiles its own copy.
graph = build_graph().compile(name="experiment")
