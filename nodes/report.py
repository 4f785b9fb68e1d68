"""REPORT.md: the LLM's account of the experiment, followed by the mechanical record of every run."""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from adapters.files import ExperimentFiles
from adapters.llm import ask_text
from adapters.logs import clip
from nodes.prompts import REPORT_SYSTEM, REPORT_USER
from nodes.records import experiment_context, resume_command, run_line, runs_table
from nodes.stop_rules import spend
from settings import Settings
from state import ExperimentState, Halt, Usage

RUNS_BUDGET = 8_000


def usage_table(usage: list[Usage]) -> str:
    """Tokens (and cost where reported) per stage."""
    totals: dict[str, list[float]] = {}
    for u in usage:
        row = totals.setdefault(u["stage"], [0, 0, 0.0, 0])
        row[0] += u["input_tokens"]
        row[1] += u["output_tokens"]
        row[2] += u["cost_usd"] or 0.0
        row[3] += u["cost_usd"] is not None
    lines = ["| Stage | Input tokens | Output tokens | Cost (USD, provider-reported) |", "|---|---|---|---|"]
    for stage, (inp, out, cost, costed) in totals.items():
        lines.append(f"| {stage} | {inp:.0f} | {out:.0f} | {f'{cost:.4f}' if costed else 'not reported'} |")
    return "\n".join(lines)


def report(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Write REPORT.md: the LLM's narrative and the record; only the record when the experiment was cut short."""
    settings = runtime.context
    runs = state.get("runs", [])
    reason = state.get("stop_reason") or "max_runs"
    files = ExperimentFiles(state["experiment_dir"])
    if halted := state.get("halted"):
        runtime.stream_writer({"event": "stage", "stage": "report", "model": None, "stop_reason": reason})
        files.write_report(halt_notice(state, halted) + "\n\n" + record(state, settings, []))
        return {"report_path": str(files.report)}
    runtime.stream_writer({"event": "stage", "stage": "report", "model": settings.report_model, "stop_reason": reason})

    prompt = REPORT_USER.format(
        **experiment_context(state),
        runs=clip("\n".join(run_line(r) for r in runs), RUNS_BUDGET),
        stop_reason=reason,
    )
    narrative, usage = ask_text(settings, settings.report_model, [SystemMessage(REPORT_SYSTEM), HumanMessage(prompt)], "report")
    files.write_report(narrative.strip() + "\n\n" + record(state, settings, [usage]))
    return {"report_path": str(files.report), "stop_reason": reason, "usage": [usage]}


def halt_notice(state: ExperimentState, halted: Halt) -> str:
    """The head of REPORT.md for an experiment cut short: what stopped it, where, and how to go on."""
    reason, stage = state.get("stop_reason"), halted["stage"]
    lines = [
        "# Report (unfinished)",
        "",
        f"The runner stopped early: **{reason}** during {stage}: {state.get('stop_detail', '')}",
    ]
    if halted["stop_reason"]:
        lines.append(f"The experiment itself had ended before that: {halted['stop_reason']} ({halted['stop_detail']}).")
    fix = "" if reason == "interrupted" else "after fixing the cause, "
    lines += [
        "",
        f"Every finished step is saved: {fix}resume with `{resume_command(state['experiment_dir'])}`; it goes on with {stage}.",
        "This page is then rewritten with the full report.",
    ]
    return "\n".join(lines)


def record(state: ExperimentState, settings: Settings, usage: list[Usage]) -> str:
    """The mechanical part of REPORT.md: why it stopped, what it cost, every run and the tokens per stage."""
    runs = state.get("runs", [])
    reason = state.get("stop_reason") or "max_runs"
    cost, cost_source = spend([*state.get("usage", []), *usage], settings.model_prices)
    if halted := state.get("halted"):
        detail = f" during {halted['stage']} (see above)"
    else:
        detail = f" ({state['stop_detail']})" if state.get("stop_detail") else ""
    return "\n\n".join(
        [
            "## Record",
            f"Stopped because: **{reason}**{detail} after {len(runs)} of {state.get('max_runs', len(runs))} runs. Goal: {state.get('goal', '(none)')}",
            f"LLM cost: {'unknown' if cost is None else f'${cost:.4f}'} ({cost_source}).",
            runs_table(runs, state.get("goal", "")),
            usage_table([*state.get("usage", []), *usage]),
        ]
    )
