"""With review on, pause before each run so a person approves, rejects (with a reason) or edits train.py."""

from __future__ import annotations

import difflib

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from adapters.files import ExperimentFiles, write_atomic
from nodes.codegen import compile_error
from nodes.summarize import coming_run
from settings import Settings
from state import ExperimentState

ACTIONS = ("approve", "reject", "edit")


class ReviewError(ValueError):
    """A resume value the review cannot use."""


def code_diff(previous: str, current: str, run: int, parent: int | None = None) -> str:
    """Unified diff of train.py against the one of the run it builds on (`parent`, by default the run before)."""
    parent = run - 1 if parent is None else parent
    lines = difflib.unified_diff(previous.splitlines(keepends=True), current.splitlines(keepends=True), f"run_{parent}/train.py", f"run_{run}/train.py")
    return "".join(lines)


def diff_note(previous: str | None, current: str, run: int, parent: int | None) -> str:
    """Why the review shows no diff (a draft, no parent file, the same code), or "" when it shows one."""
    if run <= 1:
        return "first run: nothing to compare"
    if parent is None:
        return "a draft, a new solution: nothing to compare"
    if previous is None:
        return f"run_{parent}/train.py is missing: nothing to compare"
    if previous == current:
        return f"unchanged: the same code as run {parent}"
    return ""


def parse_decision(value: object) -> dict:
    """{'action': 'approve'} / {'action': 'reject', 'reason': ...} / {'action': 'edit', 'code': ...}; a bare string is an action."""
    decision = {"action": value} if isinstance(value, str) else value
    if not isinstance(decision, dict) or decision.get("action") not in ACTIONS:
        raise ReviewError(f"review answer must be one of {', '.join(ACTIONS)} (as {{'action': ...}}), got {value!r}")
    if decision["action"] == "reject" and not str(decision.get("reason", "")).strip():
        raise ReviewError("a rejection needs a reason, for the next version")
    if decision["action"] == "edit" and not isinstance(decision.get("code"), str):
        raise ReviewError("an edit needs the new code as 'code'")
    return decision


def review(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Ask for a decision on the coming run's train.py; a no-op unless review is on."""
    if not runtime.context.review:
        return {"review_feedback": ""}
    files = ExperimentFiles(state["experiment_dir"])
    coming = coming_run(state)
    run = coming["number"]
    code = state.get("code", "")
    previous_file = files.run_dir(coming["parent"]) / "train.py" if coming["parent"] is not None else None
    previous = previous_file.read_text(encoding="utf-8") if previous_file is not None and previous_file.is_file() else None
    note = diff_note(previous, code, run, coming["parent"])
    diff = "" if note else code_diff(previous or "", code, run, coming["parent"])
    runtime.stream_writer({"event": "stage", "stage": "review", "run": run})

    # Resuming re-runs this node from the top; interrupt() then returns the answer.
    request = {"kind": "review", "run": run, "path": str(files.run_dir(run) / "train.py"), "code": code, "diff": diff, "note": note}
    decision = parse_decision(interrupt(request))

    if decision["action"] == "reject":
        return {"review_feedback": f"The reviewer rejected the previous version of train.py: {decision['reason'].strip()}"}
    if decision["action"] == "edit":
        code = decision["code"] if decision["code"].endswith("\n") else decision["code"] + "\n"
        if error := compile_error(code):
            runtime.stream_writer({"event": "warning", "message": f"the edited train.py does not compile ({error}); running it as edited"})
        write_atomic(files.run_dir(run) / "train.py", code)
        return {"code": code, "review_feedback": ""}
    return {"review_feedback": ""}
