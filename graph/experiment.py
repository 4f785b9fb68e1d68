"""The wiring: initialize, then summarize → codegen → review → execute → analyze until a stop reason, then report."""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END, START, StateGraph

from nodes.analyze import analyze
from nodes.codegen import codegen
from nodes.execute import execute
from nodes.initialize import initialize
from nodes.report import report
from nodes.review import review
from nodes.summarize import summarize
from settings import Settings
from state import ExperimentState, InputState, OutputState


def after_analyze(state: ExperimentState) -> Literal["summarize", "report"]:
    """Loop for another run until analyze has recorded why to stop."""
    return "report" if state.get("stop_reason") else "summarize"


def after_review(state: ExperimentState) -> Literal["codegen", "execute"]:
    """A rejected train.py goes back to codegen with the reviewer's reason."""
    return "codegen" if state.get("review_feedback") else "execute"


def build_graph() -> StateGraph:
    """The experiment graph, uncompiled: callers choose the checkpointer."""
    builder = StateGraph(ExperimentState, context_schema=Settings, input_schema=InputState, output_schema=OutputState)
    builder.add_node("initialize", initialize)
    builder.add_node("summarize", summarize)
    builder.add_node("codegen", codegen)
    builder.add_node("review", review)
    builder.add_node("execute", execute)
    builder.add_node("analyze", analyze)
    builder.add_node("report", report)

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
