"""REPORT.md: goal and outcome, the best run and its lineage, the LLM's findings, every run, the doubts about their
numbers, plots (the search tree among them), tokens and cost, how to reproduce the best run.

Every table, number and plot is made here from the runs' records (run_N/result.json, read once per report), which
hold what metrics.json and the logs say, and in a graded experiment what grade.py made of it beside that;
REPORT_MODEL writes only the narrative between them. An experiment cut short gets the same record without asking the LLM.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from adapters.audit import AuditLog
from adapters.files import ExperimentFiles
from adapters.grader import GRADER
from adapters.llm import ask_text
from adapters.logs import clip, one_line
from adapters.plots import plot_curves, plot_metric_per_run, plot_tree, read_curves
from goal import Ranking, best_ranked, goal_reached, ranking
from nodes.execute import stop_runs
from nodes.prompts import REPORT_SYSTEM, REPORT_USER
from nodes.records import changes_by_run, exact_number, experiment_context, metrics_text, runs_table
from search import lineage_text, origin
from settings import Settings
from state import ExperimentState, Halt, RunRecord, Usage, spend

RUNS_BUDGET = 8_000
"""Characters of the runs' lines in the report prompt."""
PLOTS_DIR = "report"
"""The plots' folder in the experiment folder; REPORT.md links them by this relative path."""
GOAL_PLOT = "goal_metric.png"
CURVES_PLOT = "best_run_curves.png"
TREE_PLOT = "tree.png"


