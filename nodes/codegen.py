"""The LLM writes a complete train.py for the coming run; a file that does not compile, or a reply cut off, gets one retry."""

from __future__ import annotations

import re

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.runtime import Runtime

from adapters.audit import AuditLog
from adapters.files import ExperimentFiles, write_atomic
from adapters.grader import is_graded
from adapters.llm import LLMError, Prompt, TextReply, ask_reply, prompt_messages
from adapters.logs import clip, one_line
from adapters.training import share_for
from nodes.prompts import (
    BUDGET,
    CODEGEN_CUT_OFF_RETRY,
    CODEGEN_INSTRUCTION,
    CODEGEN_STABLE,
    CODEGEN_SYNTAX_RETRY,
    CODEGEN_SYSTEM,
    CODEGEN_VOLATILE,
    DRAFTS_DIFFER,
    GRADING,
    PARENT_CODE,
)
from nodes.records import experiment_context, grading_text
from nodes.summarize import coming_run
from settings import Settings
from state import ExperimentState, NextRun

FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
PYTHON_TAGS = ("", "python", "py", "python3")


def extract_python(reply: str) -> str:
    """The code in a reply's answer: the longest untagged or Python fenced block, else the whole answer.

    `reply` is the answer ask_reply gives, its reasoning already stripped: a draft in a <think> block is never taken.
    """
    blocks = [code for tag, code in FENCE.findall(reply) if tag.lower() in PYTHON_TAGS]
    code = max(blocks, key=len) if blocks else reply
    return code.strip() + "\n"


def compile_error(code: str) -> str | None:
    """Why `code` cannot be train.py, as one line: its SyntaxError, or that it is empty (a reply all reasoning); None when it compiles."""
    if not code.strip():
        return "the file is empty"
    try:
        compile(code, "train.py", "exec")
    except SyntaxError as exc:
        return f"line {exc.lineno}: {exc.msg}: {(exc.text or '').strip()}"
    except ValueError as exc:  # null bytes
        return str(exc)
    return None


def codegen_prompt(state: ExperimentState, coming: NextRun, parent_code: str = "", feedback: str = "", share: str = "", grading: str = "") -> Prompt:
    """The user message for codegen, as the coming run's operator asks (a draft sees no parent code): every part clipped
    to its budget, so it never grows with the runs. `share` says what one run gets of the machine when runs share it;
    `grading`, in a graded experiment, what the grader counts (nodes.records.grading_text).

    Its stable part (idea, plan, machine) is the same for every run, its recurring part the parent's code;
    the run's own facts follow them."""
    run, parent = coming["number"], coming["parent"]
    others = run > 1  # run 1 is always a draft: a later draft has others to differ from
    machine = (state.get("machine") or "(not known)") + (f"\n{share}" if share else "")
    context = experiment_context(state)
    stable = CODEGEN_STABLE.format(**context, machine=clip(machine, BUDGET["machine"]))
    recurring = PARENT_CODE.format(parent=parent, code=clip(parent_code, BUDGET["previous_code"])) if parent is not None else ""
    volatile = CODEGEN_VOLATILE.format(
        **context,
        grading=GRADING.format(metrics=clip(grading, BUDGET["grading"])) if grading else "",
        previous_run=clip(state.get("previous_digest", ""), BUDGET["previous_run"]),
        feedback=f"\n<feedback>\n{clip(feedback, BUDGET['feedback'])}\n</feedback>\n" if feedback else "",
        instruction=CODEGEN_INSTRUCTION[coming["operator"]].format(run=run, parent=parent, differ=DRAFTS_DIFFER if others else ""),
    )
    return Prompt(stable, recurring, volatile)


CHANGE_LINE = re.compile(r"^[ \t*_#>-]*change[ \t*_]*:[ \t*_]*(.+?)[ \t*_]*$", re.IGNORECASE | re.MULTILINE)


def named_change(reply: str) -> str:
    """The change an improve named before its code (`Change: ...`), or empty."""
    before_code = reply.split("```", 1)[0]
    match = CHANGE_LINE.search(before_code)
    return one_line(match.group(1), 300) if match else ""


def parent_code(files: ExperimentFiles, coming: NextRun) -> str:
    """The train.py the coming run builds on (as it ran, reviewer's edits included); empty for a draft."""
    if coming["parent"] is None:
        return ""
    try:
        return (files.run_dir(coming["parent"]) / "train.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(run {coming['parent']}'s train.py is missing)"


def second_request(reply: TextReply, code: str, run: int) -> tuple[str, dict] | None:
    """What to ask once more, and the event saying why: for a reply cut off at the output limit, or a file that does not compile."""
    if reply.cut_off:
        return CODEGEN_CUT_OFF_RETRY, {"event": "warning", "message": f"run {run}: the code model's reply was cut off at its output limit; asking once more"}
    if error := compile_error(code):
        return CODEGEN_SYNTAX_RETRY.format(error=error), {"event": "syntax_retry", "run": run, "error": error}
    return None


def codegen(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Write run_N/train.py."""
    settings = runtime.context
    coming = coming_run(state)
    run = coming["number"]
    runtime.stream_writer(
        {"event": "stage", "stage": "codegen", "run": run, "model": settings.code_model, "operator": coming["operator"], "parent": coming["parent"]}
    )

    # 1. Ask for the whole file: a fresh one (draft), or the parent's with one change (improve) or its failure fixed (debug).
    files = ExperimentFiles(state["experiment_dir"])
    audit = AuditLog(files.llm_calls, settings.audit_content)
    grading = grading_text(files.runs_of(state), state.get("goal", "")) if is_graded(files.root) else ""
    prompt = codegen_prompt(state, coming, parent_code(files, coming), state.get("review_feedback", ""), share_for(settings), grading)
    messages = prompt_messages(CODEGEN_SYSTEM, prompt, settings.code_model)
    reply = ask_reply(settings, settings.code_model, messages, "codegen", audit)
    usages = [reply.usage]
    code = extract_python(reply.text)
    change = named_change(reply.text)

    # 2. A reply cut off at the output limit, or a file that does not compile, costs one more request, not a run.
    if retry := second_request(reply, code, run):
        request, event = retry
        runtime.stream_writer(event)
        said = [AIMessage(reply.text)] if reply.text.strip() else []  # a reply all reasoning: some servers refuse an empty turn
        messages += [*said, HumanMessage(request)]
        try:
            reply = ask_reply(settings, settings.code_model, messages, "codegen", audit)
        except LLMError as exc:
            exc.usage = [*usages, *exc.usage]  # the first answer was paid for
            raise
        usages.append(reply.usage)
        code = extract_python(reply.text)  # still broken: it runs, fails, and the analyst sees why
        change = named_change(reply.text) or change

    # 3. Write it where execute will run it.
    write_atomic(files.run_dir(run) / "train.py", code)
    change = change if coming["operator"] == "improve" else ""
    return {"code": code, "usage": usages, "next_run": {**coming, "change": change} if change else coming}
