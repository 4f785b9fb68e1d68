"""The goal: a line like `test_accuracy >= 0.99`, read, compared and used to rank runs, in one place for every reader.

The nodes, the terminal views, `status` and view_tasks.py all judge runs through this module, so the goal
means the same everywhere. Its target is the number as the user wrote it: `val_loss <= 0.0012345678` is
compared against 0.0012345678 and shown as `0.0012345678`, never rounded.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from state import RunRecord

GOAL = re.compile(r"([A-Za-z_][\w./-]*)\s*(>=|<=|>|<)\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)")
COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Goal:
    """A numeric goal: a metric, a comparison and a target."""

    metric: str
    """The metric's name, lower case."""
    op: str
    """One of >=, >, <=, <."""
    written: str
    """The target exactly as the user (or the planner) wrote it."""

    @property
    def target(self) -> float:
        return float(self.written)

    @property
    def higher_is_better(self) -> bool:
        return self.op in (">=", ">")

    def met_by(self, metrics: dict[str, float]) -> bool:
        """Whether `metrics` report the goal's metric at a value that meets the target."""
        return self.metric in metrics and COMPARE[self.op](metrics[self.metric], self.target)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.written}"


def parse_goal(text: str | None) -> Goal | None:
    """The Goal in a line like 'test_accuracy >= 0.99', else None."""
    match = GOAL.search(text or "")
    return Goal(match.group(1).lower(), match.group(2), match.group(3)) if match else None


GOAL_LINE = re.compile(r"^[ \t]*goal[ \t]*:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def goal_from_idea(idea: str) -> str | None:
    """The canonical 'metric op number' of IDEA.md's `goal:` line, None without one; ValueError when it does not parse."""
    match = GOAL_LINE.search(idea)
    if match is None:
        return None
    goal = parse_goal(match.group(1))
    if goal is None or GOAL.fullmatch(match.group(1).strip()) is None:
        raise ValueError(f"the goal line {match.group(0).strip()!r} must read `goal: <metric> <op> <number>` with op one of >=, >, <=, <")
    return str(goal)


PLAN_GOAL = re.compile(r"^\*\*Goal\*\* \(([^)]*)\): `(.*)`$", re.MULTILINE)


def plan_goal_line(goal: str, source: str) -> str:
    """PLAN.md's goal line, e.g. **Goal** (from IDEA.md): `test_accuracy >= 0.99`."""
    return f"**Goal** ({source}): `{goal}`"


def goal_from_plan(plan: str) -> str:
    """The goal PLAN.md states (see plan_goal_line), or empty."""
    match = PLAN_GOAL.search(plan)
    return match.group(2) if match else ""


def goal_reached(goal: str, metrics: dict[str, float]) -> bool | None:
    """Whether `metrics` meet a numeric goal ('accuracy >= 0.9'); None when the goal is not numeric."""
    parsed = parse_goal(goal)
    return None if parsed is None else parsed.met_by(metrics)


def runs_without_improvement(runs: list[RunRecord], goal: str) -> int:
    """How many of the latest runs did not beat the best goal-metric value before them (0 without a numeric goal)."""
    parsed = parse_goal(goal)
    if parsed is None:
        return 0
    better = COMPARE[">" if parsed.higher_is_better else "<"]
    best, stale = None, 0
    for run in runs:
        if run["status"] == "cancelled":  # stopped in flight: neither better nor worse
            continue
        value = run["metrics"].get(parsed.metric)
        if value is not None and (best is None or better(value, best)):
            best, stale = value, 0
        else:
            stale += 1
    return stale


LOWER_IS_BETTER = re.compile(r"(?:^|[_./-])(?:loss|err|error|mse|rmse|mae|perplexity|ppl|wer|cer|time|seconds|secs|latency)(?:$|[_./-])", re.IGNORECASE)
"""Metric names taken as lower-is-better when no goal says which way is better: whole words (val_loss, time_s), not parts (answer_f1)."""
COUNTERS = {"epoch", "epochs", "step", "steps", "global_step", "iter", "iteration", "batch"}
"""Names that count progress rather than measure it: never ranked by."""


@dataclass(frozen=True)
class Ranking:
    """The metric the runs are ranked by, and which way is better."""

    metric: str
    higher_is_better: bool
    goal: Goal | None
    """The goal when it names this metric, else None."""
    basis: str
    """Where the metric and its direction come from, in words for the report."""


def ranking(runs: list[RunRecord], goal: str) -> Ranking | None:
    """The goal's metric when runs report it; else the first metric reported, its direction guessed from its name (None without any metric)."""
    parsed = parse_goal(goal)
    runs = [run for run in runs if run["status"] != "cancelled"]  # a cancelled run's metrics are from its middle: never ranked
    if parsed and any(parsed.metric in run["metrics"] for run in runs):
        direction = "higher" if parsed.higher_is_better else "lower"
        return Ranking(parsed.metric, parsed.higher_is_better, parsed, f"{parsed.metric}, the goal's metric ({direction} is better)")
    metric = next((name for run in runs for name in run["metrics"] if name.lower() not in COUNTERS), None)
    if metric is None:
        return None
    higher = LOWER_IS_BETTER.search(metric) is None
    why = "the goal names no metric" if parsed is None else f"no run reported the goal's metric {parsed.metric}"
    return Ranking(metric, higher, None, f"{metric}, the first metric reported ({why}), {'higher' if higher else 'lower'} taken as better")


def best_ranked(runs: list[RunRecord], rank: Ranking | None) -> RunRecord | None:
    """The run with the best value of the ranking metric (the earliest on a tie), among the runs that ended well when
    any did: a run that crashed or timed out after printing a metric is best only while none finished, since its
    script cannot be run again to that result, and the search never builds on it."""
    ordered = in_rank_order(runs, rank)
    return next((r for r in ordered if r["status"] == "ok"), ordered[0] if ordered else None)


def in_rank_order(runs: list[RunRecord], rank: Ranking | None) -> list[RunRecord]:
    """The runs that report the ranking metric, best first (the earliest first on a tie); a cancelled run's metric is from its middle: left out."""
    if rank is None:
        return []
    scored = [r for r in runs if rank.metric in r["metrics"] and r["status"] != "cancelled"]
    return sorted(scored, key=lambda r: r["metrics"][rank.metric], reverse=rank.higher_is_better)  # sorted is stable, reversed too


def best_run(runs: list[RunRecord], goal: str) -> RunRecord | None:
    """The run with the best value of the goal's metric, if the goal names one that runs report."""
    rank = ranking(runs, goal)
    return best_ranked(runs, rank) if rank is not None and rank.goal is not None else None
