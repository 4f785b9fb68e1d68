"""analyze: the analyst's structured reply applied to tasks.json and KEY_FINDINGS.md, then the stop decision."""

from __future__ import annotations

import json
from pathlib import Path

from fakes import ScriptedChatModel, analysis_reply, events_of, make_experiment, make_next_run, make_run, make_runtime, make_task, seed_runs

from adapters.files import ExperimentFiles
from nodes.analyze import analyze, apply_analysis, findings_section
from nodes.prompts import ANALYZE_SYSTEM
from state import NewTask, RunAnalysis, TaskUpdate

TASKS = [make_task(1, "Baseline", notes="old notes", runs=[1]), make_task(2, "Tune"), make_task(3, "Augment", status="dropped")]


def analysis(**fields) -> RunAnalysis:
    return RunAnalysis(summary=fields.pop("summary", "It ran."), goal_achieved=fields.pop("goal_achieved", False), **fields)


# apply_analysis


def test_updates_status_and_notes_and_records_the_run():
    result = apply_analysis(TASKS, analysis(task_updates=[TaskUpdate(id=2, status="in_progress", notes=" wider helps ")]), run=2)
    assert result[1] == {"id": 2, "title": "Tune", "status": "in_progress", "notes": "wider helps", "runs": [2]}
    assert result[0] == TASKS[0] and result[2] == TASKS[2]


def test_run_number_is_appended_once():
    result = apply_analysis(TASKS, analysis(task_updates=[TaskUpdate(id=1, status="done")]), run=1)
    assert result[0]["runs"] == [1]
    result = apply_analysis(result, analysis(task_updates=[TaskUpdate(id=1, status="done")]), run=2)
    assert result[0]["runs"] == [1, 2]


def test_empty_notes_keep_the_old_ones():
    result = apply_analysis(TASKS, analysis(task_updates=[TaskUpdate(id=1, status="done", notes="  ")]), run=2)
    assert result[0]["notes"] == "old notes" and result[0]["status"] == "done"


def test_new_tasks_get_the_next_ids():
    tasks = [make_task(1), make_task(5)]
    result = apply_analysis(tasks, analysis(new_tasks=[NewTask(title=" Try dropout ", notes="overfits"), NewTask(title="Try Adam")]), run=1)
    assert [(t["id"], t["title"], t["status"], t["notes"], t["runs"]) for t in result[2:]] == [
        (6, "Try dropout", "todo", "overfits", []),
        (7, "Try Adam", "todo", "", []),
    ]


def test_new_tasks_are_numbered_after_every_task_ever_created():
    # The state keeps the working tasks only: an archived task may hold a higher id than any of them.
    result = apply_analysis([make_task(2)], analysis(new_tasks=[NewTask(title="a")]), run=9, created=7)
    assert [(t["id"], t["title"]) for t in result] == [(2, "task 2"), (8, "a")]


def test_new_tasks_on_an_empty_list_start_at_1():
    assert [t["id"] for t in apply_analysis([], analysis(new_tasks=[NewTask(title="a"), NewTask(title="b")]), run=1)] == [1, 2]


def test_unknown_ids_are_ignored():
    assert apply_analysis(TASKS, analysis(task_updates=[TaskUpdate(id=99, status="done")]), run=1) == TASKS


def test_input_tasks_are_not_mutated():
    before = json.loads(json.dumps(TASKS))
    apply_analysis(TASKS, analysis(task_updates=[TaskUpdate(id=2, status="done", notes="x")]), run=4)
    assert TASKS == before


# findings_section


def test_findings_section():
    section = findings_section(
        make_run(2, status="failed"), analysis(summary="Crashed. ", findings=["a", " ", "b "], goal_achieved=True, goal_evidence="acc=1")
    )
    assert section == "## Run 2 (failed, improve of run 1)\n\nCrashed.\n\n- a\n- b\n\nGoal achieved: acc=1"


def test_findings_section_says_what_the_run_changed_in_one_line():
    section = findings_section(make_run(3), analysis(summary="Better.", change=" width 64 ->\n 128 ", findings=["acc 0.9"]))
    assert section == "## Run 3 (ok, improve of run 2)\n\nChanged: width 64 -> 128\n\nBetter.\n\n- acc 0.9"


def test_findings_section_says_how_the_run_came_about():
    assert findings_section(make_run(1), analysis()).startswith("## Run 1 (ok, draft)\n")
    assert findings_section(make_run(5, operator="draft", parent=None), analysis()).startswith("## Run 5 (ok, draft)\n")
    assert findings_section(make_run(6, status="timeout", operator="debug", parent=4), analysis()).startswith("## Run 6 (timeout, debug of run 4)\n")
    assert findings_section(make_run(7, parent=2), analysis()).startswith("## Run 7 (ok, improve of run 2)\n")


# the node


