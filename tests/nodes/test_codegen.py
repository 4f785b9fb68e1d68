"""codegen: the reply's code, the syntax retry, run_N/train.py, and a prompt that never grows with the runs."""

from __future__ import annotations

from pathlib import Path

from fake_llm import FakeLLMServer
from fakes import (
    ScriptedChatModel,
    code_reply,
    events_of,
    make_experiment,
    make_next_run,
    make_run,
    make_runtime,
    make_task,
    run_code,
    seed_runs,
    text_reply,
)
from langchain_core.messages import AIMessage

from nodes.codegen import codegen, codegen_prompt, compile_error, extract_python
from nodes.prompts import BUDGET, CODEGEN_INSTRUCTION, CODEGEN_SYSTEM, CODEGEN_USER, DRAFTS_DIFFER, PARENT_CODE
from nodes.records import findings_digest

GOOD = "import json\nprint('epoch=1 loss=0.5')\njson.dump({'accuracy': 0.9}, open('metrics.json', 'w'))"
BROKEN = "def train(:\n    pass"

# What may legitimately pass the sum of the budgets: findings_digest puts "(N earlier sections
# omitted)" above the sections it keeps, a feedback part comes wrapped in <feedback> tags, the
# parent's code in <parent_code> tags, and the operator's instruction ends the prompt.
# (clip itself never exceeds its budget: its "…[n characters cut]…" marker is taken from it.)
OMITTED_HEADER = len("(9999 earlier sections omitted)\n\n")
FEEDBACK_WRAPPER = len("\n<feedback>\n\n</feedback>\n")
PARENT_WRAPPER = len(PARENT_CODE.format(parent=9999, code=""))
INSTRUCTION = max(len(text.format(run=9999, parent=9999, differ=DRAFTS_DIFFER)) for text in CODEGEN_INSTRUCTION.values())
PROMPT_BOUND = sum(BUDGET.values()) + len(CODEGEN_USER) + OMITTED_HEADER + FEEDBACK_WRAPPER + PARENT_WRAPPER + INSTRUCTION


# extract_python


def test_extract_fenced_block_with_language_tag():
    assert extract_python("Here:\n```python\nprint(1)\n```\nDone.") == "print(1)\n"


def test_extract_fenced_block_without_language_tag():
    assert extract_python("```\nprint(2)\n```") == "print(2)\n"


def test_extract_other_python_tags():
    assert extract_python("```py\nx = 1\n```") == "x = 1\n"
    assert extract_python("```Python3\nx = 3\n```") == "x = 3\n"


def test_extract_takes_the_longest_of_several_blocks():
    reply = "```python\nshort = 1\n```\nand the file:\n```python\nimport os\nlonger = os.getcwd()\n```\n"
    assert extract_python(reply) == "import os\nlonger = os.getcwd()\n"


def test_extract_without_fence_takes_the_whole_reply():
    assert extract_python("  import os\nprint(os.name)  \n\n") == "import os\nprint(os.name)\n"


def test_extract_skips_a_shell_block_before_the_python_block():
    reply = "Install first:\n```bash\npip install scikit-learn\n```\n\nThen:\n```python\nimport sklearn\nprint(sklearn.__version__)\n```\n"
    assert extract_python(reply) == "import sklearn\nprint(sklearn.__version__)\n"


# compile_error


def test_compile_error_none_for_valid_code():
    assert compile_error(GOOD) is None


def test_compile_error_names_the_line():
    error = compile_error("x = 1\n" + BROKEN)
    assert error is not None and error.startswith("line 2:") and "def train(:" in error


def test_compile_error_on_null_bytes():
    assert compile_error("x = 1\0") is not None


def test_compile_error_on_an_empty_file():
    assert compile_error("\n") == "the file is empty"


# the node


def test_writes_train_py_for_the_next_run(tmp_path: Path):
    model = ScriptedChatModel(responses=[code_reply(GOOD)])
    runtime, events = make_runtime(model)
    root = make_experiment(tmp_path)
    done = seed_runs(root, [make_run(1), make_run(2)], code=True)

    update = codegen({"experiment_dir": root, **done, "next_run": make_next_run(3), "idea": "IDEA-TEXT"}, runtime)

    written = (tmp_path / "run_3" / "train.py").read_text()
    assert written == GOOD + "\n" == update["code"]
    assert [(tmp_path / f"run_{n}" / "train.py").read_text() for n in (1, 2)] == [run_code(1), run_code(2)]  # only run 3 is written
    assert update["usage"] == [{"stage": "codegen", "model": runtime.context.code_model, "input_tokens": 100, "output_tokens": 20, "cost_usd": None}]
    assert "Write train.py for run 3" in model.text(0, 1)
    assert "IDEA-TEXT" in model.text(0, 1)
    stage = {"event": "stage", "stage": "codegen", "run": 3, "model": runtime.context.code_model, "operator": "improve", "parent": 2}
    assert events_of(events, "stage") == [stage]
    assert events_of(events, "syntax_retry") == []


