"""--review from the terminal: main.py shows the code and reads the answer from standard input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripted import GOOD_TRAIN, REPO, ScriptedBrain, run_main, runner_env


def _review(experiment: Path, env: dict[str, str], answers: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(REPO / "main.py"), "-d", str(experiment), "-r", "1", "--review"]
    return subprocess.run(args, env=env, input=answers, capture_output=True, text=True, timeout=120)


def _codegen_prompts(server) -> list[str]:
    return [r["messages"][1]["content"] for r in server.requests if "You write train.py" in r["messages"][0]["content"]]


def test_reject_with_a_reason_then_approve(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    result = _review(experiment, runner_env(server.base_url), "r\nUse a held-out split\na\n")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Review: run 1" in result.stdout and "json.dump" in result.stdout  # the code was shown
    prompts = _codegen_prompts(server)
    assert len(prompts) == 2 and "Use a held-out split" in prompts[1]
    assert (experiment / "run_1" / "output.log").is_file()


def test_edit_in_editor_runs_the_edited_file(experiment: Path, llm_server, tmp_path: Path):
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\nopen(sys.argv[1], 'a').write('print(\"edited-by-reviewer\")\\n')\n")
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url, EDITOR=f"{sys.executable} {editor}")
    result = _review(experiment, env, "e\n")

    assert result.returncode == 0, result.stdout + result.stderr
    assert (experiment / "run_1" / "train.py").read_text() == GOOD_TRAIN + 'print("edited-by-reviewer")\n'
    assert "edited-by-reviewer" in (experiment / "run_1" / "output.log").read_text()


def test_review_without_anyone_to_answer_stops_and_can_be_resumed(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url)
    result = _review(experiment, env, "")

    assert result.returncode == 2
    assert "review needs an answer" in result.stderr and "Traceback" not in result.stderr
    assert not (experiment / "run_1" / "output.log").exists()

    resumed = run_main(["-d", str(experiment), "--resume"], env)  # review off now: the pending version is approved
    assert resumed.returncode == 0, resumed.stderr
    assert (experiment / "run_1" / "output.log").is_file()
    assert len(_codegen_prompts(server)) == 1
