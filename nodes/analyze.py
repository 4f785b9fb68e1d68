"""One structured LLM call on the run just finished: findings, task updates, goal judgement; then the stop decision."""

from __future__ import annotations

from langgraph.runtime import Runtime

from adapters.audit import AuditLog
from adapters.files import ExperimentFiles, section_run
from adapters.llm import Prompt, ask_structured, prompt_messages
from adapters.logs import clip, one_line
from goal import best_run
from nodes.prompts import ANALYZE_STABLE, ANALYZE_SYSTEM, ANALYZE_VOLATILE, BUDGET
from nodes.records import CHANGED_LABEL, RECENT_CLOSED, experiment_context, findings_digest
from nodes.stop_rules import decide_stop
from search import origin_words
from settings import Settings
from state import ExperimentState, RunAnalysis, RunRecord, Task


def apply_analysis(tasks: list[Task], analysis: RunAnalysis, run: int, created: int | None = None) -> list[Task]:
    """The task list after the analyst's updates and new tasks (numbered after the `created` ones); unknown ids are ignored."""
    updates = {u.id: u for u in analysis.task_updates}
    result = []
    for task in tasks:
        update = updates.get(task["id"])
        if update is None:
            result.append(task)
            continue
        runs = task["runs"] if run in task["runs"] else [*task["runs"], run]
        result.append(Task(id=task["id"], title=task["title"], status=update.status, notes=update.notes.strip() or task["notes"], runs=runs))
    next_id = max(created or 0, *(t["id"] for t in tasks), 0) + 1
    for offset, new in enumerate(analysis.new_tasks):
        result.append(Task(id=next_id + offset, title=new.title.strip(), status="todo", notes=new.notes.strip(), runs=[]))
    return result


def run_code(files: ExperimentFiles, number: int, fallback: str) -> str:
    """The train.py run `number` ran (with runs in flight, the state's `code` is the latest written, not this one's)."""
    try:
        return (files.run_dir(number) / "train.py").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return fallback


def working_tasks(tasks: list[Task]) -> list[Task]:
    """The tasks the state keeps: every open one and the RECENT_CLOSED latest finished ones, what prompts read (tasks_text).

    Older finished tasks never change again; they live in tasks.json only, so the state does not grow with the runs.
    """
    closed = [task for task in tasks if task["status"] in ("done", "dropped")]
    kept = {task["id"] for task in sorted(closed, key=lambda t: (max(t["runs"], default=0), t["id"]))[-RECENT_CLOSED:]}
    return [task for task in tasks if task["status"] not in ("done", "dropped") or task["id"] in kept]


def all_tasks(files: ExperimentFiles, working: list[Task], created: int) -> list[Task]:
    """Every task: the finished ones tasks.json keeps beside the state's working ones, then the working ones as the state has them.

    tasks.json's copies of working tasks, and tasks numbered past `created`, are left out: they come from an
    analysis whose step was cut short, and this one is made again from the state.
    """
    try:
        saved = files.read_tasks()
    except (OSError, ValueError, KeyError):
        saved = []
    working_ids = {task["id"] for task in working}
    archived = [task for task in saved if task["id"] not in working_ids and task["id"] <= created]
    return sorted([*archived, *working], key=lambda task: task["id"])


def findings_section(run: RunRecord, analysis: RunAnalysis) -> str:
    """The KEY_FINDINGS.md section of one run: how it came about, what it changed, how it went, what it established."""
    lines = [f"## Run {run['number']} ({run['status']}, {origin_words(run)})", ""]
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
    files = ExperimentFiles(state["experiment_dir"])
    runs = files.runs_of(state)
    run = state["latest_run"] if state.get("latest_run") else runs[-1]  # with runs in flight, the last to end is not the last in number
    runtime.stream_writer({"event": "stage", "stage": "analyze", "run": run["number"], "model": settings.summarize_model})

    change = state.get("latest_change") if "in_flight" in state else (state.get("next_run") or {}).get("change")  # saved before parallel runs: next_run's
    how = f"Run {run['number']} came about as: {origin_words(run)}" + (f"; the change it named in advance: {change}" if change else "")
    context = experiment_context(state)
    prompt = Prompt(
        ANALYZE_STABLE.format(**context, goal=state.get("goal", "")),
        "",
        ANALYZE_VOLATILE.format(
            origin=how,
            tasks=context["tasks"],
            code=clip(run_code(files, run["number"], state.get("code", "")), BUDGET["previous_code"]),
            run=state.get("last_summary", ""),
        ),
    )
    messages = prompt_messages(ANALYZE_SYSTEM, prompt, settings.summarize_model)
    audit = AuditLog(files.llm_calls, settings.audit_content)
    reply = ask_structured(
        settings, settings.summarize_model, RunAnalysis, messages, "analyze", audit, learned=state.get("structured_output"), emit=runtime.stream_writer
    )
    analysis, usage = reply.answer, reply.usage

    created = state.get("tasks_created") or max((task["id"] for task in state.get("tasks", [])), default=0)
    tasks = apply_analysis(state.get("tasks", []), analysis, run["number"], created)
    created = max(created, *(task["id"] for task in tasks), 0)
    section = findings_section(run, analysis)
    files.write_tasks(all_tasks(files, tasks, created))
    sections = [s for s in files.read_findings() if section_run(s) != run["number"]]  # analysed again: replaced
    sections.append(section)
    files.write_findings(sections)
    goal = state.get("goal", "")
    in_flight = len(state.get("in_flight") or [])
    stop = decide_stop(runs, [*state.get("usage", []), *usage], goal, analysis.goal_achieved, state["max_runs"], settings, latest=run, in_flight=in_flight)
    goal_met = stop is not None and stop.reason == "goal_met"
    runtime.stream_writer({"event": "analysis", "run": run["number"], "summary": analysis.summary, "goal_met": goal_met})
    return {
        "tasks": working_tasks(tasks),
        "tasks_created": created,
        "best_run": best_run(runs, goal),
        "findings_digest": findings_digest(sections, BUDGET["findings"]),
        "goal_met": goal_met,
        "stop_reason": stop.reason if stop else None,
        "stop_detail": stop.detail if stop else "",
        "usage": usage,
        "structured_output": reply.learned,
    }
