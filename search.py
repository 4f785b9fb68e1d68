"""The search: which run comes next (draft, improve or debug, and on which parent), a pure function of the runs so far.

The runs form a tree. A draft is a fresh solution; an improve makes one change to a good run; a debug fixes a
failed one. The policy, after AIDE's journal and greedy selection:

1. the first DRAFTS runs are drafts;
2. a failed run with no child yet is debugged, the newest first, until DEBUG_DEPTH fixes in a row have failed, or
   MAX_CONSECUTIVE_FAILURES runs of its line failed the same way: that line is then abandoned;
3. otherwise the best good run is improved (ranked by the goal's metric, see goal.ranking); while no run has
   worked, draft again.

`linear` is the loop before the tree: every run builds on the one before it. No choice is random, so a
resume makes the same choice an uninterrupted runner would have made, and a test can state it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from goal import best_ranked, in_rank_order, ranking
from state import RunRecord

OPERATORS = ("draft", "improve", "debug")
SEARCHES = ("tree", "linear")


@dataclass(frozen=True)
class Policy:
    """The search's settings (SEARCH, DRAFTS, DEBUG_DEPTH, MAX_CONSECUTIVE_FAILURES)."""

    search: str = "tree"
    """tree, or linear: each run builds on the one before it."""
    drafts: int = 1
    """How many of the first runs are drafts."""
    debug_depth: int = 3
    """Fixes in a row that may fail before a failed line is abandoned."""
    same_failures: int = 3
    """Runs failing the same way in a row that make a line, or the experiment, stuck."""

    @classmethod
    def of(cls, settings) -> Policy:
        """The policy a Settings object sets."""
        return cls(settings.search, settings.draft_count, settings.debug_depth, settings.max_consecutive_failures)


@dataclass(frozen=True)
class Choice:
    """What the coming run does."""

    operator: str
    """draft, improve or debug."""
    parent: int | None
    """The run it builds on; None for a draft."""
    reason: str
    """Why, in words."""


def failed(run: RunRecord) -> bool:
    """A run that did not end well: a non-zero exit, or the time limit. A cancelled run did not fail: it was stopped."""
    return run["status"] not in ("ok", "cancelled")


def failure_signature(run: RunRecord) -> str | None:
    """The run's failure with numbers, paths and quoted values blurred, so reruns of one bug compare equal."""
    if not failed(run):
        return None
    text = run["error"] or f"{run['status']} with exit code {run['exit_code']}"
    text = re.sub(r"(['\"]).*?\1", "'…'", text)
    text = re.sub(r"(/[\w.-]+)+", "/…", text)
    return re.sub(r"\d+(\.\d+)?", "N", text).strip()


def line_of(run: RunRecord, by_number: dict[int, RunRecord]) -> list[RunRecord]:
    """The failed line that ends in `run`: it and the failed runs it set out to fix, newest first (just `run` unless it is a debug)."""
    line = [run]
    while line[-1]["operator"] == "debug" and (parent := by_number.get(line[-1]["parent"] or 0)) is not None and failed(parent):
        line.append(parent)
    return line


def abandoned(line: list[RunRecord], policy: Policy) -> str | None:
    """Why a failed line is given up (DEBUG_DEPTH fixes failed, or the same failure over and over), else None."""
    fixes = len(line) - 1
    if fixes >= policy.debug_depth:
        return f"{fixes} fixes in a row failed (DEBUG_DEPTH={policy.debug_depth})"
    same = {failure_signature(run) for run in line[: policy.same_failures]}
    if len(line) >= policy.same_failures and len(same) == 1:
        return f"it failed the same way {policy.same_failures} times in a row (MAX_CONSECUTIVE_FAILURES={policy.same_failures})"
    return None


def best_good_run(runs: list[RunRecord], goal: str) -> RunRecord | None:
    """The good run to improve: the best by the goal's metric (goal.ranking), else the latest good one when none reports a metric."""
    good = [run for run in runs if run["status"] == "ok"]
    return best_ranked(good, ranking(good, goal)) or (good[-1] if good else None)


def after(run: RunRecord | None) -> tuple[str, int | None]:
    """The operator and parent of the run after `run` in the linear loop: improve it, or debug it when it failed; a draft first."""
    if run is None:
        return "draft", None
    return ("debug" if failed(run) else "improve"), run["number"]


