"""main.py as a user runs it: a subprocess against a local OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_llm import message_text
from scripted import GOOD_TRAIN, HOLDING_TRAIN, ScriptedBrain, read_tasks, run_main, runner_env, start_main, start_until_run, wait_until

COUNTING_TRAIN = GOOD_TRAIN + 'open("attempts.txt", "a").write("attempt\\n")\n'


def test_end_to_end_writes_the_seed_layout(experiment: Path, llm_server):
    brain = ScriptedBrain()
    server = llm_server(brain)
    result = run_main(["-d", str(experiment), "--max-runs", "2"], runner_env(server.base_url))

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert brain.stages == ["initialize", "codegen", "analyze", "codegen", "analyze", "report"]
    run_files = [f"run_{n}/{file}" for n in (1, 2) for file in ("train.py", "output.log", "result.json")]
    for name in ("PLAN.md", "tasks.json", "KEY_FINDINGS.md", "REPORT.md", *run_files):
        assert (experiment / name).is_file(), name
    assert "epoch=3" in (experiment / "run_2" / "output.log").read_text()
    assert "accuracy >= 0.9" in (experiment / "PLAN.md").read_text()
    assert read_tasks(experiment)[0] == {"id": 1, "title": "Baseline logistic regression", "status": "done", "notes": "worked on in run 2", "runs": [1, 2]}
    findings = (experiment / "KEY_FINDINGS.md").read_text()
    assert "## Run 1 (ok, draft)" in findings and "## Run 2 (ok, improve of run 1)" in findings
    report = (experiment / "REPORT.md").read_text()
    assert "The baseline reached the goal." in report and "**max_runs**" in report and "accuracy=0.85" in report
    assert (experiment / ".runner" / "checkpoints.sqlite").is_file()
    # The stream reached the terminal: each stage, the child's output, the outcome.
    stages = ("initialize", "codegen", "execute", "analyze", "report")
    for text in (*stages, "│ epoch=1", "Stopped: max_runs (all 2 runs done, the limit set by -r/MAX_RUNS) after 2 runs"):
        assert text in result.stdout

    # The second codegen request (an improve of run 1) carried the first run's code and its mechanical summary.
    codegen_requests = [r for r in server.requests if "You write train.py" in r["messages"][0]["content"]]
    second = message_text(codegen_requests[1]["messages"][1])
    assert "Run 1: ok (exit 0)" in second and "accuracy=0.85" in second and 'print("done")' in second
    assert '<parent_code run="1">' in second and "one focused change to run 1's code" in second
    # The real client sent the key, and the child never saw it.
    assert "test-key" not in (experiment / "run_1" / "output.log").read_text()


def test_goal_met_stops_early(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain(codes=[GOOD_TRAIN.replace('"accuracy": 0.85', '"accuracy": 0.95')]))
    result = run_main(["-d", str(experiment), "-r", "3"], runner_env(server.base_url))
    assert result.returncode == 0, result.stderr
    assert not (experiment / "run_2").exists()
    assert "**goal_met**" in (experiment / "REPORT.md").read_text()


def test_sigkill_during_run_two_then_resume_does_not_rerun_run_one(experiment: Path, llm_server, hold: Path):
    server = llm_server(ScriptedBrain(codes=[COUNTING_TRAIN, HOLDING_TRAIN]))
    env = runner_env(server.base_url, HOLD_FILE=str(hold))
    runner = start_until_run(experiment, env, max_runs=2, run=2)
    runner.kill()
    runner.wait()
    requests_before = len(server.requests)

    hold.unlink()
    result = run_main(["-d", str(experiment), "--resume"], env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (experiment / "run_1" / "attempts.txt").read_text() == "attempt\n"  # run 1 ran once
    assert (experiment / "run_2" / "attempts.txt").read_text() == "attempt\nattempt\n"  # run 2's execute ran again
    assert (experiment / "run_2" / "output.interrupted-1.log").read_text().startswith("run two starting")
    assert "accuracy=0.75" in (experiment / "run_2" / "output.log").read_text()
    # Only what was unfinished asked the LLM again: run 2's analysis and the report, no new codegen.
    later = [r for r in server.requests[requests_before:]]
    assert not any("You write train.py" in r["messages"][0]["content"] for r in later)
    assert len(later) == 2
    assert "Stopped: max_runs (all 2 runs done, the limit set by -r/MAX_RUNS) after 2 runs" in result.stdout


def test_sigkill_leaves_no_child_behind(experiment: Path, llm_server, hold: Path):
    server = llm_server(ScriptedBrain(codes=[HOLDING_TRAIN.replace("run two", "run one")]))
    runner = start_until_run(experiment, runner_env(server.base_url, HOLD_FILE=str(hold)), max_runs=1, run=1)
    child = json.loads((experiment / ".runner" / "child-1.json").read_text())["pid"]
    runner.kill()
    runner.communicate()
    wait_until(lambda: not _alive(child), timeout=5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_restart_without_resume_is_refused_and_nothing_is_touched(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url)
    assert run_main(["-d", str(experiment), "-r", "1"], env).returncode == 0
    lock = experiment / ".runner" / "lock"  # the runner's own bookkeeping: who holds the experiment now
    before = {p: p.read_bytes() for p in experiment.rglob("*") if p.is_file() and p != lock}
    requests = len(server.requests)

    again = run_main(["-d", str(experiment)], env)
    assert again.returncode == 2
    assert "--resume" in again.stderr and "Traceback" not in again.stderr
    assert {p: p.read_bytes() for p in experiment.rglob("*") if p.is_file() and p != lock} == before
    assert len(server.requests) == requests


def test_resume_a_finished_experiment_with_a_higher_limit(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url)
    assert run_main(["-d", str(experiment), "-r", "1"], env).returncode == 0

    same = run_main(["-d", str(experiment), "--resume"], env)
    assert same.returncode == 0 and "already finished" in same.stdout and not (experiment / "run_2").exists()

    more = run_main(["-d", str(experiment), "--resume", "--max-runs", "2"], env)
    assert more.returncode == 0, more.stderr
    assert (experiment / "run_2" / "output.log").is_file() and not (experiment / "run_3").exists()
    assert "after 2 of 2 runs" in (experiment / "REPORT.md").read_text()


def test_resume_after_the_folder_moved(experiment: Path, llm_server, tmp_path: Path):
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url)
    assert run_main(["-d", str(experiment), "-r", "1"], env).returncode == 0
    moved = experiment.rename(tmp_path / "moved")
    result = run_main(["-d", str(moved), "--resume", "-r", "2"], env)
    assert result.returncode == 0, result.stderr
    assert (moved / "run_2" / "output.log").is_file() and not experiment.exists()


@pytest.mark.parametrize(
    ("args", "env_extra", "message"),
    [
        (["-d", "{missing}"], {}, "does not exist"),
        (["-d", "{empty_idea}"], {}, "is empty"),
        (["-d", "{no_idea}"], {}, "IDEA.md not found"),
        (["-d", "{exp}", "--max-runs", "-1"], {}, "--max-runs must be at least 1"),
        (["-d", "{exp}", "--max-runs", "abc"], {}, "--max-runs must be a whole number"),
        (["-d", "{exp}"], {"MAX_RUNS": "abc"}, "MAX_RUNS must be a whole number"),
        (["-d", "{exp}", "--resume"], {}, "nothing to resume"),
        (["-d", "{exp}", "--bogus"], {}, "unrecognized arguments"),
        (["-d", "{exp}", "--reusme"], {}, "unrecognized arguments: --reusme (did you mean --resume?)"),
        (["-d", "{exp}", "--max-run", "3"], {}, "(did you mean --max-runs?)"),  # never taken as an abbreviation
        (["-d", "{exp}", "--fresh", "--resume"], {}, "--fresh starts anew and --resume goes on"),
        (["-d", "{exp}"], {"TRAIN_PYTHON": "{missing}/bin/python"}, "TRAIN_PYTHON"),
        (["-d", "{exp}", "--python", "{exp}/IDEA.md"], {}, "--python"),
        (["-d", "{exp}"], {"LLM_BASE_URL": "", "LLM_API_KEY": ""}, "OPENROUTER_API_KEY is not set"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_llm_call(args, env_extra, message, experiment: Path, llm_server, tmp_path: Path):
    server = llm_server(ScriptedBrain())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "IDEA.md").write_text("  \n")
    (tmp_path / "none").mkdir()
    places = {"missing": tmp_path / "nope", "empty_idea": tmp_path / "empty", "no_idea": tmp_path / "none", "exp": experiment}
    args = [a.format(**{k: str(v) for k, v in places.items()}) for a in args]
    env = runner_env(server.base_url, **{k: v.format(**{k: str(v) for k, v in places.items()}) for k, v in env_extra.items()})
    if "LLM_BASE_URL" in env_extra:
        del env["LLM_BASE_URL"]

    result = run_main(args, env, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert server.requests == []
    assert not (experiment / "PLAN.md").exists()


def test_dotenv_from_the_experiment_folder_and_flags_win(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url)
    del env["LLM_BASE_URL"]
    (experiment / ".env").write_text(f"LLM_BASE_URL={server.base_url}\nMAX_RUNS=3\nCODE_MODEL=my/coder\n")
    result = run_main(["-d", str(experiment), "-r", "1"], env)
    assert result.returncode == 0, result.stderr
    assert not (experiment / "run_2").exists()  # the flag beat MAX_RUNS=3
    assert {r["model"] for r in server.requests if "You write train.py" in r["messages"][0]["content"]} == {"my/coder"}


def test_llm_error_is_one_line_exit_1_and_resumable(experiment: Path, llm_server):
    brain = ScriptedBrain()
    failing = {"on": True}

    def responder(body):
        if failing["on"] and "REPORT.md" in body["messages"][0]["content"]:
            return {"status": 404, "error": "No such model"}
        if failing["on"] and "RunAnalysis" in [t["function"]["name"] for t in body.get("tools") or []]:
            return {"status": 401, "error": "bad key"}
        return brain(body)

    server = llm_server(responder)
    env = runner_env(server.base_url)
    result = run_main(["-d", str(experiment), "-r", "1"], env)
    assert result.returncode == 1
    assert "401" in result.stderr and "LLM_API_KEY" in result.stderr and "--resume" in result.stderr
    assert "Traceback" not in result.stderr
    assert (experiment / "run_1" / "output.log").is_file()

    failing["on"] = False
    codegen_calls = brain.stages.count("codegen")
    resumed = run_main(["-d", str(experiment), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert brain.stages.count("codegen") == codegen_calls  # run 1 was not written or run again
    assert "Run 1" in (experiment / "KEY_FINDINGS.md").read_text()
    assert os.path.getsize(experiment / "REPORT.md") > 0


def test_json_schema_structured_output(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    result = run_main(["-d", str(experiment), "-r", "1"], runner_env(server.base_url, STRUCTURED_OUTPUT="json_schema"))
    assert result.returncode == 0, result.stderr
    assert all("tools" not in r for r in server.requests)
    assert any(r.get("response_format", {}).get("type") == "json_schema" for r in server.requests)
    assert read_tasks(experiment)[0]["status"] == "in_progress"


def test_malformed_structured_reply_gets_one_repair_then_fails_cleanly(experiment: Path, llm_server):
    brain = ScriptedBrain()
    analysis_calls = []

    def responder(body):
        if "RunAnalysis" in [t["function"]["name"] for t in body.get("tools") or []]:
            analysis_calls.append(body)
            return {"tool_call": {"name": "RunAnalysis", "arguments": {"summary": 42, "goal_achieved": "perhaps"}}}
        return brain(body)

    server = llm_server(responder)
    result = run_main(["-d", str(experiment), "-r", "1"], runner_env(server.base_url))
    assert result.returncode == 1
    assert len(analysis_calls) == 2
    assert "could not be used" in message_text(analysis_calls[1]["messages"][-1])
    assert "error (fatal)" in result.stderr and "RunAnalysis" in result.stderr and "--resume" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "**fatal** during analyze" in (experiment / "REPORT.md").read_text()


def test_ctrl_c_during_a_run_kills_it_and_resume_finishes(experiment: Path, llm_server, hold: Path):
    server = llm_server(ScriptedBrain(codes=[HOLDING_TRAIN]))
    env = runner_env(server.base_url, HOLD_FILE=str(hold))
    runner = start_until_run(experiment, env, max_runs=1, run=1)
    child = json.loads((experiment / ".runner" / "child-1.json").read_text())["pid"]
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=30)

    assert runner.returncode == 130, out + err
    assert "--resume" in err and "Traceback" not in err
    assert not _alive(child)
    report = (experiment / "REPORT.md").read_text()
    assert "**interrupted** during wait" in report and "resume with" in report
    hold.unlink()
    resumed = run_main(["-d", str(experiment), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert "Stopped because: **max_runs**" in (experiment / "REPORT.md").read_text()
    assert (experiment / "run_1" / "output.interrupted-1.log").is_file() and not (experiment / "run_2").exists()


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("auto-ml-runner")
    if not script.exists():
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "--max-runs", "abc"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--max-runs must be a whole number" in result.stderr


def test_ctrl_c_during_an_llm_call_exits_promptly(experiment: Path, llm_server):
    brain = ScriptedBrain()
    slow = {"on": True}

    def responder(body):
        reply = brain(body)
        if slow["on"] and brain.stages[-1] == "codegen":
            return {**reply, "delay": 30}
        return reply

    server = llm_server(responder)
    env = runner_env(server.base_url)
    runner = start_main(["-d", str(experiment), "-r", "1"], env)
    wait_until(lambda: "codegen" in brain.stages)
    started = time.monotonic()
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=20)

    assert runner.returncode == 130, out + err
    assert time.monotonic() - started < 10
    assert "--resume" in err and "Traceback" not in err
    assert "**interrupted** during codegen" in (experiment / "REPORT.md").read_text()  # recorded, though the call never returned
    slow["on"] = False
    resumed = run_main(["-d", str(experiment), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert brain.stages.count("initialize") == 1  # the finished step was not repeated


def test_resume_an_interrupted_experiment_with_a_new_run_limit(experiment: Path, llm_server, hold: Path):
    server = llm_server(ScriptedBrain(codes=[HOLDING_TRAIN, GOOD_TRAIN]))
    env = runner_env(server.base_url, HOLD_FILE=str(hold))
    runner = start_until_run(experiment, env, max_runs=1, run=1)
    runner.kill()
    runner.communicate()
    hold.unlink()

    result = run_main(["-d", str(experiment), "--resume", "-r", "2"], env)

    assert result.returncode == 0, result.stderr
    assert (experiment / "run_2" / "output.log").is_file() and not (experiment / "run_3").exists()
    assert "after 2 of 2 runs" in (experiment / "REPORT.md").read_text()


def test_run_folders_without_a_checkpoint_name_the_cause_and_fresh_moves_them_aside(experiment: Path, llm_server, tmp_path: Path):
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url)
    (experiment / "run_1").mkdir()
    (experiment / "run_1" / "train.py").write_text("print('an old experiment')\n")
    (experiment / "PLAN.md").write_text("an old plan\n")
    (experiment / "data").mkdir()
    (experiment / "data" / "cache.bin").write_text("kept")

    for args in ([], ["--resume"]):  # both used to point at the other
        refused = run_main(["-d", str(experiment), *args], env)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "but no checkpoint (.runner/checkpoints.sqlite is missing" in refused.stderr
        assert f"`python main.py -d {experiment} --fresh`" in refused.stderr
    assert server.requests == []

    unreachable = run_main(["-d", str(experiment), "--fresh", "-r", "1"], {**env, "LLM_BASE_URL": "http://127.0.0.1:1/v1"})
    assert unreachable.returncode == 1 and "Nothing was spent" in unreachable.stderr  # and nothing was moved: the checks come first
    assert not [p for p in experiment.iterdir() if p.name.startswith("earlier-")] and (experiment / "run_1" / "train.py").is_file()

    started = run_main(["-d", str(experiment), "--fresh", "-r", "1"], env)
    assert started.returncode == 0, started.stderr
    aside = [p for p in experiment.iterdir() if p.name.startswith("earlier-")]
    assert len(aside) == 1 and f"moved to {aside[0]}" in started.stderr
    assert (aside[0] / "run_1" / "train.py").read_text() == "print('an old experiment')\n"  # nothing deleted
    assert (aside[0] / "PLAN.md").read_text() == "an old plan\n"
    assert (experiment / ".runner" / "lock").is_file()  # the lock stays where every runner looks for it
    assert (experiment / "data" / "cache.bin").read_text() == "kept" and (experiment / "IDEA.md").is_file()
    assert "accuracy >= 0.9" in (experiment / "PLAN.md").read_text() and (experiment / "run_1" / "output.log").is_file()

    again = run_main(["-d", str(experiment)], env)  # a finished experiment: continue it, or start afresh
    assert again.returncode == 2 and f"`python main.py -d {experiment} --fresh`" in again.stderr


def test_hints_name_the_command_the_user_ran(experiment: Path, llm_server, tmp_path: Path):
    console_script = Path(sys.executable).parent / "auto-ml-runner"
    if not console_script.is_file():
        pytest.skip("the auto-ml-runner console script is installed by `pip install -e .`")
    env = runner_env(llm_server(ScriptedBrain()).base_url)
    (experiment / "run_1").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([str(console_script), "-d", "../exp"], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"`auto-ml-runner -d {experiment} --fresh`" in result.stderr and "main.py" not in result.stderr
    status = subprocess.run([str(console_script), "status", "-d", "../exp"], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert "start it with `auto-ml-runner -d ../exp`" in status.stdout


def test_one_model_flag_sets_every_stage_and_a_stage_variable_still_overrides_model(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    result = run_main(["-d", str(experiment), "-r", "1", "--model", "local/one-model"], runner_env(server.base_url))
    assert result.returncode == 0, result.stderr
    assert {request["model"] for request in server.requests} == {"local/one-model"}

    other = experiment.parent / "other"
    other.mkdir()
    (other / "IDEA.md").write_text((experiment / "IDEA.md").read_text())
    server.requests.clear()
    env = runner_env(server.base_url, MODEL="local/every-stage", CODE_MODEL="local/coder")
    assert run_main(["-d", str(other), "-r", "1"], env).returncode == 0
    by_stage = {("codegen" if "You write train.py" in r["messages"][0]["content"] else "other"): r["model"] for r in server.requests}
    assert by_stage == {"codegen": "local/coder", "other": "local/every-stage"}


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_a_training_python_whose_installation_holds_the_home_is_refused_at_start(experiment: Path, llm_server, tmp_path: Path):
    home = tmp_path / "home"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home)], check=True, timeout=120)  # a venv that is the home itself
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url, HOME=str(home), SANDBOX="bwrap", TRAIN_PYTHON=str(home / "bin" / "python"))
    result = run_main(["-d", str(experiment)], env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"holds the home folder {home}" in result.stderr and "TRAIN_PYTHON" in result.stderr
    assert server.requests == []  # refused before anything is spent


# --- status, with runs in flight ---


def test_status_lists_each_run_in_flight_with_its_gpu_time_and_progress_and_plain_output_names_the_run(experiment: Path, llm_server, hold: Path):
    env = runner_env(llm_server(ScriptedBrain(codes=[HOLDING_TRAIN])).base_url, HOLD_FILE=str(hold))
    runner = start_main(["-d", str(experiment), "-r", "2", "--workers", "2", "--gpus", "0,1"], env)
    logs = [experiment / f"run_{number}" / "output.log" for number in (1, 2)]
    wait_until(lambda: all(log.exists() and "epoch 1/4" in log.read_text() for log in logs))

    busy = run_main(["status", "-d", str(experiment)], env)

    assert busy.returncode == 0, busy.stderr
    lines = busy.stdout.splitlines()
    assert "goal: accuracy >= 0.9 · runs: 0 of 2 · 2 in flight" in lines
    flying = lines[lines.index("in flight:") + 1 :][:2]
    assert [line.split(" · ")[0] for line in flying] == ["  run 1", "  run 2"], busy.stdout
    assert all(re.fullmatch(r"  run [12] · draft · GPU [01] · 0:\d\d · epoch 1/4 \(25%\)", line) for line in flying), busy.stdout
    assert {line.split(" · ")[2] for line in flying} == {"GPU 0", "GPU 1"}, "each run on its own GPU"
    assert "next: run" not in busy.stdout, "no run is coming: both workers are busy and the limit is reached"

    runner.kill()  # the runs stay in the state as in flight: a resume starts them again
    runner.communicate()
    wait_until(lambda: "running" not in run_main(["status", "-d", str(experiment)], env).stdout)
    killed = run_main(["status", "-d", str(experiment)], env).stdout.splitlines()
    hold.unlink()  # the runs the kill left behind end

    assert "in flight when the runner stopped (a resume starts them again):" in killed
    stopped = [line for line in killed if line.startswith("  run ")]
    assert len(stopped) == 2 and all(re.fullmatch(r"  run [12] · draft · GPU [01] · epoch 1/4 \(25%\)", line) for line in stopped), killed


def test_plain_output_puts_the_run_number_before_each_line(experiment: Path, llm_server):
    result = run_main(["-d", str(experiment), "-r", "2", "--workers", "2"], runner_env(llm_server(ScriptedBrain()).base_url))

    assert result.returncode == 0, result.stderr
    echoed = [line for line in result.stdout.splitlines() if "│ epoch=" in line]
    assert {line.split(" │ ")[0] for line in echoed} == {"  run 1", "  run 2"}
    assert len(echoed) == 6 and all(re.fullmatch(r"  run [12] │ epoch=\d loss=[\d.]+ accuracy=[\d.]+", line) for line in echoed)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_a_run_in_flight_is_told_from_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import main
    from adapters.files import ExperimentFiles

    files = ExperimentFiles(tmp_path)
    files.private.mkdir()
    monkeypatch.setattr(main, "time", FakeClock(1_000_065.0))
    improve = {"number": 3, "operator": "improve", "parent": 1, "reason": "", "submitted_at": 1.0}

    assert main._in_flight_line(files, improve, running=True) == "run 3 · improve ← 1 · waiting to start"
    assert main._in_flight_line(files, improve, running=False) == "run 3 · improve ← 1"

    files.run_dir(3).mkdir()
    (files.run_dir(3) / "output.log").write_text("loading\nepoch 2/4 loss=0.3\n")
    (files.private / "child-3.json").write_text(json.dumps({"run": 3, "gpus": ["2", "3"], "started": 1_000_000.0, "pid": 1, "cwd": "/", "tree": []}))
    assert main._in_flight_line(files, improve, running=True) == "run 3 · improve ← 1 · GPUs 2,3 · 1:05 · epoch 2/4 (50%)"
    assert main._in_flight_line(files, improve, running=False) == "run 3 · improve ← 1 · GPUs 2,3 · epoch 2/4 (50%)", "no time: nothing runs it now"

    (files.private / "child-3.json").write_text("{half a note")  # caught mid-write: its output says it started all the same
    assert main._in_flight_line(files, improve, running=True) == "run 3 · improve ← 1 · epoch 2/4 (50%)"

    record = {"number": 3, "status": "failed", "exit_code": 1, "duration_s": 2.0, "metrics": {}, "error": "boom", "operator": "improve", "parent": 1}
    files.write_result(record)  # as the runner records it: a result.json the script wrote itself is not taken for one
    assert main._in_flight_line(files, improve, running=True) == "run 3 · improve ← 1 · ended: failed", "ended, not yet taken by the runner"