def state_after_run(root: str, runs: int = 1, max_runs: int = 5, accuracy: float = 0.5) -> dict:
    """The state after `runs` runs (each a linear child of the one before; the latest reached `accuracy`), their records in the folder."""
    records = [make_run(n, metrics={"accuracy": 0.5}) for n in range(1, runs)] + [make_run(runs, metrics={"accuracy": accuracy})]
    return {
        "experiment_dir": root,
        "goal": "accuracy >= 0.9",
        "tasks": [make_task(1, "Baseline"), make_task(2, "Tune")],
        **seed_runs(root, records),
        "latest_run": records[-1],
        "last_summary": f"RUN-{runs}-SUMMARY",
        "code": "CODE-OF-THE-RUN",
        "max_runs": max_runs,
        "usage": [],
    }


def test_node_updates_files_and_state(tmp_path: Path):
    reply = analysis_reply(
        summary="Baseline worked.",
        findings=["accuracy 0.5 with logistic regression"],
        task_updates=[{"id": 1, "status": "done", "notes": "0.5"}, {"id": 42, "status": "done"}],
        new_tasks=[{"title": "Try an MLP"}],
        change="logistic regression -> MLP",
    )
    model = ScriptedChatModel(responses=[reply])
    runtime, events = make_runtime(model)
    root = make_experiment(tmp_path)
    ExperimentFiles(root).write_findings(["## Run 0 (ok)\n\nAn earlier section.", "## Run 2 (ok)\n\nFrom an analysis cut short."])

    update = analyze(state_after_run(root, runs=2), runtime)

    assert [(t["id"], t["status"], t["runs"]) for t in update["tasks"]] == [(1, "done", [2]), (2, "todo", []), (3, "todo", [])]
    assert update["tasks_created"] == 3
    assert json.loads((tmp_path / "tasks.json").read_text())["tasks"] == update["tasks"]
    assert update["best_run"] == make_run(1, metrics={"accuracy": 0.5})  # both reached 0.5: the first to reach it is the best
    findings = (tmp_path / "KEY_FINDINGS.md").read_text()
    assert "An earlier section." in findings
    section = "## Run 2 (ok, improve of run 1)\n\nChanged: logistic regression -> MLP\n\nBaseline worked.\n\n- accuracy 0.5 with logistic regression"
    assert section in findings
    assert findings.index("## Run 0") < findings.index("## Run 2")
    assert "From an analysis cut short" not in findings  # run 2 analysed again: its section replaced, not doubled
    assert update["findings_digest"] == f"## Run 0 (ok)\n\nAn earlier section.\n\n{section}"  # what prompts read; the file keeps all
    assert "changes" not in update  # what the run changed lives in KEY_FINDINGS.md, where the report reads it
    assert update["goal_met"] is False
    assert update["stop_reason"] is None
    assert [u["stage"] for u in update["usage"]] == ["analyze"]
    assert update["usage"][0]["model"] == runtime.context.summarize_model
    prompt = model.prompt()
    assert "RUN-2-SUMMARY" in prompt and "CODE-OF-THE-RUN" in prompt and "accuracy >= 0.9" in prompt and "#1 [todo] Baseline" in prompt
    assert "<origin>\nRun 2 came about as: improve of run 1\n</origin>" in prompt
    assert events_of(events, "stage") == [{"event": "stage", "stage": "analyze", "run": 2, "model": runtime.context.summarize_model}]
    assert events_of(events, "analysis") == [{"event": "analysis", "run": 2, "summary": "Baseline worked.", "goal_met": False}]


def test_node_stops_when_the_metric_meets_the_goal(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[analysis_reply(goal_achieved=True, goal_evidence="accuracy=0.95")]))
    update = analyze(state_after_run(make_experiment(tmp_path), runs=1, max_runs=5, accuracy=0.95), runtime)
    assert update["goal_met"] is True and update["stop_reason"] == "goal_met"
    assert "Goal achieved: accuracy=0.95" in (tmp_path / "KEY_FINDINGS.md").read_text()


def test_the_analyst_cannot_declare_a_numeric_goal_met_that_the_metric_denies(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[analysis_reply(goal_achieved=True, goal_evidence="looks great")]))
    update = analyze(state_after_run(make_experiment(tmp_path), runs=1, max_runs=5), runtime)  # accuracy 0.5 < 0.9
    assert update["goal_met"] is False and update["stop_reason"] is None


def test_without_a_numeric_goal_the_analyst_decides(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[analysis_reply(goal_achieved=True, goal_evidence="the plots look right")]))
    state = {**state_after_run(make_experiment(tmp_path), runs=1, max_runs=5), "goal": "a convincing qualitative result"}
    update = analyze(state, runtime)
    assert update["goal_met"] is True and update["stop_reason"] == "goal_met"


def test_a_reply_without_a_change_records_an_empty_one(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[analysis_reply(summary="Ran.")]))
    update = analyze(state_after_run(make_experiment(tmp_path), runs=1), runtime)
    assert "Changed:" not in update["findings_digest"] and "Changed:" not in (tmp_path / "KEY_FINDINGS.md").read_text()