def next_choice(runs: list[RunRecord], goal: str, policy: Policy, in_flight: Sequence[Mapping] = ()) -> Choice:
    """The coming run's operator and parent, given every finished run (in the order they started) and the runs in flight.

    A run in flight counts as its parent's child and, if a draft, as a draft. Among good runs to improve, one on a
    draft's branch where nothing runs now comes first, then one nothing in flight improves, then the best: two runs
    in flight apply the same operator to the same parent only when nothing else can be chosen.
    """
    if not runs and not in_flight:
        return Choice("draft", None, "the first run")
    if policy.search == "linear":
        last = runs[-1]
        return Choice(*after(last), f"the run before it (SEARCH=linear); run {last['number']} {last['status']}")
    drafts = sum(run["operator"] == "draft" for run in [*runs, *in_flight])
    if drafts < policy.drafts:
        return Choice("draft", None, f"draft {drafts + 1} of {policy.drafts} (DRAFTS)")
    by_number = {run["number"]: run for run in runs}
    parents = {run["parent"] for run in [*runs, *in_flight]}
    for run in reversed(runs):
        if failed(run) and run["number"] not in parents:
            line = line_of(run, by_number)
            if abandoned(line, policy) is None:
                return Choice("debug", run["number"], f"run {run['number']} {run['status']}: fix {len(line)} of at most {policy.debug_depth}")
    best = best_good_run(runs, goal)
    if best is None:
        return Choice("draft", None, "no run has worked yet" + (f" ({len(in_flight)} in flight)" if in_flight else ""))
    if not in_flight:
        return Choice("improve", best["number"], f"run {best['number']} is the best so far")
    return spread(runs, goal, best, in_flight, by_number)


def spread(runs: list[RunRecord], goal: str, best: RunRecord, in_flight: Sequence[Mapping], by_number: dict[int, RunRecord]) -> Choice:
    """The good run to improve while others are in flight: the best on a branch nothing runs on, else the best nothing improves now, else the best."""
    improving = {flight["parent"] for flight in in_flight if flight["operator"] == "improve"}
    busy_roots = {root_of(flight, by_number) for flight in in_flight if flight["parent"] is not None} | {
        ("run", flight["number"]) for flight in in_flight if flight["parent"] is None
    }
    good = [run for run in runs if run["status"] == "ok"]
    ranked = in_rank_order(good, ranking(good, goal))
    ranked += [run for run in reversed(good) if run not in ranked]  # no metric: the latest first
    for run in ranked:
        if root_of(run, by_number) not in busy_roots and run["number"] not in improving:
            return Choice("improve", run["number"], f"run {run['number']} is the best on a branch with no run in flight")
    for run in ranked:
        if run["number"] not in improving:
            return Choice("improve", run["number"], f"run {run['number']} is the best that no run in flight improves")
    return Choice("improve", best["number"], f"run {best['number']} is the best so far (every good run is being improved)")


def root_of(run: Mapping, by_number: dict[int, RunRecord]) -> tuple[str, int]:
    """The draft a run (or run in flight) grew from, as a key: its branch of the tree."""
    number, parent, seen = run["number"], run["parent"], set()
    while parent is not None and parent in by_number and parent not in seen:
        seen.add(parent)
        number, parent = parent, by_number[parent]["parent"]
    return ("run", number if parent is None else parent)


def stuck(runs: list[RunRecord], policy: Policy) -> str | None:
    """Why the experiment is stuck (its latest runs all failed the same way, across lines), else None.

    The same failure over and over within one failed line only abandons that line (next_choice moves on); the
    experiment stops when runs of other lines fail that way too. Linear search has one line: it stops at once.
    """
    runs = [run for run in runs if run["status"] != "cancelled"]
    latest = runs[-policy.same_failures :]
    signatures = {failure_signature(run) for run in latest}
    if len(latest) < policy.same_failures or None in signatures or len(signatures) != 1:
        return None
    if policy.search == "tree" and policy.same_failures > 1:  # with 1, every failure is a line of its own: stop at once
        by_number = {run["number"]: run for run in runs}
        if all(run in line_of(runs[-1], by_number) for run in latest):
            return None
    return f"the last {len(latest)} runs failed the same way (MAX_CONSECUTIVE_FAILURES={policy.same_failures})"


def lineage(runs: list[RunRecord], number: int) -> list[RunRecord]:
    """Run `number` and its ancestors up to the draft it grew from, newest first."""
    by_number = {run["number"]: run for run in runs}
    chain: list[RunRecord] = []
    run = by_number.get(number)
    while run is not None and run not in chain:
        chain.append(run)
        run = by_number.get(run["parent"]) if run["parent"] is not None else None
    return chain


def lineage_text(runs: list[RunRecord], number: int) -> str:
    """The lineage in words: `run 9 ← 6 ← 2, draft`."""
    chain = lineage(runs, number)
    if not chain:
        return f"run {number}"
    return f"run {' ← '.join(str(run['number']) for run in chain)}, {chain[-1]['operator']}"


def origin(run: RunRecord) -> str:
    """How a run came about, in a few words: `draft`, `improve ← 3`, `debug ← 4`."""
    return run["operator"] if run["parent"] is None else f"{run['operator']} ← {run['parent']}"


def origin_words(run: RunRecord) -> str:
    """How a run came about, in words: `draft`, `improve of run 3`, `debug of run 4`."""
    return run["operator"] if run["parent"] is None else f"{run['operator']} of run {run['parent']}"