def report(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Write REPORT.md: the record with the LLM's narrative in it; only the record when the experiment was cut short."""
    settings = runtime.context
    reason = state.get("stop_reason") or "max_runs"
    files = ExperimentFiles(state["experiment_dir"])
    stopped = stop_runs(state, settings, runtime.stream_writer)  # the runs still in flight: cancelled, or (cut short) kept to start again
    state = {**state, **stopped}
    runs = files.runs_of(state)
    if halted := state.get("halted"):
        runtime.stream_writer({"event": "stage", "stage": "report", "model": None, "stop_reason": reason})
        files.write_report(report_text(state, settings, runs, [], head=halt_notice(state, halted, settings)))
        return {**stopped, "report_path": str(files.report)}
    runtime.stream_writer({"event": "stage", "stage": "report", "model": settings.report_model, "stop_reason": reason})

    # 1. The narrative: findings and what to try next, from the experiment as it stands and the runs' exact lines.
    goal, changes = state.get("goal", ""), changes_by_run(files.read_findings())
    best = best_ranked(runs, ranking(runs, goal))
    prompt = REPORT_USER.format(
        **experiment_context(state),
        runs=clip("\n".join(report_line(run, changes) for run in runs) or "(no run finished)", RUNS_BUDGET),
        best=report_line(best, changes) if best else "(none: no run reported a metric)",
        stop_reason=reason,
    )
    messages = [SystemMessage(REPORT_SYSTEM), HumanMessage(prompt)]
    narrative, usage = ask_text(settings, settings.report_model, messages, "report", AuditLog(files.llm_calls, settings.audit_content))

    # 2. The record around it, computed from the runs.
    if narrative := narrative_body(narrative):
        narrative = f"_The account below is written by {settings.report_model}; the tables and plots are computed from the run files._\n\n{narrative}"
    files.write_report(report_text(state, settings, runs, [usage], head="# Report", narrative=narrative))
    return {**stopped, "report_path": str(files.report), "stop_reason": reason, "usage": [usage]}


def halt_notice(state: ExperimentState, halted: Halt, settings: Settings) -> str:
    """The head of REPORT.md for an experiment cut short: what stopped it, where, and how to go on."""
    reason, stage = state.get("stop_reason"), halted["stage"]
    lines = [
        "# Report (unfinished)",
        "",
        f"The runner stopped early: **{reason}** during {stage}: {state.get('stop_detail', '')}",
    ]
    if halted["stop_reason"]:
        lines.append(f"The experiment itself had ended before that: {halted['stop_reason']} ({halted['stop_detail']}).")
    if in_flight := state.get("in_flight"):
        numbers = ", ".join(str(flight["number"]) for flight in in_flight)
        lines.append(f"Runs {numbers} were in flight and were cancelled; their partial logs are kept, and a resume starts them again.")
    fix = "" if reason == "interrupted" else "after fixing the cause, "
    lines += [
        "",
        f"Every finished step is saved: {fix}resume with `{settings.resume_command(state['experiment_dir'])}`; it goes on with {stage}.",
        "This page is then rewritten with the full report.",
    ]
    return "\n".join(lines)


def report_text(state: ExperimentState, settings: Settings, runs: list[RunRecord], usage: list[Usage], head: str, narrative: str = "") -> str:
    """The whole of REPORT.md about `runs` (every finished run): `head`, then the record with `narrative` after the best run;
    draws the plots it links."""
    files = ExperimentFiles(state["experiment_dir"])
    goal = state.get("goal", "")
    rank = ranking(runs, goal)
    best = best_ranked(runs, rank)
    all_usage = [*state.get("usage", []), *usage]
    parts = [
        head,
        outcome_section(state, len(runs)),
        best_section(best, rank, goal, runs),
        narrative,
        "## Runs\n\n" + (runs_table(runs, goal, changes_by_run(files.read_findings())) if runs else "No run finished."),
        doubts_section(runs),
        plots_section(files, runs, rank, best),
        usage_section(all_usage, settings.model_prices, structured_output_text(settings.structured_output, state.get("structured_output") or {})),
        reproduce_section(files, best or last_ended(runs), is_best=best is not None, python=settings.python, machine=state.get("machine", "")),
    ]
    return "\n\n".join(part.strip() for part in parts if part.strip())


def last_ended(runs: list[RunRecord]) -> RunRecord | None:
    """The run to reproduce when none is best: the last one that ran to its end (a cancelled run never did)."""
    return next((run for run in reversed(runs) if run["status"] != "cancelled"), runs[-1] if runs else None)


def report_line(run: RunRecord, changes: dict[int, str]) -> str:
    """One run for the report prompt, every number exactly as the record holds it: in a graded experiment its grade and
    its self-report, each named; the doubts about its numbers."""
    parts = [f"run {run['number']} ({origin(run)}): {run['status']}", f"{exact_number(run['duration_s'])} s"]
    if "reported" in run:
        parts += [f"graded: {metrics_text(run['metrics'])}", f"self-reported: {metrics_text(run['reported'])}"]
    else:
        parts.append(metrics_text(run["metrics"]))
    if changes.get(run["number"]):
        parts.append(f"changed: {changes[run['number']]}")
    if run["error"]:
        parts.append(run["error"] if run["status"] == "cancelled" else f"error: {run['error']}")
    if run.get("flags"):
        parts.append(f"flagged: {'; '.join(run['flags'])}")
    return ", ".join(parts)


def narrative_body(text: str) -> str:
    """The model's narrative without a title of its own: the report has one."""
    lines = text.strip().splitlines()
    while lines and (lines[0].startswith("# ") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines).strip()


def outcome_section(state: ExperimentState, runs: int) -> str:
    """Why the experiment stopped, after how many (`runs`) finished, against which goal."""
    reason = state.get("stop_reason") or "max_runs"
    if halted := state.get("halted"):
        detail = f" during {halted['stage']} (see above)"
    else:
        detail = f" ({state['stop_detail']})" if state.get("stop_detail") else ""
    return "\n\n".join(
        [
            "## Goal and outcome",
            f"Stopped because: **{reason}**{detail} after {runs} of {state.get('max_runs', runs)} runs. Goal: {state.get('goal') or '(none)'}",
        ]
    )


def best_section(best: RunRecord | None, rank: Ranking | None, goal: str, runs: list[RunRecord]) -> str:
    """The best run with every metric it has, exactly (graded, and self-reported beside, in a graded experiment), whether
    it meets the goal, any doubt about its numbers, and the line of runs it grew from."""
    if best is None or rank is None:
        which = "was graded with" if any("reported" in run for run in runs) else "reported"
        return f"## Best run\n\nNo run {which} a metric, so none can be called best."
    lines = [
        "## Best run",
        "",
        f"**Run {best['number']}** ({best['status']}, {exact_number(best['duration_s'])} s), best by {rank.basis}.",
        "",
    ]
    if "reported" in best:
        lines += [f"Metrics, as {GRADER} graded them: {metrics_text(best['metrics'])}", "", f"Self-reported by its train.py: {metrics_text(best['reported'])}"]
    else:
        lines.append(f"Metrics: {metrics_text(best['metrics'])}")
    if rank.goal is not None:
        met = goal_reached(goal, best["metrics"])
        value = f"{rank.metric}={exact_number(best['metrics'][rank.metric])}"
        lines += ["", f"Goal `{goal}`: {'met' if met else 'not met'} ({value})."]
    if best.get("flags"):
        lines += ["", f"⚑ Its numbers are in doubt: see {DOUBTS} below."]
    lines += ["", f"Lineage: {lineage_text(runs, best['number'])}."]
    return "\n".join(lines)


DOUBTS = "Doubts about the numbers"
"""The heading of the section that lists the runs' flags."""


def doubts_section(runs: list[RunRecord]) -> str:
    """Each flag of each run (trust.py: a self-report its grade contradicts, a score too good to be true), a line each; empty without any."""
    lines = [f"- Run {run['number']}: {one_line(flag)}" for run in runs for flag in run.get("flags", [])]
    if not lines:
        return ""
    intro = "Why the numbers of the runs marked ⚑ deserve a second look (a reason to check, not a verdict):"
    return "\n".join([f"## {DOUBTS}", "", intro, "", *lines])


def plots_section(files: ExperimentFiles, runs: list[RunRecord], rank: Ranking | None, best: RunRecord | None) -> str:
    """Draw the plots into report/ and link them; a plot that cannot be drawn is said so, never fatal to the report."""
    folder = files.root / PLOTS_DIR
    lines, drawn = ["## Plots"], set[str]()
    best_number = best["number"] if best else None

    def draw(name: str, plot: Callable[..., None], *args: Any, alt: str, **kwargs: Any) -> None:
        """Draw report/`name` with `plot` (its path the last positional argument) and link it, or say why it could not be drawn."""
        failure = try_plot(plot, *args, folder / name, **kwargs)
        if not failure:
            drawn.add(name)
        lines.append(failure or f"![{alt}]({PLOTS_DIR}/{name})")

    if rank is None:
        lines.append("No run reported a metric: no metric to plot.")
    else:
        values = {run["number"]: run["metrics"].get(rank.metric) for run in runs}
        target = rank.goal.written if rank.goal else None  # the number as written, on the plot too
        alt = f"{rank.metric} per run, with the best so far"
        cancelled = {run["number"] for run in runs if run["status"] == "cancelled"}
        draw(GOAL_PLOT, plot_metric_per_run, values, rank.metric, rank.higher_is_better, alt=alt, target=target, best=best_number, cancelled=cancelled)
    if runs:
        metric, higher = (rank.metric, rank.higher_is_better) if rank else (None, True)
        alt = "The search tree: each run under the run it builds on, by status, the best run's line marked"
        draw(TREE_PLOT, plot_tree, runs, metric, higher, alt=alt, best=best_number)
    if best is not None:
        curves = read_curves(files.run_dir(best["number"]) / "output.log").plottable(first=rank.metric if rank else None)
        if not curves:
            lines.append(f"Run {best['number']}'s output.log prints no metric twice or more: no training curves to draw.")
        else:
            draw(CURVES_PLOT, plot_curves, curves, f"Run {best['number']}: metrics in its output.log", alt=f"Training curves of run {best['number']}")
    for name in {GOAL_PLOT, TREE_PLOT, CURVES_PLOT} - drawn:  # a plot of an earlier report that no longer applies
        with contextlib.suppress(OSError):
            (folder / name).unlink(missing_ok=True)
    return "\n\n".join(lines)


def try_plot(plot: Callable[..., None], *args: Any, **kwargs: Any) -> str | None:
    """Draw one plot; None when it worked, else the sentence the report says instead."""
    try:
        plot(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 — matplotlib missing or failing must not cost the report
        return f"This plot could not be drawn ({one_line(f'{type(exc).__name__}: {exc}', 300)})."
    return None


def usd(cost: float) -> str:
    return f"{cost:.4f}" if cost == 0 or cost >= 0.0001 else "<0.0001"


def cost_text(calls: list[Usage], prices: dict[str, list[float]]) -> str:
    """The USD the calls cost, as the provider reported it or MODEL_PRICES gives it; a lower bound when some have no price."""
    cost, _ = spend(calls, prices)
    if cost is None:
        return "unknown"
    unpriced = sum(1 for call in calls if call["cost_usd"] is None and call["model"] not in prices)
    return f"at least {usd(cost)} ({unpriced} calls without a price)" if unpriced else usd(cost)


def usage_table(usage: list[Usage], prices: dict[str, list[float]] | None = None) -> str:
    """Calls, tokens and cost per stage and model, and their total."""
    groups: dict[tuple[str, str], list[Usage]] = {}
    for call in usage:
        groups.setdefault((call["stage"], call["model"]), []).append(call)
    lines = ["| Stage | Model | Calls | Input tokens | Cached input tokens | Output tokens | Cost (USD) |", "|---|---|---|---|---|---|---|"]
    for (stage, model), calls in [*groups.items(), (("**total**", ""), usage)]:
        inp, out = sum(c["input_tokens"] for c in calls), sum(c["output_tokens"] for c in calls)
        cached = sum(c.get("cached_tokens", 0) for c in calls)
        count = sum(c.get("calls", 1) for c in calls)
        lines.append(f"| {stage} | {model} | {count} | {inp} | {cached} | {out} | {cost_text(calls, prices or {})} |")
    return "\n".join(lines)


def usage_section(usage: list[Usage], prices: dict[str, list[float]], structured: str = "") -> str:
    """Tokens and cost: the total and where it comes from, how structured replies were asked for, the table by stage and model."""
    _, source = spend(usage, prices)
    lines = [f"LLM cost (USD): {cost_text(usage, prices)}; source: {source}.", structured]
    return "\n\n".join(["## Tokens and cost", " ".join(line for line in lines if line), usage_table(usage, prices)])


def structured_output_text(setting: str, learned: dict[str, str]) -> str:
    """How the structured replies were asked for: the method STRUCTURED_OUTPUT forces, or the one auto found for each model."""
    if setting != "auto":
        return f"Structured replies: {setting} (STRUCTURED_OUTPUT)."
    if not learned:
        return ""
    return f"Structured replies (STRUCTURED_OUTPUT=auto), by model: {', '.join(f'{model}: {method}' for model, method in learned.items())}."


def graded_text(run: RunRecord) -> str:
    """What grade.py made of a run of a graded experiment: its grade, how it failed, or why it was not graded."""
    if run["status"] == "ok":
        return f"It graded run {run['number']}: {metrics_text(run['metrics'])}."
    if run["status"] == "grade_failed":
        return f"It failed on run {run['number']}: {run['error']}"
    return f"Run {run['number']} was not graded: it ended {run['status']}."


def reproduce_section(files: ExperimentFiles, run: RunRecord | None, is_best: bool, python: str, machine: str = "") -> str:
    """Where the run's train.py lies, the command that runs it again from the experiment folder, and what the runs ran on."""
    if run is None:
        return ""
    folder = f"run_{run['number']}"
    which = "the best run" if is_best else "the latest run"
    lines = [f"## Reproduce {which}", ""]
    if not (files.run_dir(run["number"]) / "train.py").is_file():
        return "\n".join([*lines, f"Run {run['number']}'s train.py is no longer in {folder}/."])
    lines += [
        f"Run {run['number']}'s script is [{folder}/train.py]({folder}/train.py). From the experiment folder:",
        "",
        "```bash",
        f"cd {folder} && DATA_DIR=../data {shlex.quote(python)} train.py",
        "```",
        "",
        f"It writes `metrics.json` beside it (run {run['number']} {'reported' if 'reported' in run else 'measured'}: "
        f"{metrics_text(run.get('reported', run['metrics']))}). "
        "`DATA_DIR` is the dataset cache the runs share (`data/` in the experiment folder); the interpreter is the one "
        "the runs used (TRAIN_PYTHON), where their libraries are installed.",
    ]
    if "reported" in run:
        lines += ["", f"The runner grades it from the experiment folder with `{shlex.quote(python)} {GRADER} {folder}`. {graded_text(run)}"]
    if machine:
        lines += ["", "The runs ran on (as the code model was told):", "", "```", machine, "```"]
    return "\n".join(lines)
