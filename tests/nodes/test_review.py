"""Review before running: the interrupt, resumed programmatically with Command(resume=...) as Studio or the SDK would."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import ScriptedChatModel, analysis_reply, code_reply, make_experiment, make_runtime, make_settings, plan_reply, text_reply
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from graph import build_graph
from graph.experiment import after_review
from nodes.review import ReviewError, code_diff, diff_note, parse_decision, review

FIRST = 'print("accuracy=0.5")\n'
SECOND = 'print("accuracy=0.9")\n'


def test_review_off_is_a_pass_through(tmp_path: Path):
    runtime, events = make_runtime(review=False)
    assert review({"experiment_dir": make_experiment(tmp_path / "exp"), "code": FIRST, "runs": []}, runtime) == {"review_feedback": ""}
    assert events == []


def test_parse_decision():
    assert parse_decision("approve") == {"action": "approve"}
    assert parse_decision({"action": "edit", "code": "x = 1"})["code"] == "x = 1"
    for bad in ("maybe", {"action": "reject"}, {"action": "reject", "reason": "  "}, {"action": "edit"}, 3):
        with pytest.raises(ReviewError):
            parse_decision(bad)


def test_code_diff_names_both_runs():
    diff = code_diff(FIRST, SECOND, 2)
    assert "--- run_1/train.py" in diff and "+++ run_2/train.py" in diff and '-print("accuracy=0.5")' in diff


def test_routing():
    assert after_review({"experiment_dir": "x", "review_feedback": "too slow"}) == "codegen"
    assert after_review({"experiment_dir": "x", "review_feedback": ""}) == "execute"


def _paused_graph(tmp_path: Path, replies: list):
    model = ScriptedChatModel(responses=[plan_reply(), *replies])
    app = build_graph().compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "review"}}
    context = make_settings(model, review=True)
    root = make_experiment(tmp_path / "exp")
    app.invoke({"experiment_dir": root, "max_runs": 1}, config, context=context)
    return app, config, context, model, Path(root)


def test_reject_sends_the_reason_to_codegen_then_approve_runs_the_new_version(tmp_path: Path):
    app, config, context, model, root = _paused_graph(tmp_path, [code_reply(FIRST), code_reply(SECOND), analysis_reply(), text_reply("# Report")])
    [pending] = app.get_state(config).interrupts
    assert pending.value["run"] == 1 and pending.value["code"] == FIRST and pending.value["kind"] == "review"
    assert not (root / "run_1" / "output.log").exists()  # nothing ran before the answer

    app.invoke(Command(resume={"action": "reject", "reason": "print the metric with two decimals"}), config, context=context)
    assert "print the metric with two decimals" in model.prompt(-1)
    [pending] = app.get_state(config).interrupts
    assert pending.value["code"] == SECOND

    result = app.invoke(Command(resume={"action": "approve"}), config, context=context)
    assert result["stop_reason"] == "goal_met"  # the approved version printed accuracy=0.9, the plan's goal
    assert (root / "run_1" / "output.log").read_text() == "accuracy=0.9\n"


def test_edit_runs_the_edited_code_and_keeps_state_and_file_in_step(tmp_path: Path):
    app, config, context, _, root = _paused_graph(tmp_path, [code_reply(FIRST), analysis_reply(), text_reply("# Report")])
    edited = 'print("edited accuracy=0.7")'
    app.invoke(Command(resume={"action": "edit", "code": edited}), config, context=context)
    assert (root / "run_1" / "train.py").read_text() == edited + "\n"
    assert app.get_state(config).values["code"] == edited + "\n"
    assert (root / "run_1" / "output.log").read_text() == "edited accuracy=0.7\n"


def test_diff_note_says_why_there_is_no_diff():
    assert diff_note(None, FIRST, 1, None) == "first run: nothing to compare"
    assert diff_note(None, FIRST, 3, None) == "a draft, a new solution: nothing to compare"
    assert diff_note(None, FIRST, 3, 2) == "run_2/train.py is missing: nothing to compare"
    assert diff_note(FIRST, FIRST, 5, 2) == "unchanged: the same code as run 2"
    assert diff_note(FIRST, SECOND, 2, 1) == ""


def test_the_first_run_is_shown_without_a_diff_and_an_unchanged_one_says_so(tmp_path: Path):
    app, config, context, _, root = _paused_graph(tmp_path, [code_reply(FIRST), analysis_reply(), code_reply(FIRST), analysis_reply(), text_reply("# Report")])
    [pending] = app.get_state(config).interrupts
    assert pending.value["diff"] == "" and pending.value["note"] == "first run: nothing to compare"

    app.update_state(config, {"max_runs": 2})
    app.invoke(Command(resume={"action": "approve"}), config, context=context)
    [pending] = app.get_state(config).interrupts
    assert pending.value["run"] == 2
    assert pending.value["diff"] == "" and pending.value["note"] == "unchanged: the same code as run 1"

    app.invoke(Command(resume="approve"), config, context=context)
    assert (root / "run_2" / "output.log").read_text() == "accuracy=0.5\n"