def test_first_run_goes_in_run_1(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[code_reply(GOOD)]))
    codegen({"experiment_dir": make_experiment(tmp_path)}, runtime)
    assert (tmp_path / "run_1" / "train.py").exists()


def test_syntax_error_gets_one_retry_with_the_error(tmp_path: Path):
    model = ScriptedChatModel(responses=[code_reply(BROKEN), code_reply(GOOD)])
    runtime, events = make_runtime(model)

    update = codegen({"experiment_dir": make_experiment(tmp_path), "run_count": 0}, runtime)

    error = compile_error(BROKEN + "\n")
    assert len(model.calls) == 2
    retry = model.calls[1]
    assert isinstance(retry[-2], AIMessage) and BROKEN in retry[-2].content
    assert error in retry[-1].content
    assert retry[:2] == model.calls[0]
    written = (tmp_path / "run_1" / "train.py").read_text()
    assert compile_error(written) is None and written == update["code"]
    assert len(update["usage"]) == 2
    assert events_of(events, "syntax_retry") == [{"event": "syntax_retry", "run": 1, "error": error}]


def test_still_broken_after_retry_is_written_anyway(tmp_path: Path):
    model = ScriptedChatModel(responses=[code_reply(BROKEN), text_reply(BROKEN)])
    runtime, _ = make_runtime(model)

    update = codegen({"experiment_dir": make_experiment(tmp_path), "run_count": 0}, runtime)

    assert len(model.calls) == 2
    written = (tmp_path / "run_1" / "train.py").read_text()
    assert written == BROKEN + "\n" == update["code"]
    assert compile_error(written) is not None


# reasoning models and replies cut off


DRAFT = "import os\n" + "\n".join(f"draft_{i} = {i}" for i in range(40))  # longer than GOOD: the longest block would win


def written_by(reply: str, tmp_path: Path) -> str:
    codegen({"experiment_dir": make_experiment(tmp_path), "run_count": 0}, make_runtime(ScriptedChatModel(responses=[text_reply(reply)]))[0])
    return (tmp_path / "run_1" / "train.py").read_text()


def test_a_draft_in_the_reasoning_is_never_the_code(tmp_path: Path):
    reply = f"<think>\nLet me draft it first:\n```python\n{DRAFT}\n```\nNow the real file.\n</think>\n\n```python\n{GOOD}\n```\n"
    assert written_by(reply, tmp_path) == GOOD + "\n"


def test_a_draft_in_a_thinking_block_is_never_the_code(tmp_path: Path):
    reply = f"<Thinking>```python\n{DRAFT}\n```</Thinking>Here it is:\n```python\n{GOOD}\n```"
    assert written_by(reply, tmp_path) == GOOD + "\n"


def test_a_reply_that_is_all_reasoning_gets_the_one_retry(tmp_path: Path):
    model = ScriptedChatModel(responses=[text_reply(f"<think>I will write\n```python\n{DRAFT}\n```\nand then"), code_reply(GOOD)])
    runtime, events = make_runtime(model)

    update = codegen({"experiment_dir": make_experiment(tmp_path), "run_count": 0}, runtime)

    assert update["code"] == GOOD + "\n"
    assert DRAFT not in model.prompt(1)  # nor is the reasoning sent back
    assert [message.type for message in model.calls[1]] == ["system", "human", "human"]  # no empty assistant turn either
    assert events_of(events, "syntax_retry") == [{"event": "syntax_retry", "run": 1, "error": "the file is empty"}]


def test_reasoning_sent_beside_the_content_never_becomes_the_code(tmp_path: Path):
    reply = {"content": f"```python\n{GOOD}\n```", "reasoning_content": f"```python\n{DRAFT}\n```", "reasoning": f"```python\n{DRAFT}\n```"}
    with FakeLLMServer(lambda body: reply) as server:
        runtime, _ = make_runtime(llm_base_url=server.base_url, llm_max_retries=0)
        update = codegen({"experiment_dir": make_experiment(tmp_path), "run_count": 0}, runtime)
    assert update["code"] == GOOD + "\n" and len(server.requests) == 1


