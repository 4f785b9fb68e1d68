"""The tree search end to end: drafts, debugging a crashed run, improving the best, abandoning a line, linear search, resume.

Each test runs the real graph against the local OpenAI-compatible server, with a scripted train.py per run.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from fake_llm import message_text
from scripted import HOLDING_TRAIN, ScriptedBrain, run_main, runner_env, start_until_run

from runner import run_experiment


def scores(accuracy: float) -> str:
    """A train.py that reports `accuracy` and prints its progress."""
    return f'import json\nprint("epoch=1 accuracy={accuracy}")\njson.dump({{"accuracy": {accuracy}}}, open("metrics.json", "w"))\n'


def crashes(message: str) -> str:
    return f'print("starting")\nraise ValueError("{message}")\n'


def llm(server, **settings) -> dict:
    return {"llm_base_url": server.base_url, "llm_api_key": "test-key", "llm_max_retries": 0, "llm_retry_backoff_seconds": 0, "sandbox": "none", **settings}


def tree(experiment: Path) -> list[tuple[int, str, int | None, str]]:
    """(number, operator, parent, status) of every run, from run_N/result.json as a reader of the folder sees them."""
    found = []
    for number in range(1, 100):
        path = experiment / f"run_{number}" / "result.json"
        if not path.is_file():
            break
        result = json.loads(path.read_text())
        found.append((result["number"], result["operator"], result["parent"], result["status"]))
    return found


def codegen_prompts(server) -> list[str]:
    return [message_text(request["messages"][1]) for request in server.requests if "You write train.py" in request["messages"][0]["content"]]


def test_three_drafts_a_crashed_one_debugged_then_the_best_improved_not_the_last(experiment: Path, llm_server):
    codes = [scores(0.8), crashes("bad shape in draft two"), scores(0.7), scores(0.75), scores(0.85)]
    server = llm_server(ScriptedBrain(codes=codes))

    final = run_experiment(experiment, max_runs=5, **llm(server, drafts=3))

    assert tree(experiment) == [
        (1, "draft", None, "ok"),
        (2, "draft", None, "failed"),
        (3, "draft", None, "ok"),
        (4, "debug", 2, "ok"),  # the crashed draft is fixed
        (5, "improve", 1, "ok"),  # the best run (0.8), not the last (4) nor the latest draft (3)
    ]
    assert [(run["operator"], run["parent"]) for run in final["runs"]] == [("draft", None)] * 3 + [("debug", 2), ("improve", 1)]
    assert final["run_count"] == 5 and final["best_run"]["number"] == 5
    prompts = codegen_prompts(server)
    assert "<parent_code" not in prompts[0] and "<parent_code" not in prompts[2]  # drafts start afresh
    assert "other drafts" in prompts[2] and "run 1: ok" in prompts[2]  # ...knowing the other drafts, so they differ
    assert '<parent_code run="2">' in prompts[3] and "bad shape in draft two" in prompts[3] and "failed" in prompts[3]
    assert '<parent_code run="1">' in prompts[4] and "accuracy=0.8" in prompts[4].split("<parent_code")[1]
    assert "Change:" in prompts[4]  # the one change is named in advance
    findings = (experiment / "KEY_FINDINGS.md").read_text()
    assert "## Run 4 (ok, debug of run 2)" in findings and "## Run 1 (ok, draft)" in findings


def test_a_debug_line_failing_debug_depth_times_is_abandoned(experiment: Path, llm_server):
    codes = [scores(0.8), crashes("first"), crashes("second"), crashes("third"), scores(0.82)]
    server = llm_server(ScriptedBrain(codes=codes))

    final = run_experiment(experiment, max_runs=5, **llm(server, debug_depth=2))

    assert tree(experiment) == [
        (1, "draft", None, "ok"),
        (2, "improve", 1, "failed"),
        (3, "debug", 2, "failed"),
        (4, "debug", 3, "failed"),  # the second fix failed too: DEBUG_DEPTH=2 gives the line up
        (5, "improve", 1, "ok"),
    ]
    assert final["stop_reason"] == "max_runs"


def test_the_same_failure_abandons_the_line_then_stops_as_stuck_when_it_spans_lines(experiment: Path, llm_server):
    codes = [scores(0.8), *[crashes("the same bug")] * 4]
    server = llm_server(ScriptedBrain(codes=codes))

    final = run_experiment(experiment, max_runs=8, **llm(server, max_consecutive_failures=3))

    assert tree(experiment) == [
        (1, "draft", None, "ok"),
        (2, "improve", 1, "failed"),
        (3, "debug", 2, "failed"),
        (4, "debug", 3, "failed"),  # three times the same failure in one line: the line is abandoned...
        (5, "improve", 1, "failed"),  # ...and another line fails the same way: stuck
    ]
    assert final["stop_reason"] == "stuck" and "MAX_CONSECUTIVE_FAILURES=3" in final["stop_detail"]


def test_linear_search_reproduces_the_loop_before_the_tree(experiment: Path, llm_server):
    codes = [scores(0.88), scores(0.6), crashes("oops"), scores(0.7)]
    server = llm_server(ScriptedBrain(codes=codes))

    run_experiment(experiment, max_runs=4, **llm(server, search="linear"))

    assert tree(experiment) == [(1, "draft", None, "ok"), (2, "improve", 1, "ok"), (3, "improve", 2, "failed"), (4, "debug", 3, "ok")]
    assert '<parent_code run="2">' in codegen_prompts(server)[2]  # the run before, though run 1 was better


def test_sigkill_in_the_middle_of_the_tree_then_resume_makes_the_same_choices(tmp_path: Path, llm_server, experiment: Path, hold: Path):
    codes = [scores(0.8), scores(0.88), HOLDING_TRAIN, scores(0.5), crashes("late"), scores(0.6)]
    args = ["--drafts", "2", "--sandbox", "none"]

    # Uninterrupted, in a second folder with the same idea.
    calm = tmp_path / "calm"
    calm.mkdir()
    (calm / "IDEA.md").write_text((experiment / "IDEA.md").read_text())
    (calm / "data").mkdir()
    server = llm_server(ScriptedBrain(codes=codes))
    done = run_main(["-d", str(calm), "-r", "6", *args], runner_env(server.base_url, HOLD_FILE=str(calm / "data" / "absent")))
    assert done.returncode == 0, done.stderr

    # Killed while run 3 (an improve of the best, run 2) trains, then resumed.
    server = llm_server(ScriptedBrain(codes=codes))
    env = runner_env(server.base_url, HOLD_FILE=str(hold), KEEP_CHECKPOINTS="4")  # and pruned to the latest 4 after every run
    runner = start_until_run(experiment, env, max_runs=6, run=3, extra=args)
    runner.kill()
    runner.wait()
    hold.unlink()
    resumed = run_main(["-d", str(experiment), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr

    assert tree(experiment) == tree(calm)
    assert [(number, operator, parent) for number, operator, parent, _ in tree(experiment)] == [
        (1, "draft", None),
        (2, "draft", None),
        (3, "improve", 2),  # the best draft (0.88); run 3 itself reports 0.75
        (4, "improve", 2),
        (5, "improve", 2),
        (6, "debug", 5),
    ]
    assert checkpoints(calm) > 20 and checkpoints(experiment) <= 4 + 2  # the report's steps come after the last pruning


def checkpoints(experiment: Path) -> int:
    connection = sqlite3.connect(experiment / ".runner" / "checkpoints.sqlite")
    try:
        return connection.execute("select count(*) from checkpoints").fetchone()[0]
    finally:
        connection.close()


def test_an_experiment_saved_before_the_tree_search_resumes_from_its_runs(experiment: Path, llm_server):
    from langgraph.checkpoint.sqlite import SqliteSaver

    server = llm_server(ScriptedBrain(codes=[scores(0.8), scores(0.7), scores(0.85)]))
    run_experiment(experiment, max_runs=2, **llm(server))
    # Make the latest checkpoint what the runner saved before: every record in a `runs` channel, no run_count.
    with SqliteSaver.from_conn_string(str(experiment / ".runner" / "checkpoints.sqlite")) as saver:
        config = {"configurable": {"thread_id": "experiment", "checkpoint_ns": ""}}
        saved = saver.get_tuple(config)
        values = saved.checkpoint["channel_values"]
        records = [json.loads((experiment / f"run_{n}" / "result.json").read_text()) for n in (1, 2)]
        for name in ("run_count", "latest_run", "best_run", "next_run"):
            values.pop(name, None)
        values["runs"] = [{key: value for key, value in record.items() if key not in ("operator", "parent")} for record in records]
        saver.put(saved.config, saved.checkpoint, saved.metadata, {})
    first_log = (experiment / "run_1" / "output.log").stat().st_mtime_ns
    asked = len(codegen_prompts(server))

    final = run_experiment(experiment, max_runs=3, resume=True, **llm(server))

    assert len(codegen_prompts(server)) == asked + 1  # run 3 only: runs 1 and 2 are not run again
    assert final["run_count"] == 3 and (experiment / "run_1" / "output.log").stat().st_mtime_ns == first_log
    assert [(run["number"], run["operator"], run["parent"]) for run in final["runs"]][-1] == (3, "improve", 1)  # the best, 0.8
