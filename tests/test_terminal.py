"""What the person watching sees, end to end: plain lines, --quiet, the live view in a real terminal, status, and the runner lock."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scripted import GOOD_TRAIN, HOLDING_TRAIN, REPO, ScriptedBrain, run_main, runner_env, start_until_run, wait_until

ESCAPE = "\x1b"
LIMIT = "the limit set by -r/MAX_RUNS"
SLOW_TRAIN = GOOD_TRAIN + "import time\nfor step in range(6):\n    print(f'step={step} val_accuracy={0.5 + step / 20:.2f}', flush=True)\n    time.sleep(0.3)\n"


def colour_env(base_url: str, **extra: str) -> dict[str, str]:
    """The runner's environment with colours allowed, as a user's terminal has it."""
    env = runner_env(base_url, **extra)
    env.pop("NO_COLOR")
    return env


def test_plain_lines_when_stdout_is_not_a_terminal(experiment: Path, llm_server):
    result = run_main(["-d", str(experiment), "-r", "1"], colour_env(llm_server(ScriptedBrain()).base_url))

    assert result.returncode == 0, result.stderr
    assert ESCAPE not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"experiment {experiment} · sandbox: ") and "codegen=anthropic/claude-sonnet-4.6" in lines[0]
    for stage in ("▶ initialize", "✓ initialize", "▶ run 1 · codegen", "▶ run 1 · execute", "■ run 1 ok", "▶ run 1 · analyze", "▶ report", "✓ report"):
        assert any(line.startswith(stage) or line.strip().startswith(stage) for line in lines), stage
    # Each run is named with how it came about: the search's choice, the code written for it, its result.
    assert "▶ run 1 · summarize · draft · the first run" in lines
    assert any(line.startswith("▶ run 1 · codegen · draft (") for line in lines)
    assert any(re.fullmatch(r"■ run 1 ok in [\d.]+ s · draft · metrics: .*accuracy=0\.85.*", line) for line in lines), result.stdout
    assert "goal: accuracy >= 0.9" in result.stdout
    assert lines[-1] == f"Stopped: max_runs (all 1 runs done, {LIMIT}) after 1 runs · best: run 1 (accuracy=0.85) · report: {experiment / 'REPORT.md'}"


def test_quiet_prints_only_the_outcome(experiment: Path, llm_server):
    result = run_main(["-d", str(experiment), "-r", "1", "--quiet"], runner_env(llm_server(ScriptedBrain()).base_url))
    assert result.returncode == 0, result.stderr
    outcome = f"Stopped: max_runs (all 1 runs done, {LIMIT}) after 1 runs · best: run 1 (accuracy=0.85) · report: {experiment / 'REPORT.md'}"
    assert result.stdout.splitlines() == [outcome]
    assert result.stderr == ""


def in_a_terminal(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    """Run main.py with a pseudo-terminal as its stdout (util-linux `script`); its exit code and everything it drew."""
    typescript = tmp_path / "typescript"
    command = " ".join([sys.executable, str(REPO / "main.py"), *args])
    env = {**env, "COLUMNS": "100", "LINES": "60", "TERM": "xterm-256color"}
    result = subprocess.run(["script", "-qfec", command, str(typescript)], env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, typescript.read_text(encoding="utf-8", errors="replace")


def frames(drawn: str) -> list[str]:
    """The live view's successive frames, without control codes."""
    return [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frame) for frame in re.split(r"\x1b\[\d*A", drawn)]


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pseudo-terminal")
def test_the_live_view_in_a_terminal(experiment: Path, llm_server, tmp_path: Path):
    code, drawn = in_a_terminal(["-d", str(experiment), "-r", "2"], colour_env(llm_server(ScriptedBrain(codes=[SLOW_TRAIN])).base_url), tmp_path)

    assert code == 0, drawn[-2000:]
    shown = frames(drawn)
    assert len(shown) > 5  # redrawn in place, not printed line after line
    during = next(frame for frame in shown if "step=3" in frame)
    assert "╭─ experiment" in during and "goal     accuracy >= 0.9" in during and "sandbox" in during
    assert "run 1 · wait" in during and "run 1 · output.log (last 15 lines)" in during, during
    latest_step = max(int(step) for step in re.findall(r"step=(\d)", during))  # lines may arrive several at a time
    assert re.search(rf"latest metrics: .*val_accuracy={0.5 + latest_step / 20:.2g}\b", during), during
    assert "runs 0/2" in during and "initialize      1" in during  # tokens per stage so far
    last = shown[-1]
    assert re.search(r"1 ★ +draft +ok", last) and re.search(r"2 +improve ← 1 +ok", last), last
    assert "runs 2/2" in last and re.search(r"total +6 ", last)
    assert f"Stopped: max_runs (all 2 runs done, {LIMIT}) after 2 runs · best: run 1 (accuracy=0.85) · report: {experiment / 'REPORT.md'}" in last
    assert drawn.rstrip().endswith("\x1b[?25h") or "\x1b[?25h" in drawn[-400:]  # the cursor is given back


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pseudo-terminal")
def test_plain_in_a_terminal_with_no_color(experiment: Path, llm_server, tmp_path: Path):
    code, drawn = in_a_terminal(["-d", str(experiment), "-r", "1", "--plain"], runner_env(llm_server(ScriptedBrain()).base_url), tmp_path)
    assert code == 0, drawn[-2000:]
    assert ESCAPE not in drawn and "▶ run 1 · execute" in drawn and "Stopped: max_runs" in drawn


