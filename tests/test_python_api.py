"""run_experiment: what main.py does, from a notebook or another program, without the terminal."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_llm import message_text
from scripted import HOLDING_TRAIN, ScriptedBrain, wait_until

from adapters.files import ExperimentInputError
from runner import run_experiment
from settings import SettingsError, UsageError


def llm(server) -> dict:
    return {"llm_base_url": server.base_url, "llm_api_key": "test-key", "llm_max_retries": 0, "llm_retry_backoff_seconds": 0}


def test_run_then_continue_an_experiment(experiment: Path, llm_server):
    brain = ScriptedBrain()
    server = llm_server(brain)
    events: list[dict] = []

    final = run_experiment(experiment, max_runs=2, on_event=events.append, **llm(server))

    assert final["stop_reason"] == "max_runs" and [r["number"] for r in final["runs"]] == [1, 2]
    assert final["run_count"] == 2 and final["best_run"] == final["runs"][0]  # both reached 0.85: the first is the best
    assert [(r["operator"], r["parent"]) for r in final["runs"]] == [("draft", None), ("improve", 1)]
    assert final["report_path"] == str(experiment / "REPORT.md") and (experiment / "REPORT.md").is_file()
    assert (experiment / ".runner" / "checkpoints.sqlite").is_file()  # the same checkpoint main.py keeps
    assert [e["run"] for e in events if e["event"] == "run_done"] == [1, 2]
    assert [e["stage"] for e in events if e["event"] == "stage"][0] == "initialize"

    with pytest.raises(UsageError, match="already holds an experiment"):
        run_experiment(experiment, max_runs=2, **llm(server))

    more = run_experiment(experiment, max_runs=3, resume=True, **llm(server))
    assert [r["number"] for r in more["runs"]] == [1, 2, 3] and brain.stages.count("initialize") == 1
    assert (more["runs"][2]["operator"], more["runs"][2]["parent"]) == ("improve", 1)  # the best run, not the last
    assert run_experiment(experiment, resume=True, **llm(server))["runs"] == more["runs"]  # finished: nothing more to do


def test_review_is_answered_by_a_function(experiment: Path, llm_server):
    brain = ScriptedBrain()
    server = llm_server(brain)
    asked: list[dict] = []

    def review(request: dict) -> dict:
        asked.append(request)
        return {"action": "reject", "reason": "use a fixed seed"} if len(asked) == 1 else {"action": "approve"}

    final = run_experiment(experiment, max_runs=1, review=True, on_review=review, **llm(server))

    assert final["stop_reason"] == "max_runs" and len(final["runs"]) == 1
    assert [request["run"] for request in asked] == [1, 1] and brain.stages.count("codegen") == 2
    codegen_prompts = [message_text(r["messages"][1]) for r in server.requests if "You write train.py" in r["messages"][0]["content"]]
    assert "use a fixed seed" in codegen_prompts[1]


def test_review_without_an_answerer_is_bad_input(experiment: Path, monkeypatch):
    monkeypatch.setenv("REVIEW", "1")
    with pytest.raises(UsageError, match="pass on_review="):
        run_experiment(experiment, max_runs=1, llm_base_url="http://127.0.0.1:1/v1")
    assert not (experiment / ".runner" / "checkpoints.sqlite").exists()


def test_an_experiment_cut_short_returns_its_halt_and_resumes(experiment: Path, llm_server):
    brain = ScriptedBrain()
    failing = {"on": True}

    def responder(body):
        if failing["on"] and "You write train.py" in body["messages"][0]["content"]:
            return {"status": 402, "error": "Insufficient credits"}
        return brain(body)

    server = llm_server(responder)
    halted = run_experiment(experiment, max_runs=1, **llm(server))
    assert halted["stop_reason"] == "fatal" and "credits" in halted["stop_detail"] and halted["halted"]["stage"] == "codegen"

    failing["on"] = False
    final = run_experiment(experiment, resume=True, **llm(server))
    assert final["stop_reason"] == "max_runs" and len(final["runs"]) == 1 and not final.get("halted")


def test_bad_input_raises_before_anything_is_spent(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("LLM_API_KEY", raising=False)
    with pytest.raises(UsageError, match="does not exist"):
        run_experiment(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SettingsError, match="OPENROUTER_API_KEY is not set"):
        run_experiment(tmp_path / "empty")
    with pytest.raises(ExperimentInputError, match="IDEA.md not found"):
        run_experiment(tmp_path / "empty", llm_base_url="http://127.0.0.1:1/v1")
    assert list((tmp_path / "empty").iterdir()) == []


def test_ctrl_c_stops_the_running_script_and_returns_an_interrupted_experiment(experiment: Path, llm_server, hold: Path, monkeypatch):
    monkeypatch.setenv("HOLD_FILE", str(hold))  # train.py waits while it exists; SANDBOX_ENV passes the name on
    server = llm_server(ScriptedBrain(codes=[HOLDING_TRAIN]))
    log = experiment / "run_1" / "output.log"

    def press_ctrl_c_once_run_1_holds():
        wait_until(lambda: log.exists() and "starting" in log.read_text())
        os.kill(os.getpid(), signal.SIGINT)  # what a notebook's interrupt button sends

    presser = threading.Thread(target=press_ctrl_c_once_run_1_holds)
    presser.start()
    started = time.monotonic()
    stopped = run_experiment(experiment, max_runs=1, sandbox_env=("HOLD_FILE",), **llm(server))
    presser.join()

    assert time.monotonic() - started < 30 and hold.exists()  # the script was killed, not waited for
    assert stopped["stop_reason"] == "interrupted" and stopped["halted"]["stage"] == "wait"
    assert "**interrupted** during wait" in (experiment / "REPORT.md").read_text()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back

    hold.unlink()
    final = run_experiment(experiment, resume=True, sandbox_env=("HOLD_FILE",), **llm(server))  # not cancelled at once
    assert final["stop_reason"] == "max_runs" and final["runs"][0]["metrics"] == {"accuracy": 0.75}


def test_a_bad_review_answer_is_refused_before_it_is_saved(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    with pytest.raises(UsageError, match="a rejection needs a reason"):
        run_experiment(experiment, max_runs=1, review=True, on_review=lambda request: {"action": "reject"}, **llm(server))

    final = run_experiment(experiment, resume=True, review=True, on_review=lambda request: {"action": "approve"}, **llm(server))
    assert final["stop_reason"] == "max_runs" and len(final["runs"]) == 1


def test_one_experiments_env_file_does_not_leak_into_the_next(tmp_path: Path, llm_server, monkeypatch):
    monkeypatch.delenv("CODE_MODEL", raising=False)
    server = llm_server(ScriptedBrain())
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "IDEA.md").write_text("# Digits\n\ngoal: accuracy >= 0.9\n")
    (first / ".env").write_text("CODE_MODEL=first/coder\n")

    run_experiment(first, max_runs=1, **llm(server))
    run_experiment(second, max_runs=1, **llm(server))

    models = [r["model"] for r in server.requests if "You write train.py" in r["messages"][0]["content"]]
    assert models == ["first/coder", "anthropic/claude-sonnet-4.6"]
    assert "CODE_MODEL" not in os.environ


def test_a_resume_with_another_training_python_tells_the_code_model_about_it(experiment: Path, llm_server, tmp_path: Path):
    server = llm_server(ScriptedBrain())
    assert run_experiment(experiment, max_runs=1, sandbox="none", **llm(server))["stop_reason"] == "max_runs"
    venv = tmp_path / "train-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)

    final = run_experiment(experiment, max_runs=2, resume=True, sandbox="none", train_python=str(venv / "bin" / "python"), **llm(server))

    assert final["machine"].startswith(f"Python {platform.python_version()} at {venv / 'bin' / 'python'}")
    codegen = [r for r in server.requests if "You write train.py" in r["messages"][0]["content"]]
    assert f"at {sys.executable}" in message_text(codegen[0]["messages"][1])
    assert f"at {venv / 'bin' / 'python'}" in message_text(codegen[1]["messages"][1])
