"""Prompt size: every LLM request's characters and tokens, from the audit log, against the budgets nodes/prompts.py configures.

A request's size is the characters of its messages' text, its content blocks joined (the tool schema of a structured call is not counted);
tokens are estimated as characters / 4, and the fake server's prompt_tokens (a whitespace word count) are
kept beside them in results.json. A stage's budget is the sum of its parts' budgets plus its fixed text
(system prompt and template), as the prompt builders clip them.
"""

from __future__ import annotations

import re
from pathlib import Path

from fake_llm import message_text
from figures import Figure, at_most, growth_ratio

from adapters.audit import read_audit
from adapters.files import ExperimentFiles
from adapters.logs import SUMMARY_CHARS
from nodes import prompts
from nodes.prompts import BUDGET
from nodes.report import RUNS_BUDGET

CHARS_PER_TOKEN = 4
GROWTH_BOUND = 1.1
"""The last run's codegen request may be at most this many times run 10's."""
GOAL_ALLOWANCE = 200
"""Characters allowed for the goal line, which no budget clips (it is one line: 'accuracy >= 0.99')."""
ORIGIN_ALLOWANCE = 400
"""Characters allowed for the analyze request's origin line (operator, parent, and the change named in advance, cut to 300)."""
BEST_LINE_ALLOWANCE = 1_000
"""Characters allowed for the report prompt's best-run line, which no budget clips."""


def stage_budgets(run: int = 100) -> dict[str, int]:
    """Characters each stage's request may have: its parts' budgets plus the fixed text of its system prompt and template."""
    context = BUDGET["idea"] + BUDGET["plan"] + BUDGET["tasks"] + BUDGET["findings"]
    empty_context = dict.fromkeys(("idea", "plan", "tasks", "findings"), "")
    feedback_wrapper = len("\n<feedback>\n\n</feedback>\n")
    return {
        "initialize": len(prompts.PLAN_SYSTEM) + len(prompts.PLAN_USER.format(idea="")) + BUDGET["idea"],
        "codegen": len(prompts.CODEGEN_SYSTEM)
        + len(
            prompts.CODEGEN_USER.format(
                **empty_context,
                machine="",
                grading=prompts.GRADING.format(metrics=""),
                parent_code=prompts.PARENT_CODE.format(parent=run, code=""),
                previous_run="",
                feedback="",
                instruction=max((text.format(run=run, parent=run, differ=prompts.DRAFTS_DIFFER) for text in prompts.CODEGEN_INSTRUCTION.values()), key=len),
            )
        )
        + feedback_wrapper
        + sum(BUDGET.values()),
        "analyze": len(prompts.ANALYZE_SYSTEM)
        + len(prompts.ANALYZE_USER.format(idea="", plan="", goal="", origin="", tasks="", code="", run=""))
        + BUDGET["idea"]
        + BUDGET["plan"]
        + GOAL_ALLOWANCE
        + ORIGIN_ALLOWANCE
        + BUDGET["tasks"]
        + BUDGET["previous_code"]
        + SUMMARY_CHARS,
        "report": len(prompts.REPORT_SYSTEM)
        + len(prompts.REPORT_USER.format(**empty_context, runs="", best="", stop_reason="llm_unavailable"))
        + context
        + RUNS_BUDGET
        + BEST_LINE_ALLOWANCE,
    }


CODEGEN_PARTS = re.compile(r"<(idea|plan|tasks|key_findings|parent_code|runs|feedback)(?: run=\"\d+\")?>\n(.*?)\n</\1>", re.DOTALL)


def requests(experiment: Path) -> list[dict]:
    """Every request in the experiment's audit log: stage, run (codegen and analyze), characters, estimated tokens, the server's
    count; a codegen request also the characters of each tagged part (idea, plan, tasks, key_findings, parent_code, runs, ...)."""
    found = []
    for line in read_audit(ExperimentFiles(experiment).llm_calls):
        messages = line.get("messages") or []
        chars = sum(len(message_text(m)) for m in messages)
        request = {
            "stage": line["stage"],
            "run": run_of(line["stage"], messages),
            "chars": chars,
            "tokens": round(chars / CHARS_PER_TOKEN),
            "server_prompt_tokens": line.get("input_tokens"),
            "ok": line.get("ok"),
        }
        if line["stage"] == "codegen" and messages:
            request["parts"] = {name: len(text) for name, text in CODEGEN_PARTS.findall(message_text(messages[-1]))}
        found.append(request)
    return found


