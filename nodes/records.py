"""How tasks, findings, runs and the goal read as text in prompts and reports, within size budgets."""

from __future__ import annotations

from pathlib import Path

from adapters.files import section_run
from adapters.logs import LogSummary, clip, exact_number, format_metrics, one_line, run_summary
from adapters.machine import devices_text
from goal import best_ranked, parse_goal, ranking
from nodes.prompts import BUDGET
from state import ExperimentState, RunRecord, Task
from trust import FLAG_MARK

RECENT_CLOSED = 3
"""Finished (done or dropped) tasks listed by name in prompts, the latest ones; earlier ones are only counted."""


def tasks_text(tasks: list[Task], budget: int) -> str:
    """One line a task: open ones first, then the latest finished ones; older finished tasks are counted, not listed,
    so the text stops growing with the experiment once the open tasks are few."""
    order = {"in_progress": 0, "todo": 1}
    open_tasks = sorted((t for t in tasks if t["status"] in order), key=lambda t: (order[t["status"]], t["id"]))
    closed = [t for t in tasks if t["status"] not in order]
    recent = sorted(closed, key=lambda t: (max(t["runs"], default=0), t["id"]))[-RECENT_CLOSED:]
    lines = [task_line(t) for t in open_tasks] + [task_line(t) for t in sorted(recent, key=lambda t: t["id"])]
    if earlier := len(closed) - len(recent):
        lines.append(f"(and {earlier} earlier finished tasks, done or dropped: see tasks.json)")
    return clip("\n".join(lines) or "(no tasks)", budget)


def task_line(task: Task) -> str:
    runs = f" (runs {', '.join(map(str, task['runs']))})" if task["runs"] else ""
    notes = f" — {task['notes']}" if task["notes"] else ""
    return f"#{task['id']} [{task['status']}] {task['title']}{notes}{runs}"


CHANGED_LABEL = "Changed:"
"""How a KEY_FINDINGS.md section says what its run changed; the condensed lines of the digest read it back."""
CONDENSED_LINE = 200
"""Characters at most of an older section's one-line form in the findings digest."""
MIN_CONDENSED_LINE = 48
"""Shorter than this, condensed lines say too little: the oldest are dropped instead."""


def section_change(section: str) -> str:
    """What the run of a KEY_FINDINGS.md section changed (its `Changed:` line), or empty."""
    lines = (line.strip() for line in section.splitlines())
    return next((line.removeprefix(CHANGED_LABEL).strip() for line in lines if line.startswith(CHANGED_LABEL)), "")


def changes_by_run(sections: list[str]) -> dict[int, str]:
    """What each run changed, by run number, from KEY_FINDINGS.md's sections (the file keeps them; the state does not)."""
    found = {}
    for section in sections:
        if (run := section_run(section)) is not None and (change := section_change(section)):
            found[run] = change
    return found