def test_a_reply_cut_off_at_the_output_limit_asks_for_the_complete_file(tmp_path: Path):
    cut = {
        "content": "Here is the file.\n```python\nimport json\nfor epoch in range(",
        "finish_reason": "length",
        "usage": {"prompt_tokens": 50, "completion_tokens": 4096},
    }
    replies = iter([cut, {"content": f"```python\n{GOOD}\n```", "usage": {"prompt_tokens": 60, "completion_tokens": 30}}])
    with FakeLLMServer(lambda body: next(replies)) as server:
        runtime, events = make_runtime(llm_base_url=server.base_url, llm_max_retries=0)
        update = codegen({"experiment_dir": make_experiment(tmp_path), "run_count": 0}, runtime)

    retry = server.requests[1]["messages"]
    assert "cut off at the output limit; answer with the complete file only" in retry[-1]["content"]
    assert "does not compile" not in retry[-1]["content"]
    assert retry[-2] == {"role": "assistant", "content": cut["content"]}
    assert update["code"] == GOOD + "\n" == (tmp_path / "run_1" / "train.py").read_text()
    assert [(u["input_tokens"], u["output_tokens"]) for u in update["usage"]] == [(50, 4096), (60, 30)]
    assert events_of(events, "syntax_retry") == []
    assert [e["message"] for e in events_of(events, "warning")] == ["run 1: the code model's reply was cut off at its output limit; asking once more"]


# the prompt


def test_the_system_prompt_is_the_same_for_every_run(tmp_path: Path):
    model = ScriptedChatModel(responses=[code_reply(GOOD), code_reply(GOOD)])
    runtime, _ = make_runtime(model)
    root = make_experiment(tmp_path)
    codegen({"experiment_dir": root, "run_count": 0}, runtime)
    codegen({"experiment_dir": root, **seed_runs(root, [make_run(1), make_run(2)], code=True), "next_run": make_next_run(3)}, runtime)
    assert model.calls[0][0].content == model.calls[1][0].content == CODEGEN_SYSTEM
    assert "Write train.py for run 1" in model.text(0, 1) and "Write train.py for run 3" in model.text(1, 1)


def test_the_prompt_describes_the_machine():
    machine = "python 3.11 · torch 2.5.1 (CUDA 12.4), scikit-learn 1.5.2\n16 CPU cores · 128 GiB RAM · GPU: NVIDIA H200 (139 GiB)"
    prompt = codegen_prompt({"experiment_dir": "unused", "machine": machine}, make_next_run(1)).text
    assert f"<machine>\n{machine}\n</machine>" in prompt
    assert "<machine>\n(not known)\n</machine>" in codegen_prompt({"experiment_dir": "unused"}, make_next_run(1)).text
    assert "import only the packages listed there" in CODEGEN_SYSTEM and "use a GPU (CUDA) only when one is listed" in CODEGEN_SYSTEM


# what each operator of the search asks for


def codegen_in_tree(tmp_path: Path, reply: AIMessage, coming: dict, lost: int | None = None) -> tuple[dict, str]:
    """codegen's update and prompt for `coming` after three runs with their code (but run `lost`'s): 1 a draft,
    2 a failed improve of 1, 3 an improve of 1."""
    root = make_experiment(tmp_path)
    runs = [make_run(1), make_run(2, status="failed", error="ValueError: boom", parent=1), make_run(3, parent=1)]
    state = {"experiment_dir": root, **seed_runs(root, runs, code=True), "next_run": coming}
    if lost is not None:
        (tmp_path / f"run_{lost}" / "train.py").unlink()
    model = ScriptedChatModel(responses=[reply])
    update = codegen(state, make_runtime(model)[0])
    return update, model.prompt()


def test_an_improve_reads_its_parents_code_not_the_latest_and_keeps_the_change_it_names(tmp_path: Path):
    coming = make_next_run(4, "improve", parent=1, reason="run 1 is the best so far")
    reply = text_reply(f"Change: hidden layer 64 -> 128 units\n\n```python\n{GOOD}\n```\n")

    update, prompt = codegen_in_tree(tmp_path, reply, coming)

    assert f'<parent_code run="1">\n{run_code(1)}' in prompt
    assert run_code(2) not in prompt and run_code(3) not in prompt  # the parent, not the run before
    assert "Write train.py for run 4 by making one focused change to run 1's code" in prompt and "`Change: <the one change>`" in prompt
    assert update["next_run"] == {**coming, "change": "hidden layer 64 -> 128 units"}  # the analyst reads it after the run
    assert (tmp_path / "run_4" / "train.py").read_text() == GOOD + "\n"


def test_a_debug_reads_the_failed_runs_code_and_names_no_change(tmp_path: Path):
    coming = make_next_run(4, "debug", parent=2, reason="run 2 failed")

    update, prompt = codegen_in_tree(tmp_path, text_reply(f"Change: a fix\n```python\n{GOOD}\n```"), coming)

    assert f'<parent_code run="2">\n{run_code(2)}' in prompt and run_code(3) not in prompt
    assert "Run 2 failed (its error and log tail are in <runs>). Write train.py for run 4: run 2's code" in prompt
    assert update["next_run"] == coming  # only an improve names its change


