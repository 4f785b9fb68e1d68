"""One structured LLM call on the run just finished: findings, task updates, goal judgement; then the stop decision."""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from adapters.audit import AuditLog
from adapters.files import ExperimentFiles, section_run
from adapters.llm import ask_structured
from adapters.logs import clip, one_line
from nodes.prompts import ANALYZE_SYSTEM, ANALYZE_USER, BUDGET
from nodes.records import CHANGED_LABEL, findings_digest, tasks_text
from nodes.stop_rules import decide_stop
from settings import Settings
from state import ExperimentState, RunAnalysis, RunRecord, Task


def apply_analysis(tasks: list[Task], analysis: RunAnalysis, run: int) -> list[Task]:
    """The task list after the analyst's updates and new tasks; unknown ids are ignored."""
    updates = {u.id: u for u in analysis.task_updates}
    result = []
    for task in tasks:
        update = updates.get(task["id"])
        if update is None:
            result.append(task)
            continue
        runs = task["runs"] if run in task["runs"] else [*task["runs"], run]
        result.append(Task(id=task["id"], title=task["title"], status=update.status, notes=update.notes.strip() or task["notes"], runs=runs))
    next_id = max((t["id"] for t in tasks), default=0) + 1
    for offset, new in enumerate(analysis.new_tasks):
        result.append(Task(id=next_id + offset, title=new.title.strip(), status="todo", notes=new.notes.strip(), runs=[]))
    return result


def findings_section(run: RunRecord, analysis: RunAnalysis) -> str:
    """The KEY_FINDINGS.md section of one run: what it changed, how it went, what it established."""
    lines = [f"## Run {run['number']} ({run['status']})", ""]
    if change := one_line(analysis.change):
        lines += [f"{CHANGED_LABEL} {change}", ""]
    lines.append(analysis.summary.strip())
    if analysis.findings:
        lines += [""] + [f"- {f.strip()}" for f in analysis.findings if f.strip()]
    if analysis.goal_achieved:
        lines += ["", f"Goal achieved: {analysis.goal_evidence.strip()}"]
    return "\n".join(lines)


def analyze(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Read the run's summary, update tasks.json and KEY_FINDINGS.md, judge the goal."""
    settings = runtime.context
    run = state["runs"][-1]
    runtime.stream_writer({"event": "stage", "stage": "analyze", "run": run["number"], "model": settings.summarize_model})

    prompt = ANALYZE_USER.format(
        goal=state.get("goal", ""),
        tasks=tasks_text(state.get("tasks", []), BUDGET["tasks"]),
        code=clip(state.get("code", ""), BUDGET["previous_code"]),
        run=state.get("last_summary", ""),
    )
    files = ExperimentFiles(state["experiment_dir"])
    messages = [SystemMessage(ANALYZE_SYSTEM), HumanMessage(prompt)]
    analysis, usage = ask_structured(settings, settings.summarize_model, RunAnalysis, messages, "analyze", AuditLog(files.llm_calls, settings.audit_content))

    tasks = apply_analysis(state.get("tasks", []), analysis, run["number"])
    section = findings_section(run, analysis)
    files.write_tasks(tasks)
    sections = [s for s in files.read_findings() if section_run(s) != run["number"]]  # analysed again: replaced
    sections.append(section)
    files.write_findings(sections)
    goal = state.get("goal", "")
    stop = decide_stop(state["runs"], [*state.get("usage", []), *usage], goal, analysis.goal_achieved, state["max_runs"], settings)
    goal_met = stop is not None and stop.reason == "goal_met"
    runtime.stream_writer({"event": "analysis", "run": run["number"], "summary": analysis.summary, "goal_met": goal_met})
    return {
        "tasks": tasks,
        "findings_digest": findings_digest(sections, BUDGET["findings"]),
        "goal_met": goal_met,
        "stop_reason": stop.reason if stop else None,
        "stop_detail": stop.detail if stop else "",
        "usage": usage,
    }