def condensed_section(section: str, width: int) -> str:
    """One line for an older KEY_FINDINGS section: its heading, what the run changed, and its first finding (else its summary)."""
    lines = [line.strip() for line in section.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    heading, body = lines[0].lstrip("#").strip(), lines[1:]
    change = section_change(section)
    rest = [line for line in body if not line.startswith(CHANGED_LABEL)]
    point = next((line[2:].strip() for line in rest if line.startswith("- ")), rest[0] if rest else "")
    return one_line(f"{heading}: " + " — ".join(part for part in (change, point) if part), width)


def condensed_block(sections: list[str], room: int) -> str:
    """The older sections a line each, oldest first, in at most `room` characters; the oldest dropped when even short lines overflow."""
    count = len(sections)
    header = f"({count} earlier sections omitted) — a line each, oldest first"
    width = min(CONDENSED_LINE, max((room - len(header) - 40) // max(count, 1) - 1, MIN_CONDENSED_LINE))
    lines: list[str] = []
    used = len(header) + 40  # room for the header's note on dropped sections
    for section in reversed(sections):
        line = condensed_section(section, width)
        if used + len(line) + 1 > room:
            break
        lines.append(line)
        used += len(line) + 1
    dropped = count - len(lines)
    if dropped == count:
        return f"({count} earlier sections omitted)"
    note = f"; the {dropped} oldest only in KEY_FINDINGS.md" if dropped else ""
    return "\n".join([f"{header}{note}:", *reversed(lines)])


def findings_digest(sections: list[str], budget: int) -> str:
    """KEY_FINDINGS for a prompt, at most `budget` characters: the newest sections in full, the older ones a line each.

    The condensed lines take at most half the budget, so at run 50 the latest findings keep their detail and
    the early runs are still named; only when even short lines overflow are the oldest dropped, with a note.
    """
    if not sections:
        return "(none yet)"
    whole = "\n\n".join(sections)
    if len(whole) <= budget:
        return whole
    # 1. The newest sections that fit whole in half the budget; none when the newest alone is larger.
    full: list[str] = []
    for section in reversed(sections):
        if sum(len(s) + 2 for s in full) + len(section) > budget // 2:
            break
        full.append(section)
    full.reverse()
    older = sections[: len(sections) - max(len(full), 1)]
    # 2. The older ones condensed, in the room the full ones leave (at most half).
    full_text = "\n\n".join(full)
    head = condensed_block(older, min(budget // 2, budget - len(full_text) - 2)) if older else ""
    # 3. A newest section too large for half the budget is cut to fill what is left.
    if not full:
        full_text = clip(sections[-1], budget - len(head) - 2 if head else budget)
    return clip("\n\n".join(part for part in (head, full_text) if part), budget)


def experiment_context(state: ExperimentState) -> dict[str, str]:
    """The idea, plan, tasks and findings, each clipped to its budget, for EXPERIMENT_CONTEXT."""
    return {
        "idea": clip(state.get("idea", ""), BUDGET["idea"]),
        "plan": clip(state.get("plan", ""), BUDGET["plan"]),
        "tasks": tasks_text(state.get("tasks", []), BUDGET["tasks"]),
        "findings": clip(state.get("findings_digest") or findings_digest([], BUDGET["findings"]), BUDGET["findings"]),
    }


def run_line(run: RunRecord) -> str:
    """`run 4: failed, 12 s, none found, error: ...`; a cancelled run says why it stopped and that its metrics are from then."""
    if run["status"] == "cancelled":  # stopped in flight: it neither failed nor finished
        why = run["error"].removeprefix("cancelled: ")
        return f"run {run['number']}: cancelled{f' ({why})' if why else ''}, {run['duration_s']:.0f} s, when stopped: {format_metrics(run['metrics'])}"
    return f"run {run['number']}: {run['status']}, {run['duration_s']:.0f} s, {format_metrics(run['metrics'])}" + (
        f", error: {run['error']}" if run["error"] else ""
    )


def metrics_text(metrics: dict[str, float]) -> str:
    """`name=value, ...` with every value exact; `none` without metrics."""
    return ", ".join(f"{name}={exact_number(value)}" for name, value in metrics.items()) or "none"


MAX_METRIC_COLUMNS = 6
"""Metrics with a column of their own in the runs table; the others share one."""
CELL_CHARS = 160
"""Characters kept of a free-text table cell (what changed, the error)."""


def cell(text: str, limit: int | None = CELL_CHARS) -> str:
    """`text` as one Markdown table cell: one line, pipes escaped, cut to `limit` characters (None: whole, for numbers)."""
    return one_line(text, limit).replace("|", "\\|")


def record_summary(run_dir: Path, run: RunRecord, python: str, log: LogSummary | None = None) -> str:
    """A finished run's summary as the LLM reads it (adapters.logs.run_summary): with its grade, self-report and flags."""
    graded = run["metrics"] if "reported" in run else None
    flags = run.get("flags", [])
    return run_summary(run_dir, run["number"], run["status"], run["exit_code"], run["duration_s"], run["error"], python, log, graded=graded, flags=flags)


def grading_text(runs: list[RunRecord], goal: str) -> str:
    """The grader's metric names as the code model is told them: those it has graded so far, else the goal's metric."""
    names = list(dict.fromkeys(name for run in runs if "reported" in run for name in run["metrics"]))
    if names:
        return "it reports " + ", ".join(names)
    parsed = parse_goal(goal)
    return f"the goal's metric is {parsed.metric}; the grader has graded no run yet" if parsed else "the grader has graded no run yet"


def where_text(run: RunRecord) -> str:
    """Where a run ran: `node-2 · GPU 0,1` (a Ray node), `GPU 3` (this machine), `node-2 · CPU`; — when not recorded (cancelled, older)."""
    if "gpus" not in run and "node" not in run:
        return "—"
    return devices_text(run.get("gpus") or [], run.get("node") or "")


def status_text(run: RunRecord) -> str:
    """The run's status, with ⚑ when its numbers are in doubt."""
    return run["status"] + (FLAG_MARK if run.get("flags") else "")


def runs_table(runs: list[RunRecord], goal: str = "", changes: dict[int, str] | None = None) -> str:
    """Markdown table of every run: the run it builds on and how (— for a draft), exact metric values and what each changed; ★ marks the best run.

    In a graded experiment the metric columns are the grade and a Self-reported column what each script said of itself;
    ⚑ after a status marks a run whose numbers are in doubt. A cancelled run's row says so in its status and error, and
    a note under the table says what its values are: never the best.
    """
    rank = ranking(runs, goal)
    best = best_ranked(runs, rank)
    names = list(dict.fromkeys([*([rank.metric] if rank else []), *(name for run in runs for name in run["metrics"])]))
    columns, others = names[:MAX_METRIC_COLUMNS], names[MAX_METRIC_COLUMNS:]
    graded = any("reported" in run for run in runs)
    with_error = any(run["error"] for run in runs)
    extra = [*(["Other metrics"] if others else []), *(["Self-reported"] if graded else []), *(["Error"] if with_error else [])]
    where = any(run.get("node") or run.get("gpus") for run in runs)
    head = ["Run", "Parent", "Operator", "Status", "Duration", *(["Where"] if where else []), *columns, *extra, "What changed"]
    rows = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        mark = " ★" if best is not None and run["number"] == best["number"] else ""
        values = [exact_number(run["metrics"][name]) if name in run["metrics"] else "—" for name in columns]
        if others:
            values.append(cell(metrics_text({k: v for k, v in run["metrics"].items() if k in others}), limit=None))
        if graded:
            values.append(cell(metrics_text(run["reported"]), limit=None) if "reported" in run else "—")
        if with_error:
            values.append(cell(run["error"]))
        change = cell((changes or {}).get(run["number"], ""))
        parent = "—" if run["parent"] is None else run["parent"]
        start = f"| {run['number']}{mark} | {parent} | {run['operator']} | {status_text(run)} | {exact_number(run['duration_s'])} s | "
        if where:
            start += f"{cell(where_text(run))} | "
        rows.append(start + " | ".join([*values, change]) + " |")
    notes = []
    if graded:
        notes.append(
            "The metric columns are what grade.py graded (— where it graded nothing: the script failed, or grade.py did); "
            "the Self-reported column is what each run's train.py reported about itself."
        )
    if cancelled := [str(run["number"]) for run in runs if run["status"] == "cancelled"]:
        one = len(cancelled) == 1
        which = f"Run {cancelled[0]} was" if one else f"Runs {', '.join(cancelled)} were"
        kept = "self-report is" if graded else "metrics are"  # a graded experiment grades no cancelled run
        theirs = f"its {kept} the last values its log showed, and it is" if one else f"their {kept} the last values their logs showed, and they are"
        notes.append(f"{which} stopped in flight when the experiment ended: {theirs} not ranked.")
    return "\n".join(rows + [line for note in notes for line in ("", note)])
