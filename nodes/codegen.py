"""The LLM writes a complete train.py for the coming run; a file that does not compile, or a reply cut off, gets one retry."""

from __future__ import annotations

import re

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from adapters.audit import AuditLog
from adapters.files import ExperimentFiles, write_atomic
from adapters.llm import LLMError, TextReply, ask_reply
from adapters.logs import clip
from nodes.prompts import BUDGET, CODEGEN_CUT_OFF_RETRY, CODEGEN_SYNTAX_RETRY, CODEGEN_SYSTEM, CODEGEN_USER
from nodes.records import experiment_context
from settings import Settings
from state import ExperimentState

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


def codegen_prompt(state: ExperimentState, run: int, feedback: str = "") -> str:
    """The user message for codegen: every part clipped to its budget, so it never grows with the runs."""
    return CODEGEN_USER.format(
        **experiment_context(state),
        machine=clip(state.get("machine") or "(not known)", BUDGET["machine"]),
        previous_code=clip(state.get("code") or "(none: this is the first run)", BUDGET["previous_code"]),
        previous_run=clip(state.get("previous_digest", ""), BUDGET["previous_run"]),
        feedback=f"\n<feedback>\n{clip(feedback, BUDGET['feedback'])}\n</feedback>\n" if feedback else "",
        run=run,
    )


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
    run = len(state.get("runs", [])) + 1
    runtime.stream_writer({"event": "stage", "stage": "codegen", "run": run, "model": settings.code_model})

    # 1. Ask for the whole file.
    files = ExperimentFiles(state["experiment_dir"])
    audit = AuditLog(files.llm_calls, settings.audit_content)
    messages = [SystemMessage(CODEGEN_SYSTEM), HumanMessage(codegen_prompt(state, run, state.get("review_feedback", "")))]
    reply = ask_reply(settings, settings.code_model, messages, "codegen", audit)
    usages = [reply.usage]
    code = extract_python(reply.text)

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

    # 3. Write it where execute will run it.
    write_atomic(files.run_dir(run) / "train.py", code)
    return {"code": code, "usage": usages}
