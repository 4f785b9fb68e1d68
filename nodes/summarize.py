"""Before each run: whether it may start (run limit, budgets), and a mechanical digest of the runs so far for codegen."""

from __future__ import annotations

from langgraph.runtime import Runtime

from adapters.logs import clip
from goal import best_run
from nodes.prompts import BUDGET
from nodes.records import run_line
from nodes.stop_rules import before_run
from settings import Settings
from state import ExperimentState

RECENT_RUNS = 10
"""Earlier runs listed a line each, besides the best one."""


def summarize(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Stop if no new run may start; else condense the previous run (and a line for each recent one) into a bounded text."""
    runs = state.get("runs", [])
    if stop := before_run(runs, state.get("usage", []), state.get("max_runs") or runtime.context.max_runs, runtime.context):
        return {"stop_reason": stop.reason, "stop_detail": stop.detail}
    runtime.stream_writer({"event": "stage", "stage": "summarize", "run": len(runs) + 1})
    if not runs:
        return {"previous_digest": "No run yet: this is the first one."}
    parts = [state.get("last_summary", "")]
    earlier = runs[-RECENT_RUNS - 1 : -1]
    if earlier:
        parts.append("Earlier runs:\n" + "\n".join(run_line(r) for r in earlier))
    best = best_run(runs, state.get("goal", ""))
    if best is not None:
        parts.append(f"Best so far for the goal ({state.get('goal')}): {run_line(best)}")
    return {"previous_digest": clip("\n\n".join(parts), BUDGET["previous_run"])}
