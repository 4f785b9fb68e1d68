"""Every stop reason end to end: main.py against the local LLM server, with the exit code and REPORT.md each implies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripted import GOOD_TRAIN, ScriptedBrain, run_main, runner_env


def metric_train(accuracy: float) -> str:
    return GOOD_TRAIN.replace('"accuracy": 0.85', f'"accuracy": {accuracy}')


CRASH = "import sys\nprint('loading data', flush=True)\nraise RuntimeError('dataset shard 7 is corrupt')\n"


def _stop(experiment: Path, llm_server, args: list[str], brain: ScriptedBrain, **env: str):
    server = llm_server(brain)
    result = run_main(["-d", str(experiment), *args], runner_env(server.base_url, **env))
    runs = sorted(p.name for p in experiment.glob("run_*"))
    report = (experiment / "REPORT.md").read_text() if (experiment / "REPORT.md").exists() else ""
    assert "Traceback" not in result.stderr  # (train.py's own tracebacks are echoed on stdout)
    return result, runs, report, server


def test_goal_met_on_run_two_of_five(experiment: Path, llm_server):
    brain = ScriptedBrain(codes=[metric_train(0.5), metric_train(0.93), metric_train(0.99)])
    result, runs, report, _ = _stop(experiment, llm_server, ["-r", "5"], brain)
    assert result.returncode == 0, result.stderr
    assert runs == ["run_1", "run_2"]
    assert "Stopped: goal_met" in result.stdout and "**goal_met**" in report


def test_the_analyst_alone_cannot_stop_a_numeric_goal(experiment: Path, llm_server):
    result, runs, report, _ = _stop(experiment, llm_server, ["-r", "2"], ScriptedBrain(goal_met_on=1))  # accuracy stays 0.85
    assert result.returncode == 0 and runs == ["run_1", "run_2"] and "**max_runs**" in report


@pytest.mark.parametrize(
    ("search", "tree"),
    [
        # The tree gives up the failed line after 3 identical failures, drafts anew, and stops when that fails the same way.
        ("tree", [("draft", None), ("debug", 1), ("debug", 2), ("draft", None)]),
        ("linear", [("draft", None), ("debug", 1), ("debug", 2)]),  # one line: stuck at the third identical failure
    ],
)
def test_an_identical_crash_every_run_is_stuck(search, tree, experiment: Path, llm_server):
    result, runs, report, _ = _stop(experiment, llm_server, ["-r", "6"], ScriptedBrain(codes=[CRASH]), SEARCH=search)
    assert result.returncode == 1
    assert runs == [f"run_{n}" for n in range(1, len(tree) + 1)]
    records = [json.loads((experiment / run / "result.json").read_text()) for run in runs]
    assert [(r["operator"], r["parent"]) for r in records] == tree and {r["status"] for r in records} == {"failed"}
    assert "Stopped: stuck" in result.stdout and "**stuck**" in report and "dataset shard" in report


def test_patience(experiment: Path, llm_server):
    brain = ScriptedBrain(codes=[metric_train(0.6), metric_train(0.7), metric_train(0.65), metric_train(0.7)])
    result, runs, report, _ = _stop(experiment, llm_server, ["-r", "8", "--patience", "2"], brain)
    assert result.returncode == 0
    assert runs == ["run_1", "run_2", "run_3", "run_4"]
    assert "**plateau**" in report


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--max-tokens", "800"], {}, "MAX_TOKENS=800"),
        (["--max-cost", "0.05"], {"FAKE_COST": "1"}, "MAX_COST_USD=0.05"),
        ([], {"MAX_COST_USD": "0.05", "MODEL_PRICES": "anthropic/claude-sonnet-4.6=100/100,openai/gpt-4o-mini=100/100"}, "MODEL_PRICES"),
        (["--max-hours", "0.0002"], {}, "MAX_HOURS=0.0002"),
    ],
)
def test_each_budget_stops_before_the_next_run_and_still_reports(args, env, words, experiment: Path, llm_server):
    brain = ScriptedBrain(codes=[GOOD_TRAIN + "import time\ntime.sleep(0.5)\n"], cost_per_call=0.01 if env.pop("FAKE_COST", None) else None)
    result, runs, report, _ = _stop(experiment, llm_server, ["-r", "6", *args], brain, **env)
    assert result.returncode == 0, result.stderr
    assert 1 <= len(runs) < 6
    assert "**budget**" in report and words in report
    assert "Stopped: budget" in result.stdout


def test_a_budget_reached_holds_on_resume_with_more_runs(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url)
    first = run_main(["-d", str(experiment), "-r", "6", "--max-tokens", "800"], env)
    assert first.returncode == 0 and "Stopped: budget" in first.stdout
    runs = sorted(p.name for p in experiment.glob("run_*"))

    again = run_main(["-d", str(experiment), "--resume", "-r", "8", "--max-tokens", "800"], env)

    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in experiment.glob("run_*")) == runs  # no run started past the budget
    assert "Stopped: budget" in again.stdout and "**budget**" in (experiment / "REPORT.md").read_text()


def test_resume_under_a_lower_run_limit_starts_no_new_run(experiment: Path, llm_server):
    brain = ScriptedBrain()
    failing = {"on": True}

    def responder(body):
        if failing["on"] and brain.stages.count("codegen") == 1 and "You write train.py" in body["messages"][0]["content"]:
            return {"status": 402, "error": "Insufficient credits"}
        return brain(body)

    env = runner_env(llm_server(responder).base_url)
    first = run_main(["-d", str(experiment), "-r", "3"], env)
    assert first.returncode == 1 and "error (fatal)" in first.stderr  # codegen of run 2 was cut short
    failing["on"] = False

    resumed = run_main(["-d", str(experiment), "--resume", "-r", "1"], env)

    assert resumed.returncode == 0, resumed.stderr
    assert "Stopped: max_runs" in resumed.stdout and not (experiment / "run_2" / "output.log").exists()
    assert brain.stages.count("codegen") == 1 and "**max_runs**" in (experiment / "REPORT.md").read_text()


def test_a_goal_line_that_does_not_parse_is_bad_input(experiment: Path, llm_server):
    (experiment / "IDEA.md").write_text("# Digits\n\ngoal: as accurate as possible\n")
    result, runs, _, server = _stop(experiment, llm_server, ["-r", "1"], ScriptedBrain())
    assert result.returncode == 2 and "goal: <metric> <op> <number>" in result.stderr
    assert server.requests == [] and runs == []


def test_an_unknown_model_fails_preflight_before_anything_is_spent(experiment: Path, llm_server):
    offered = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4.6", "anthropic/claude-opus-4.1"]
    result, runs, _, server = _stop(experiment, llm_server, ["-r", "1"], ScriptedBrain(), CODE_MODEL="anthropic/claude-sonet-4.6")
    assert result.returncode == 0  # this server lists no models: preflight skips quietly
    server_with_list = llm_server(ScriptedBrain(), models=offered)
    other = experiment.parent / "other"
    other.mkdir()
    (other / "IDEA.md").write_text((experiment / "IDEA.md").read_text())
    refused = run_main(["-d", str(other), "-r", "1"], runner_env(server_with_list.base_url, CODE_MODEL="anthropic/claude-sonet-4.6"))
    assert refused.returncode == 1
    assert "CODE_MODEL" in refused.stderr and "anthropic/claude-sonnet-4.6" in refused.stderr and "run the same command again" in refused.stderr
    assert server_with_list.requests == [] and "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("status", "reason", "words"),
    [(401, "fatal", "LLM_API_KEY"), (402, "fatal", "credits"), (404, "fatal", "SUMMARIZE_MODEL"), (500, "llm_unavailable", "try later")],
)
def test_llm_failures_during_a_run_exit_1_and_resume(status, reason, words, experiment: Path, llm_server):
    brain = ScriptedBrain()
    failing = {"on": True}

    def responder(body):
        if failing["on"] and body.get("tools") and body["tools"][0]["function"]["name"] == "RunAnalysis":
            return {"status": status, "error": "No such model" if status == 404 else "upstream trouble"}
        return brain(body)

    server = llm_server(responder)
    env = runner_env(server.base_url)
    result = run_main(["-d", str(experiment), "-r", "1"], env)
    assert result.returncode == 1
    assert f"error ({reason})" in result.stderr and words in result.stderr and "--resume" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    report = (experiment / "REPORT.md").read_text()
    assert report.startswith("# Report (unfinished)") and f"**{reason}** during analyze" in report and words in report

    failing["on"] = False
    resumed = run_main(["-d", str(experiment), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert brain.stages.count("codegen") == 1 and brain.stages.count("analyze") == 1
    report = (experiment / "REPORT.md").read_text()
    assert "unfinished" not in report and "Stopped because: **max_runs**" in report


def test_a_report_model_failure_still_leaves_the_record_and_resume_writes_the_report(experiment: Path, llm_server):
    brain = ScriptedBrain()
    failing = {"on": True}

    def responder(body):
        if failing["on"] and "REPORT.md" in body["messages"][0]["content"]:
            return {"status": 404, "error": "No such model"}
        return brain(body)

    env = runner_env(llm_server(responder).base_url)
    result = run_main(["-d", str(experiment), "-r", "1"], env)
    assert result.returncode == 1 and "error (fatal)" in result.stderr and "REPORT_MODEL" in result.stderr
    report = (experiment / "REPORT.md").read_text()
    assert report.startswith("# Report (unfinished)") and "**fatal** during report" in report
    assert "had ended before that: max_runs" in report and "| 1 ★ | — | draft | ok |" in report

    failing["on"] = False
    resumed = run_main(["-d", str(experiment), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert "The baseline reached the goal." in (experiment / "REPORT.md").read_text()