def status(experiment: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_main(["status", "-d", str(experiment)], env)


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pseudo-terminal")
def test_the_live_view_shows_each_run_in_flight_on_a_line_of_its_own(experiment: Path, llm_server, tmp_path: Path):
    server = llm_server(ScriptedBrain(codes=[SLOW_TRAIN]))
    args = ["-d", str(experiment), "-r", "2", "--workers", "2", "--gpus", "0,1", "--sandbox", "none"]
    code, drawn = in_a_terminal(args, colour_env(server.base_url), tmp_path)

    assert code == 0, drawn[-2000:]
    both = [frame for frame in frames(drawn) if re.search(r"^  run 1  draft  GPU \d", frame, re.M) and re.search(r"^▸ run 2  draft  GPU \d", frame, re.M)]
    assert both, "no frame showed both runs in flight"
    during = both[-1]
    gpus = re.findall(r"^[ ▸] run [12]  draft  GPU (\d)", during, re.M)
    assert sorted(gpus) == ["0", "1"]  # each on its own GPU
    assert "run 2 · output.log (last 15 lines)" in during  # the tail follows the newest run
    assert "Tab: next run" in during  # the keys, named while two runs are in flight
    assert "wait" in during and "for the first of runs 1, 2 to end" in during


def test_status_lock_and_viewer_while_a_runner_works(experiment: Path, llm_server, hold: Path):
    env = runner_env(llm_server(ScriptedBrain(codes=[HOLDING_TRAIN, GOOD_TRAIN])).base_url, HOLD_FILE=str(hold))
    runner = start_until_run(experiment, env, max_runs=2, run=1)

    wait_until(lambda: "epoch 1/4" in (experiment / "run_1" / "output.log").read_text())
    busy = status(experiment, env)
    assert busy.returncode == 0, busy.stderr
    assert re.search(r"^  run 1 · draft · CPU · \d+:\d\d · epoch 1/4 \(25%\)$", busy.stdout, re.M), busy.stdout  # the run in flight
    assert f"{experiment}: running (process {runner.pid}, since " in busy.stdout
    assert "goal: accuracy >= 0.9 · runs: 0 of 2 · 1 in flight" in busy.stdout and "To go on" not in busy.stdout

    second = run_main(["-d", str(experiment), "--resume"], env)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"error: {experiment} is already being run by process {runner.pid}, since {busy.stdout.split('since ')[1].split(')')[0]}: "
        f"watch it with `python main.py status -d {experiment}`"
    )
    wide = {**os.environ, "COLUMNS": "160"}  # the runs table's status cell on one line
    viewer = subprocess.run([sys.executable, str(REPO / "view_tasks.py"), "-d", str(experiment)], env=wide, capture_output=True, text=True, timeout=60)
    assert viewer.returncode == 0 and "1 running" in viewer.stdout and re.search(r"│ running\b", viewer.stdout), viewer.stdout

    hold.unlink()
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err  # neither status, the refused runner nor the viewer disturbed it
    done = status(experiment, env)
    assert f"{experiment}: finished" in done.stdout
    assert re.search(r"1 +draft +ok .*accuracy=0\.75", done.stdout) and re.search(r"2 ★ +improve ← 1 +ok .*accuracy=0\.85", done.stdout)
    assert "best: run 2 ← 1, draft" in done.stdout
    assert "run 3 ·" not in done.stdout, "a finished experiment has no coming run"
    assert f"Stopped: max_runs (all 2 runs done, {LIMIT}) after 2 runs · best: run 2 (accuracy=0.85)" in done.stdout
    assert f"To go on with more runs: `python main.py -d {experiment} --resume --max-runs M` with M above 2" in done.stdout


def test_status_after_a_kill_names_the_next_step_and_the_resume_command(experiment: Path, llm_server, hold: Path):
    env = runner_env(llm_server(ScriptedBrain(codes=[HOLDING_TRAIN])).base_url, HOLD_FILE=str(hold))
    runner = start_until_run(experiment, env, max_runs=1, run=1)
    runner.kill()
    runner.communicate()
    wait_until(lambda: "running" not in status(experiment, env).stdout)  # the kernel let go of the lock with the process

    killed = status(experiment, env)
    assert f"{experiment}: stopped between steps (next: wait)" in killed.stdout
    assert f"To go on: `python main.py -d {experiment} --resume`" in killed.stdout


def test_status_of_an_experiment_not_started_and_of_no_folder(experiment: Path, tmp_path: Path):
    env = runner_env("http://127.0.0.1:1/v1")
    fresh = status(experiment, env)
    assert fresh.returncode == 0 and "not started yet" in fresh.stdout
    missing = status(tmp_path / "nowhere", env)
    assert missing.returncode == 2 and missing.stderr.startswith("error: experiment directory") and "Traceback" not in missing.stderr
