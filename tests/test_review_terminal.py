"""--review from the terminal: main.py shows the code and reads the answer from standard input; ask_review with scripted answers."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from fake_llm import message_text
from rich.console import Console
from scripted import GOOD_TRAIN, REPO, ScriptedBrain, run_main, runner_env

from adapters import terminal
from adapters.terminal import ask_review


def _review(experiment: Path, env: dict[str, str], answers: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(REPO / "main.py"), "-d", str(experiment), "-r", "1", "--review"]
    return subprocess.run(args, env=env, input=answers, capture_output=True, text=True, timeout=120)


def _codegen_prompts(server) -> list[str]:
    return [message_text(r["messages"][1]) for r in server.requests if "You write train.py" in r["messages"][0]["content"]]


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


def test_review_says_why_it_asks_again_and_when_there_is_nothing_to_compare(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())  # the same train.py for both runs
    args = [sys.executable, str(REPO / "main.py"), "-d", str(experiment), "-r", "2", "--review"]
    result = subprocess.run(args, env=runner_env(server.base_url), input="x\nr\n\na\n\na\n", capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Answer a (approve), r (reject with a reason) or e (edit), not 'x'." in out
    assert "A rejection needs a reason: it tells the code model what to change. Answer again." in out
    assert "Answer a (approve), r (reject with a reason) or e (edit)." in out  # the empty answer
    assert "first run: nothing to compare" in out and "run_0/train.py" not in out
    assert "unchanged: the same code as run 1" in out
    assert (experiment / "run_2" / "output.log").is_file()


# --- ask_review alone, its answers scripted ---


def _ask(request: dict, answers: list[str]) -> tuple[dict, str]:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    replies = iter(answers)
    decision = ask_review(request, console, read=lambda prompt: next(replies))
    return decision, console.file.getvalue()


REQUEST = {"run": 2, "path": "/exp/run_2/train.py", "code": "print('accuracy=0.9')\n", "diff": "", "note": ""}


def test_ask_review_shows_the_note_when_there_is_no_diff():
    _, shown = _ask({**REQUEST, "run": 1, "note": "first run: nothing to compare"}, ["a"])
    assert "first run: nothing to compare" in shown

    _, shown = _ask({**REQUEST, "diff": "--- run_1/train.py\n+++ run_2/train.py\n@@ -1 +1 @@\n-a\n+b\n"}, ["a"])
    assert "+++ run_2/train.py" in shown and "nothing to compare" not in shown


def test_ask_review_says_what_it_takes_before_asking_again():
    decision, shown = _ask(REQUEST, ["maybe", "r", "  ", "r", "use a held-out split"])

    assert decision == {"action": "reject", "reason": "use a held-out split"}
    assert "Answer a (approve), r (reject with a reason) or e (edit), not 'maybe'." in shown
    assert "A rejection needs a reason" in shown


def test_ask_review_says_when_an_edit_changed_nothing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(terminal, "edit_in_editor", lambda code: code)
    decision, shown = _ask(REQUEST, ["e"])
    assert decision == {"action": "edit", "code": REQUEST["code"]}
    assert "unchanged: the edit changed nothing; the code shown runs." in shown

    monkeypatch.setattr(terminal, "edit_in_editor", lambda code: code + "print('more')\n")
    _, shown = _ask(REQUEST, ["e"])
    assert "unchanged" not in shown
