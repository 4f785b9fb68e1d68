"""Mechanical digest of the runs so far for codegen: the previous run in full, earlier ones a line each."""

from __future__ import annotations

from langgraph.runtime import Runtime

from adapters.logs import clip
from nodes.prompts import BUDGET
from nodes.records import best_run, run_line
from settings import Settings
from state import ExperimentState

RECENT_RUNS = 10
"""Earlier runs listed a line each, besides the best one."""


def summarize(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Condense the previous run (and a line for each recent one) into a bounded text."""
    runs = state.get("runs", [])
    runtime.stream_writer({"event": "stage", "stage": "summarize", "run": len(runs) + 1})
    if not runs:
        return {"previous_digest": "No run yet: this is the first one."}
    previous = runs[-1]
    parts = [previous["summary"]]
    earlier = runs[-RECENT_RUNS - 1 : -1]
    if earlier:
        parts.append("Earlier runs:\n" + "\n".join(run_line(r) for r in earlier))
    best = best_run(runs, state.get("goal", ""))
    if best is not None:
        parts.append(f"Best so far for the goal ({state.get('goal')}): {run_line(best)}")
    return {"previous_digest": clip("\n\n".join(parts), BUDGET["previous_run"])}