def test_a_later_draft_sees_no_code_and_is_asked_to_differ(tmp_path: Path):
    _, prompt = codegen_in_tree(tmp_path, code_reply(GOOD), make_next_run(4, "draft", parent=None))
    assert "<parent_code" not in prompt and not any(run_code(n) in prompt for n in (1, 2, 3))
    assert "Write train.py for run 4: a new solution from scratch (a draft)" in prompt and DRAFTS_DIFFER in prompt


def test_a_missing_parent_file_is_said_in_place_of_its_code(tmp_path: Path):
    _, prompt = codegen_in_tree(tmp_path, code_reply(GOOD), make_next_run(4, "improve", parent=3), lost=3)
    assert '<parent_code run="3">\n(run 3\'s train.py is missing)\n</parent_code>' in prompt


# the prompt's size


def huge_state(runs: int) -> dict:
    big = "y" * 100_000
    return {
        "experiment_dir": "unused",
        "idea": "IDEA " + big,
        "plan": "PLAN " + big,
        "code": "CODE " + big,
        "tasks": [make_task(i, title=f"task {i} " + "t" * 200, notes="n" * 300, runs=list(range(1, runs + 1))) for i in range(1, 201)],
        "findings_digest": findings_digest([f"## Run {n}\n\n" + "f" * 20_000 for n in range(1, runs + 1)], BUDGET["findings"]),
        "run_count": runs,
        "last_summary": "s" * 50_000,
        "previous_digest": "DIGEST " + big,
        "machine": "MACHINE " + big,
    }


PARENT = "PARENT-CODE " + "z" * 100_000
"""The parent's train.py, far past its budget."""


def test_prompt_is_bounded_whatever_the_state():
    prompt = codegen_prompt(huge_state(30), make_next_run(31), PARENT).text
    assert len(prompt) <= PROMPT_BOUND
    # Without feedback the unused feedback budget is no excuse either.
    assert len(prompt) <= PROMPT_BOUND - BUDGET["feedback"] - FEEDBACK_WRAPPER
    for part in ("IDEA", "PLAN", "PARENT-CODE", "DIGEST", "MACHINE", "## Run 30", "(29 earlier sections omitted)", "#1 [todo] task 1", "run 31"):
        assert part in prompt
    assert "CODE " + "y" not in prompt  # the state's code is the latest run's, not necessarily the parent's


def test_prompt_with_feedback_is_bounded():
    prompt = codegen_prompt(huge_state(30), make_next_run(31), PARENT, feedback="e" * 100_000).text
    assert len(prompt) <= PROMPT_BOUND
    assert "<feedback>" in prompt


def test_prompt_does_not_grow_with_the_runs():
    one, thirty = codegen_prompt(huge_state(1), make_next_run(2), PARENT).text, codegen_prompt(huge_state(30), make_next_run(31), PARENT).text
    assert len(one) <= PROMPT_BOUND and len(thirty) <= PROMPT_BOUND
    assert abs(len(thirty) - len(one)) <= OMITTED_HEADER


def test_the_stable_part_is_the_same_for_every_run_and_holds_the_brief():
    early, late = codegen_prompt(huge_state(1), make_next_run(2), PARENT), codegen_prompt(huge_state(30), make_next_run(31), PARENT, feedback="redo")
    assert early.stable == late.stable
    assert early.stable.startswith("<idea>\nIDEA ") and "<plan>\nPLAN " in early.stable and early.stable.rstrip().endswith("</machine>")
    assert late.recurring.startswith('\n<parent_code run="30">\nPARENT-CODE ') and late.recurring.endswith("</parent_code>\n")
    for volatile in ("<tasks>", "<key_findings>", "<runs>", "run 31", "redo"):
        assert volatile in late.volatile and volatile not in late.stable + late.recurring
    assert codegen_prompt(huge_state(1), make_next_run(1)).recurring == ""  # a draft has no parent


def test_a_graded_experiments_grading_block_is_volatile():
    before, after = (codegen_prompt(huge_state(2), make_next_run(3), PARENT, grading=said) for said in ("GRADED-NO-RUN-YET", "IT-REPORTS-ACCURACY"))
    assert before.stable == after.stable and before.recurring == after.recurring  # what the grader said changes nothing cached
    assert after.volatile.startswith("\n<grading>") and "IT-REPORTS-ACCURACY" in after.volatile


def test_the_first_prompt_is_a_draft_without_parent_code():
    prompt = codegen_prompt({"experiment_dir": "unused"}, make_next_run(1)).text
    assert "<parent_code" not in prompt
    assert "Write train.py for run 1: a new solution from scratch (a draft)" in prompt
    assert DRAFTS_DIFFER not in prompt  # no other draft yet to differ from
