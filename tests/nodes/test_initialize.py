"""initialize: IDEA.md → PLAN.md, tasks.json, KEY_FINDINGS.md, with one structured call and one repair retry."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pytest
from fakes import ScriptedChatModel, events_of, make_experiment, make_runtime, plan_reply, tool_reply

from adapters.files import ExperimentInputError
from adapters.llm import LLMError
from nodes.initialize import initialize

IDEA = "Classify iris flowers with a small MLP; reach accuracy >= 0.9."


def test_writes_plan_tasks_and_findings(tmp_path: Path):
    model = ScriptedChatModel(responses=[plan_reply(goal="  accuracy\n >= 0.9 ", tasks=("Baseline MLP", " Tune width "))])
    runtime, events = make_runtime(model)
    root = make_experiment(tmp_path / "exp", IDEA)

    update = initialize({"experiment_dir": root}, runtime)

    plan = (tmp_path / "exp" / "PLAN.md").read_text()
    assert "**Goal** (proposed by the planner): `accuracy >= 0.9`" in plan
    assert "Train a small model." in plan
    tasks = json.loads((tmp_path / "exp" / "tasks.json").read_text())["tasks"]
    assert [(t["id"], t["title"], t["status"], t["runs"]) for t in tasks] == [(1, "Baseline MLP", "todo", []), (2, "Tune width", "todo", [])]
    assert update["tasks"] == tasks
    assert update["tasks_created"] == 2  # later tasks are numbered after every task ever created
    assert (tmp_path / "exp" / "KEY_FINDINGS.md").read_text().startswith("# Key findings")
    assert update["goal"] == "accuracy >= 0.9"
    assert update["idea"] == IDEA
    assert update["plan"] == plan.rstrip("\n")
    assert update["stop_reason"] is None
    assert IDEA in model.prompt()
    assert events_of(events, "stage") == [{"event": "stage", "stage": "initialize", "model": runtime.context.report_model}]


def test_returns_usage_of_the_call(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[plan_reply()]))
    update = initialize({"experiment_dir": make_experiment(tmp_path)}, runtime)
    assert update["usage"] == [{"stage": "initialize", "model": runtime.context.report_model, "input_tokens": 100, "output_tokens": 20, "cost_usd": None}]


def test_max_runs_from_state_wins_over_settings(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[plan_reply()]), max_runs=7)
    assert initialize({"experiment_dir": make_experiment(tmp_path), "max_runs": 3}, runtime)["max_runs"] == 3


def test_max_runs_falls_back_to_settings(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[plan_reply()]), max_runs=7)
    assert initialize({"experiment_dir": make_experiment(tmp_path)}, runtime)["max_runs"] == 7


def test_malformed_reply_is_repaired_once(tmp_path: Path):
    malformed = tool_reply("ExperimentPlan", {"goal": "accuracy >= 0.9"})  # no plan, no tasks
    model = ScriptedChatModel(responses=[malformed, plan_reply()])
    runtime, _ = make_runtime(model)

    update = initialize({"experiment_dir": make_experiment(tmp_path)}, runtime)

    assert len(update["usage"]) == 2
    assert len(model.calls) == 2
    repair = model.calls[1][-1].content
    assert "could not be used" in repair and "ExperimentPlan" in repair
    assert (tmp_path / "PLAN.md").exists()


def test_two_malformed_replies_raise_and_write_nothing(tmp_path: Path):
    malformed = tool_reply("ExperimentPlan", {"goal": "accuracy >= 0.9"})
    runtime, _ = make_runtime(ScriptedChatModel(responses=[malformed, malformed]))

    with pytest.raises(LLMError, match="ExperimentPlan"):
        initialize({"experiment_dir": make_experiment(tmp_path)}, runtime)

    assert not (tmp_path / "PLAN.md").exists()
    assert not (tmp_path / "tasks.json").exists()


def test_missing_idea_fails_before_any_llm_call(tmp_path: Path):
    model = ScriptedChatModel(responses=[plan_reply()])
    runtime, _ = make_runtime(model)
    with pytest.raises(ExperimentInputError, match="IDEA.md"):
        initialize({"experiment_dir": str(tmp_path)}, runtime)
    assert model.calls == []


def test_a_goal_line_in_the_idea_wins_over_the_planner(tmp_path: Path):
    model = ScriptedChatModel(responses=[plan_reply(goal="f1 >= 0.5")])
    runtime, _ = make_runtime(model)
    root = make_experiment(tmp_path, idea="Classify digits.\n\nGoal: test_accuracy >= 0.99\n")
    update = initialize({"experiment_dir": root}, runtime)
    assert update["goal"] == "test_accuracy >= 0.99"
    assert "**Goal** (from IDEA.md): `test_accuracy >= 0.99`" in (tmp_path / "PLAN.md").read_text()


def test_the_machine_train_py_will_run_on_is_asked_once_of_the_training_interpreter(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[plan_reply()]), train_python=sys.executable)
    update = initialize({"experiment_dir": make_experiment(tmp_path / "exp", IDEA)}, runtime)
    assert update["machine"].startswith(f"Python {platform.python_version()} at {sys.executable}")
    assert "scikit-learn" in update["machine"] and "CPU cores" in update["machine"]
