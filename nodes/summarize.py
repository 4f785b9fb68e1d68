"""Before each run: whether it may start (run limit, budgets), what it does (the search's choice), and what codegen reads about it."""

from __future__ import annotations

from langgraph.runtime import Runtime

from adapters.files import ExperimentFiles, section_run
from adapters.logs import clip
from goal import best_run
from nodes.prompts import BUDGET
from nodes.records import record_summary, run_line, section_change
from nodes.stop_rules import before_run
from search import Choice, Policy, after, lineage_text, next_choice, origin
from settings import Settings
from state import ExperimentState, NextRun, RunRecord

RECENT_RUNS = 10
"""Earlier runs listed a line each, besides the parent and the best one."""


def summarize(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Stop if no new run may start; else choose the coming run's operator and parent, and digest for codegen what it builds on."""
    settings = runtime.context
    files = ExperimentFiles(state["experiment_dir"])
    runs = files.runs_of(state)
    in_flight = state.get("in_flight") or []
    if stop := before_run(runs, len(in_flight), state.get("usage", []), state.get("max_runs") or settings.max_runs, settings):
        if in_flight:  # no new run, but those in flight finish first (and may still meet the goal)
            runtime.stream_writer({"event": "stage", "stage": "summarize", "run": None, "reason": f"no new run ({stop.detail}); {len(in_flight)} in flight"})
            return {"next_run": None}
        return {"stop_reason": stop.reason, "stop_detail": stop.detail}
    if len(in_flight) >= settings.workers + settings.ahead:  # resumed with fewer workers than runs in flight
        return {"next_run": None}
    choice = next_choice(runs, state.get("goal", ""), Policy.of(settings), in_flight)
    number = len(runs) + len(in_flight) + 1
    runtime.stream_writer(
        {"event": "stage", "stage": "summarize", "run": number, "operator": choice.operator, "parent": choice.parent, "reason": choice.reason}
    )
    coming = NextRun(number=number, operator=choice.operator, parent=choice.parent, reason=choice.reason)
    return {"next_run": coming, "previous_digest": clip(digest(files, runs, choice, state.get("goal", ""), settings.python), BUDGET["previous_run"])}


def digest(files: ExperimentFiles, runs: list[RunRecord], choice: Choice, goal: str, python: str) -> str:
    """What codegen reads besides the parent's code: for a draft, a line for each other draft's approach (so drafts differ);
    for improve and debug, the parent's summary (its metrics, error and log tail), its lineage, recent runs and the best."""
    if not runs:
        return "No run yet: this is the first one."
    sections = {section_run(section): section for section in files.read_findings()}

    def change(number: int) -> str:
        return section_change(sections.get(number, ""))

    if choice.operator == "draft":
        drafts = [run for run in runs if run["operator"] == "draft"]
        if not drafts:
            return "No draft yet."
        return "The other drafts (write a different approach):\n" + "\n".join(
            f"{run_line(run)}; approach: {change(run['number']) or '(not analysed)'}" for run in drafts
        )
    parent = next(run for run in runs if run["number"] == choice.parent)  # runs in flight leave gaps in the numbers
    parts = [
        record_summary(files.run_dir(parent["number"]), parent, python),
        f"Lineage: {lineage_text(runs, parent['number'])}",
    ]
    if changed := change(parent["number"]):
        parts.append(f"Run {parent['number']} changed: {changed}")
    earlier = [run for run in runs if run["number"] != parent["number"]][-RECENT_RUNS:]
    if earlier:
        parts.append("Recent runs:\n" + "\n".join(f"{run_line(run)} ({origin(run)})" for run in earlier))
    if (best := best_run(runs, goal)) is not None and best["number"] != parent["number"]:
        parts.append(f"Best so far for the goal ({goal}): {run_line(best)}")
    return "\n\n".join(parts)


def coming_run(state: ExperimentState) -> NextRun:
    """The coming run as summarize chose it; for a state saved before the tree search, the linear loop's next run."""
    if coming := state.get("next_run"):
        return coming
    done = state.get("run_count", 0)  # saved before the tree search: one run at a time, none in flight
    operator, parent = after(ExperimentFiles(state["experiment_dir"]).read_runs(done)[-1] if done else None)
    return NextRun(number=done + 1, operator=operator, parent=parent, reason="the run before it")
