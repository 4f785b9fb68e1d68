"""codegen: the reply's code, the syntax retry, run_N/train.py, and a prompt that never grows with the runs."""

from __future__ import annotations

from pathlib import Path

from fakes import ScriptedChatModel, code_reply, events_of, make_experiment, make_run, make_runtime, make_task, text_reply
from langchain_core.messages import AIMessage

from nodes.codegen import codegen, codegen_prompt, compile_error, extract_python
from nodes.prompts import BUDGET, CODEGEN_USER
from nodes.records import findings_digest

GOOD = "import json\nprint('epoch=1 loss=0.5')\njson.dump({'accuracy': 0.9}, open('metrics.json', 'w'))"
BROKEN = "def train(:\n    pass"

# What may legitimately pass the sum of the budgets: findings_digest puts "(N earlier sections
# omitted)" above the sections it keeps, and a feedback part comes wrapped in <feedback> tags.
# (clip itself never exceeds its budget: its "…[n characters cut]…" marker is taken from it.)
OMITTED_HEADER = len("(9999 earlier sections omitted)\n\n")
FEEDBACK_WRAPPER = len("\n<feedback>\n\n</feedback>\n")
PROMPT_BOUND = sum(BUDGET.values()) + len(CODEGEN_USER) + OMITTED_HEADER + FEEDBACK_WRAPPER


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


# the node


def test_writes_train_py_for_the_next_run(tmp_path: Path):
    model = ScriptedChatModel(responses=[code_reply(GOOD)])
    runtime, events = make_runtime(model)
    root = make_experiment(tmp_path)

    update = codegen({"experiment_dir": root, "runs": [make_run(1), make_run(2)], "idea": "IDEA-TEXT"}, runtime)

    written = (tmp_path / "run_3" / "train.py").read_text()
    assert written == GOOD + "\n" == update["code"]
    assert not (tmp_path / "run_1").exists()
    assert update["usage"] == [{"stage": "codegen", "model": runtime.context.code_model, "input_tokens": 100, "output_tokens": 20, "cost_usd": None}]
    assert "run 3" in model.calls[0][0].content
    assert "IDEA-TEXT" in model.calls[0][1].content
    assert events_of(events, "stage") == [{"event": "stage", "stage": "codegen", "run": 3, "model": runtime.context.code_model}]
    assert events_of(events, "syntax_retry") == []


def test_first_run_goes_in_run_1(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[code_reply(GOOD)]))
    codegen({"experiment_dir": make_experiment(tmp_path)}, runtime)
    assert (tmp_path / "run_1" / "train.py").exists()


def test_syntax_error_gets_one_retry_with_the_error(tmp_path: Path):
    model = ScriptedChatModel(responses=[code_reply(BROKEN), code_reply(GOOD)])
    runtime, events = make_runtime(model)

    update = codegen({"experiment_dir": make_experiment(tmp_path), "runs": []}, runtime)

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

    update = codegen({"experiment_dir": make_experiment(tmp_path), "runs": []}, runtime)

    assert len(model.calls) == 2
    written = (tmp_path / "run_1" / "train.py").read_text()
    assert written == BROKEN + "\n" == update["code"]
    assert compile_error(written) is not None


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
        "runs": [make_run(n, error="e" * 50_000) for n in range(1, runs + 1)],
        "last_summary": "s" * 50_000,
        "previous_digest": "DIGEST " + big,
    }


def test_prompt_is_bounded_whatever_the_state():
    prompt = codegen_prompt(huge_state(30), 31)
    assert len(prompt) <= PROMPT_BOUND
    # Without feedback the unused feedback budget is no excuse either.
    assert len(prompt) <= PROMPT_BOUND - BUDGET["feedback"] - FEEDBACK_WRAPPER
    for part in ("IDEA", "PLAN", "CODE", "DIGEST", "## Run 30", "(29 earlier sections omitted)", "#1 [todo] task 1", "run 31"):
        assert part in prompt


def test_prompt_with_feedback_is_bounded():
    prompt = codegen_prompt(huge_state(30), 31, feedback="e" * 100_000)
    assert len(prompt) <= PROMPT_BOUND
    assert "<feedback>" in prompt


def test_prompt_does_not_grow_with_the_runs():
    one, thirty = codegen_prompt(huge_state(1), 2), codegen_prompt(huge_state(30), 31)
    assert len(one) <= PROMPT_BOUND and len(thirty) <= PROMPT_BOUND
    assert abs(len(thirty) - len(one)) <= OMITTED_HEADER


def test_first_prompt_says_there_is_no_previous_code():
    assert "(none: this is the first run)" in codegen_prompt({"experiment_dir": "unused"}, 1)
