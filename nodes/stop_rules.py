"""When the loop ends: the goal checked against metrics, the run limit, plateau, budgets and repeated failures (search.stuck)."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.logs import missing_package_hint
from goal import goal_reached, runs_without_improvement
from search import Policy, stuck
from settings import Settings
from state import ExperimentState, Halt, RunRecord, Usage, spend


@dataclass(frozen=True)
class Stop:
    """A reason to end the loop, and the words that explain it."""

    reason: str
    """goal_met, max_runs, plateau, budget or stuck."""
    detail: str


def budget_stop(runs: list[RunRecord], usage: list[Usage], settings: Settings, in_flight: int = 0) -> Stop | None:
    """Stop when one more run like the average so far would pass a budget.

    Tokens and cost so far were spent on every run given out, those in flight too (their code is written), so their
    average is over all of them: one more run adds that much. Hours count finished runs only, so each run in flight
    will add an average run's hours besides the new one.
    """
    given = max(len(runs) + in_flight, 1)
    another = "another run" if not in_flight else f"another run beside the {in_flight} in flight"
    tokens = sum(u["input_tokens"] + u["output_tokens"] for u in usage)
    if settings.max_tokens and tokens + tokens / given > settings.max_tokens:
        return Stop("budget", f"{tokens} tokens spent; {another} would pass MAX_TOKENS={settings.max_tokens}")
    cost, source = spend(usage, settings.model_prices)
    if settings.max_cost_usd and cost is not None and cost + cost / given > settings.max_cost_usd:
        return Stop("budget", f"${cost:.4f} spent ({source}); {another} would pass MAX_COST_USD={settings.max_cost_usd:g}")
    hours = sum(r["duration_s"] for r in runs) / 3600
    if settings.max_hours and hours + (1 + in_flight) * hours / max(len(runs), 1) > settings.max_hours:
        return Stop("budget", f"{hours:.2f} h of runs; {another} would pass MAX_HOURS={settings.max_hours:g}")
    return None


def decide_stop(
    runs: list[RunRecord],
    usage: list[Usage],
    goal: str,
    analyst_says_met: bool,
    max_runs: int,
    settings: Settings,
    latest: RunRecord | None = None,
    in_flight: int = 0,
) -> Stop | None:
    """Why the loop should end after the `latest` run (default: the last), or None to go on. The first rule that holds wins.

    The goal, stuck and plateau end it at once (the runs in flight are then cancelled); the run limit and budgets
    only once no run is in flight: they start no new run, and those in flight finish.
    """
    latest = latest or runs[-1]
    reached = goal_reached(goal, latest["metrics"]) if latest["status"] != "cancelled" else False  # a cancelled run's metrics are from its middle
    if reached or (reached is None and analyst_says_met):
        judged = "metrics" if reached else "the analyst's judgement (the goal names no metric)"
        return Stop("goal_met", f"run {latest['number']} met the goal {goal!r} by {judged}")
    if why := stuck(runs, Policy.of(settings)):  # within one failed line, the search abandons the line instead
        detail = f"{why}: {latest['error'] or latest['status']}"
        if hint := missing_package_hint(latest["error"], settings.python):
            detail += f"; {hint}"
        return Stop("stuck", detail)
    if not in_flight and len(runs) >= max_runs:
        return run_limit(max_runs)
    if settings.patience and runs_without_improvement(runs, goal) >= settings.patience:
        return Stop("plateau", f"{settings.patience} runs in a row without improving on the best value of the goal metric (PATIENCE={settings.patience})")
    return budget_stop(runs, usage, settings) if not in_flight else None


def run_limit(max_runs: int) -> Stop:
    return Stop("max_runs", f"all {max_runs} runs done, the limit set by -r/MAX_RUNS")


def before_run(runs: list[RunRecord], in_flight: int, usage: list[Usage], max_runs: int, settings: Settings) -> Stop | None:
    """Why no new run may start now (the run limit counting the runs in flight, or a budget), or None.

    Checked before every run as well as after: a resume with other limits, or into a step before
    execute, must not start a run those limits forbid.
    """
    if len(runs) + in_flight >= max_runs:
        return run_limit(max_runs)
    return budget_stop(runs, usage, settings, in_flight) if runs else None


def halt(state: ExperimentState, stage: str, reason: str, message: str, usage: list | None = None) -> dict:
    """Cut the experiment short: the update recording why and where a resume re-enters (`stage`), and what the failed step
    spent; the edges then lead to report."""
    halted = Halt(stage=stage, stop_reason=state.get("stop_reason"), stop_detail=state.get("stop_detail", ""))
    return {"stop_reason": reason, "stop_detail": message, "halted": halted, "usage": usage or []}
