"""How tasks, findings, runs and the goal read as text in prompts and reports, within size budgets."""

from __future__ import annotations

import operator
import re
import shlex

from adapters.logs import clip, format_metrics
from nodes.prompts import BUDGET
from state import ExperimentState, RunRecord, Task

GOAL = re.compile(r"([A-Za-z_][\w./-]*)\s*(>=|<=|>|<)\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)")
COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def resume_command(experiment_dir: str) -> str:
    """The command line that continues the experiment in `experiment_dir` from its last finished step."""
    return f"python main.py -d {shlex.quote(experiment_dir)} --resume"


def parse_goal(goal: str) -> tuple[str, str, float] | None:
    """('test_accuracy', '>=', 0.99) from a line like 'test_accuracy >= 0.99', else None."""
    match = GOAL.search(goal or "")
    return (match.group(1).lower(), match.group(2), float(match.group(3))) if match else None


GOAL_LINE = re.compile(r"^[ \t]*goal[ \t]*:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def goal_from_idea(idea: str) -> str | None:
    """The canonical 'metric op number' of IDEA.md's `goal:` line, None without one; ValueError when it does not parse."""
    match = GOAL_LINE.search(idea)
    if match is None:
        return None
    parsed = parse_goal(match.group(1))
    if parsed is None or GOAL.fullmatch(match.group(1).strip()) is None:
        raise ValueError(f"the goal line {match.group(0).strip()!r} must read `goal: <metric> <op> <number>` with op one of >=, >, <=, <")
    metric, op, target = parsed
    return f"{metric} {op} {target:g}"


PLAN_GOAL = re.compile(r"^\*\*Goal\*\* \(([^)]*)\): `(.*)`$", re.MULTILINE)


def plan_goal_line(goal: str, source: str) -> str:
    """PLAN.md's goal line, e.g. **Goal** (from IDEA.md): `test_accuracy >= 0.99`."""
    return f"**Goal** ({source}): `{goal}`"


def goal_from_plan(plan: str) -> str:
    """The goal PLAN.md states (see plan_goal_line), or empty."""
    match = PLAN_GOAL.search(plan)
    return match.group(2) if match else ""


def best_run(runs: list[RunRecord], goal: str) -> RunRecord | None:
    """The run with the best value of the goal's metric, if the goal names one that runs report."""
    parsed = parse_goal(goal)
    if not parsed:
        return None
    metric, op, _ = parsed
    scored = [r for r in runs if metric in r["metrics"]]
    if not scored:
        return None
    pick = max if op in (">=", ">") else min
    return pick(scored, key=lambda r: r["metrics"][metric])


def tasks_text(tasks: list[Task], budget: int) -> str:
    """One line a task, open ones first."""
    order = {"in_progress": 0, "todo": 1, "done": 2, "dropped": 3}
    lines = []
    for task in sorted(tasks, key=lambda t: (order.get(t["status"], 4), t["id"])):
        runs = f" (runs {', '.join(map(str, task['runs']))})" if task["runs"] else ""
        notes = f" — {task['notes']}" if task["notes"] else ""
        lines.append(f"#{task['id']} [{task['status']}] {task['title']}{notes}{runs}")
    return clip("\n".join(lines) or "(no tasks)", budget)


def latest_findings(sections: list[str], budget: int) -> str:
    """The newest KEY_FINDINGS sections that fit in `budget` (a note of the omitted ones included), oldest first."""
    if not sections:
        return "(none yet)"
    room = budget - len(f"({len(sections)} earlier sections omitted)\n\n")
    kept: list[str] = []
    for section in reversed(sections):
        if sum(len(s) + 2 for s in kept) + len(section) > room:
            break
        kept.append(section)
    if not kept:
        kept.append(clip(sections[-1], room))
    omitted = len(sections) - len(kept)
    head = [f"({omitted} earlier sections omitted)"] if omitted else []
    return "\n\n".join(head + kept[::-1])


def experiment_context(state: ExperimentState) -> dict[str, str]:
    """The idea, plan, tasks and findings, each clipped to its budget, for EXPERIMENT_CONTEXT."""
    return {
        "idea": clip(state.get("idea", ""), BUDGET["idea"]),
        "plan": clip(state.get("plan", ""), BUDGET["plan"]),
        "tasks": tasks_text(state.get("tasks", []), BUDGET["tasks"]),
        "findings": latest_findings(state.get("findings", []), BUDGET["findings"]),
    }


def run_line(run: RunRecord) -> str:
    return f"run {run['number']}: {run['status']}, {run['duration_s']:.0f} s, {format_metrics(run['metrics'])}" + (
        f", error: {run['error']}" if run["error"] else ""
    )


def runs_table(runs: list[RunRecord], goal: str = "") -> str:
    """Markdown table of every run, the best one marked."""
    best = best_run(runs, goal)
    rows = ["| Run | Status | Duration | Metrics |", "|---|---|---|---|"]
    for run in runs:
        mark = " ★" if best is not None and run["number"] == best["number"] else ""
        metrics = format_metrics(run["metrics"]).replace("|", "/")
        rows.append(f"| {run['number']}{mark} | {run['status']} | {run['duration_s']:.1f} s | {metrics} |")
    return "\n".join(rows)