def test_the_prompt_puts_the_idea_and_plan_first_and_the_runs_facts_last(tmp_path: Path):
    model = ScriptedChatModel(responses=[analysis_reply()])
    runtime, _ = make_runtime(model)
    state = {**state_after_run(make_experiment(tmp_path), runs=2), "idea": "THE-IDEA", "plan": "THE-PLAN"}
    analyze(state, runtime)
    system, prompt = (message.content for message in model.calls[-1])
    assert system == ANALYZE_SYSTEM  # the same for every run
    assert prompt.startswith("<idea>\nTHE-IDEA\n</idea>\n\n<plan>\nTHE-PLAN\n</plan>\n\n<goal>\naccuracy >= 0.9\n</goal>\n")
    assert prompt.index("</goal>") < prompt.index("<origin>") < prompt.index("RUN-2-SUMMARY")


def test_the_structured_output_method_is_learned_once_and_then_reused(tmp_path: Path):
    model = ScriptedChatModel(responses=[analysis_reply(), analysis_reply()])
    runtime, events = make_runtime(model)
    root = make_experiment(tmp_path)
    name = runtime.context.summarize_model

    first = analyze({**state_after_run(root, runs=1), "structured_output": {"other/model": "prompt"}}, runtime)
    assert first["structured_output"] == {"other/model": "prompt", name: "function_calling"}
    again = analyze({**state_after_run(root, runs=2), "structured_output": first["structured_output"]}, runtime)

    assert again["structured_output"] == first["structured_output"]
    assert events_of(events, "structured_output") == [{"event": "structured_output", "model": name, "method": "function_calling", "refused": []}]


def test_the_prompt_asks_what_the_run_changed(tmp_path: Path):
    model = ScriptedChatModel(responses=[analysis_reply()])
    runtime, _ = make_runtime(model)
    analyze(state_after_run(make_experiment(tmp_path), runs=1), runtime)
    assert "change: what this run changed compared with the run it builds on (its parent)" in model.prompt()


def test_the_prompt_gives_the_change_an_improve_named_in_advance(tmp_path: Path):
    model = ScriptedChatModel(responses=[analysis_reply()])
    runtime, _ = make_runtime(model)
    coming = {**make_next_run(2), "change": "wider hidden layer"}
    analyze({**state_after_run(make_experiment(tmp_path), runs=2), "next_run": coming}, runtime)
    assert "Run 2 came about as: improve of run 1; the change it named in advance: wider hidden layer" in model.prompt()


def test_the_best_run_is_read_from_every_runs_record(tmp_path: Path):
    root = make_experiment(tmp_path)
    runs = [make_run(1, metrics={"accuracy": 0.7}), make_run(2, metrics={"accuracy": 0.8}, parent=1), make_run(3, metrics={"accuracy": 0.6}, parent=1)]
    state = {**state_after_run(root, runs=3), **seed_runs(root, runs), "latest_run": runs[-1]}
    update = analyze(state, make_runtime(ScriptedChatModel(responses=[analysis_reply()]))[0])
    assert update["best_run"] == runs[1]
    assert "## Run 3 (ok, improve of run 1)" in (tmp_path / "KEY_FINDINGS.md").read_text()


def test_the_state_keeps_the_working_tasks_and_tasks_json_every_task(tmp_path: Path):
    root = make_experiment(tmp_path)
    archived = [make_task(n, status="done", runs=[n]) for n in range(1, 6)]  # finished long ago: in tasks.json only
    working = [make_task(6, status="done", runs=[6]), make_task(7, status="dropped", runs=[7]), make_task(8, status="done", runs=[8]), make_task(9)]
    cut_short = make_task(10, "from an analysis cut short")
    ExperimentFiles(root).write_tasks([*archived, *working, cut_short])
    reply = analysis_reply(task_updates=[{"id": 9, "status": "done"}], new_tasks=[{"title": "Try an MLP"}])
    state = {**state_after_run(root, runs=9), "tasks": working, "tasks_created": 9}

    update = analyze(state, make_runtime(ScriptedChatModel(responses=[reply]))[0])

    assert [(t["id"], t["status"]) for t in update["tasks"]] == [(7, "dropped"), (8, "done"), (9, "done"), (10, "todo")]  # open + 3 latest finished
    assert update["tasks"][-1]["title"] == "Try an MLP" and update["tasks_created"] == 10
    saved = json.loads((tmp_path / "tasks.json").read_text())["tasks"]
    assert [(t["id"], t["title"], t["status"]) for t in saved] == [
        *[(t["id"], t["title"], t["status"]) for t in archived],
        (6, "task 6", "done"),
        (7, "task 7", "dropped"),
        (8, "task 8", "done"),
        (9, "task 9", "done"),
        (10, "Try an MLP", "todo"),
    ]


def test_node_stops_at_max_runs(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[analysis_reply()]))
    update = analyze(state_after_run(make_experiment(tmp_path), runs=3, max_runs=3), runtime)
    assert update["stop_reason"] == "max_runs"


def test_node_goes_on_below_max_runs(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[analysis_reply()]))
    assert analyze(state_after_run(make_experiment(tmp_path), runs=2, max_runs=3), runtime)["stop_reason"] is None