def run_of(stage: str, messages: list[dict]) -> int | None:
    """The run a codegen request writes for ("train.py for run N") or an analyze request reads ("Run N: ok")."""
    text = message_text(messages[1]) if stage == "codegen" and len(messages) > 1 else message_text(messages[-1]) if stage == "analyze" and messages else ""
    found = re.findall(r"train\.py for run (\d+)" if stage == "codegen" else r"Run (\d+):", text)
    return int(found[-1] if stage == "codegen" else found[0]) if found else None  # codegen's instruction ends its request


def figures(experiment: Path, runs: int, at_runs: tuple[int, ...], early_run: int = 10) -> tuple[list[Figure], dict]:
    """The requests at the chosen runs, the largest of each stage against its budget, and run `runs`'s codegen against run `early_run`'s."""
    bench = "prompt size"
    found = requests(experiment)
    budgets = stage_budgets(runs)
    result = []
    for run in at_runs:
        parts = [_size(r) + f" {r['stage']}" for r in found if r["run"] == run]
        codegen = _first(found, "codegen", run)
        result.append(Figure(bench, f"requests at run {run}", codegen["chars"] if codegen else None, "chars", shown=" · ".join(parts) or "n/a"))
    result += budget_figures(found, budgets, bench, "")
    early, late = _first(found, "codegen", early_run), _first(found, "codegen", runs)
    name = f"codegen request, run {runs} / run {early_run}"
    result.append(growth_ratio(bench, name, late and late["chars"], early and early["chars"], GROWTH_BOUND, digits=3))
    parts = {run: (_first(found, "codegen", run) or {}).get("parts", {}) for run in sorted({*at_runs, early_run, runs})}
    grown = {name: size - parts[early_run].get(name, 0) for name, size in parts[runs].items()}
    shown = ", ".join(f"{name} {size:+,}" for name, size in sorted(grown.items(), key=lambda item: -item[1]) if size)
    result.append(Figure(bench, f"codegen request by part, run {runs} less run {early_run} (chars)", None, "chars", shown=shown or "no change"))
    return result, {"budgets_chars": budgets, "part_budgets_chars": BUDGET, "codegen_parts_chars": parts, "requests": found}


def flood_figures(experiment: Path, flood_label: str) -> tuple[list[Figure], dict]:
    """The requests that read the flooded run (its analysis, the next run's codegen), against their budgets."""
    found = [r for r in requests(experiment) if r["stage"] in ("analyze", "codegen") and r["run"] in (1, 2)]
    reading = [r for r in found if (r["stage"], r["run"]) in (("analyze", 1), ("codegen", 2))]
    return budget_figures(reading, stage_budgets(2), "prompt size", f" after a run whose log is {flood_label}"), {"requests_after_flood": found}


def budget_figures(found: list[dict], budgets: dict[str, int], bench: str, context: str) -> list[Figure]:
    """For each stage: its largest request against its budget."""
    result = []
    for stage, budget in budgets.items():
        of_stage = [r for r in found if r["stage"] == stage]
        if not of_stage:
            continue
        largest = max(of_stage, key=lambda r: r["chars"])
        where = f", run {largest['run']}" if largest["run"] else ""
        result.append(
            Figure(
                bench,
                f"largest {stage} request{context} (of {len(of_stage)}{where})",
                largest["chars"],
                "chars",
                shown=_size(largest),
                bound=f"<= {budget:,} chars ({budget // CHARS_PER_TOKEN:,} tok)",
                passed=at_most(largest["chars"], budget),
            )
        )
    return result


def _first(found: list[dict], stage: str, run: int) -> dict | None:
    return next((r for r in found if r["stage"] == stage and r["run"] == run), None)


def _size(request: dict) -> str:
    return f"{request['chars']:,} ch / {request['tokens']:,} tok"
