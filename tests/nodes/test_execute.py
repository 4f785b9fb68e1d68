"""execute and wait: run_N/train.py runs as a real child process (submitted by execute, taken by wait), and what happened is recorded."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from fakes import events_of, execute, make_experiment, make_next_run, make_run, make_runtime, seed_runs
from venvs import make_venv

from adapters import sandbox, training
from adapters.files import ExperimentFiles
from adapters.sandbox import SandboxError
from nodes import execute as execute_module

MODE = sandbox.resolve_mode("auto")[0]
"""What the default setting runs in on this machine: bwrap where it works, else none."""

TRAIN_OK = """\
import json
print("epoch=1 loss=0.5", flush=True)
json.dump({"accuracy": 0.93}, open("metrics.json", "w"))
"""

TRAIN_CRASH = """\
print("epoch=1 loss=0.7", flush=True)
raise ValueError("the data is missing")
"""

TRAIN_SLEEP = """\
import time
print("starting", flush=True)
time.sleep(60)
"""

TRAIN_USE_DATA_DIR = """\
import os
print("data_dir=" + os.environ["DATA_DIR"], flush=True)
open(os.path.join(os.environ["DATA_DIR"], "dataset.csv"), "w").write("x,y\\n")
"""

TRAIN_HOG_MEMORY = """\
import time
hog = []
for _ in range(200):
    hog.append(bytearray(10 * 2**20))  # touched: 10 MB of resident memory a step
    time.sleep(0.01)
print("allocated 2 GB unharmed", flush=True)
"""

FORK_BOMB = """\
import os, time
print("forking", flush=True)
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""

TRAIN_SHOW_KEY = """\
import os
print("key=" + repr(os.environ.get("OPENROUTER_API_KEY")), flush=True)
print("llm=" + repr(os.environ.get("LLM_API_KEY")), flush=True)
"""


def scratch_run(tmp_path: Path, code: str, number: int = 1) -> str:
    root = make_experiment(tmp_path)
    run_dir = tmp_path / f"run_{number}"
    run_dir.mkdir()
    (run_dir / "train.py").write_text(code)
    return root


def test_successful_run(tmp_path: Path):
    runtime, events = make_runtime()
    update = execute({"experiment_dir": scratch_run(tmp_path, TRAIN_OK), "run_count": 0}, runtime)

    record = update["latest_run"]
    summary = update["last_summary"]
    assert set(update) == {"latest_run", "run_count", "last_summary", "in_flight", "latest_change"}  # the record goes to result.json, never a list in the state
    assert update["in_flight"] == []
    assert update["run_count"] == 1
    assert record["number"] == 1
    assert record["status"] == "ok"
    assert record["exit_code"] == 0
    assert record["error"] == ""
    assert record["metrics"] == {"accuracy": 0.93}  # metrics.json wins over the log's loss=0.5
    assert record["duration_s"] >= 0
    assert "Run 1: ok (exit 0)" in summary and "summary" not in record  # the record stays small: the summary is kept once, for the latest run
    assert "Metrics (metrics.json): accuracy=0.93" in summary
    assert "epoch=1 loss=0.5" in summary
    assert (tmp_path / "run_1" / "output.log").read_text() == "epoch=1 loss=0.5\n"
    assert not (tmp_path / ".runner" / "child.json").exists()
    assert ExperimentFiles(tmp_path).read_runs(1) == [record]


def test_emits_stage_output_and_run_done(tmp_path: Path):
    runtime, events = make_runtime()
    execute({"experiment_dir": scratch_run(tmp_path, TRAIN_OK), "run_count": 0}, runtime)

    assert events[0] == {
        "event": "stage",
        "stage": "execute",
        "run": 1,
        "timeout_s": runtime.context.timeout_seconds,
        "sandbox": MODE,
        "operator": "draft",
        "parent": None,
        "in_flight": 1,
    }
    [started] = events_of(events, "run_started")
    assert started["run"] == 1 and started["gpus"] == []
    output = [line for e in events_of(events, "output") for line in e["lines"]]
    assert output == ["epoch=1 loss=0.5"]
    assert all(e["run"] == 1 for e in events_of(events, "output"))
    [done] = events_of(events, "run_done")
    assert done["run"] == 1 and done["status"] == "ok" and done["metrics"] == {"accuracy": 0.93}
    assert events[-1] is done


def test_run_number_follows_the_runs_so_far(tmp_path: Path):
    runtime, _ = make_runtime()
    root = scratch_run(tmp_path, TRAIN_OK, number=3)
    state = {"experiment_dir": root, **seed_runs(Path(root), [make_run(1), make_run(2, "failed", error="E")])}
    update = execute(state, runtime)
    assert update["latest_run"]["number"] == 3 and update["run_count"] == 3
    assert (tmp_path / "run_3" / "output.log").exists()
    # No next_run (a state saved before the tree search): the run builds on the one before it, as the loop did,
    # debugging it since it failed.
    assert (update["latest_run"]["operator"], update["latest_run"]["parent"]) == ("debug", 2)


def test_the_record_keeps_the_searchs_choice_and_lands_in_result_json(tmp_path: Path):
    root = scratch_run(tmp_path, TRAIN_CRASH, number=5)
    runtime, events = make_runtime()
    update = execute({"experiment_dir": root, "run_count": 4, "next_run": make_next_run(5, "debug", parent=2, reason="run 2 failed")}, runtime)
    record = update["latest_run"]
    assert (record["number"], record["operator"], record["parent"], record["status"]) == (5, "debug", 2, "failed")
    assert update["run_count"] == 5
    assert json.loads((tmp_path / "run_5" / "result.json").read_text()) == record
    [done] = events_of(events, "run_done")
    assert (done["run"], done["operator"], done["parent"]) == (5, "debug", 2)


def test_train_py_runs_with_the_training_interpreter(tmp_path: Path):
    python = make_venv(tmp_path / "envs" / "train", files={"only_in_this_venv.py": "WHERE = 'the training venv'\n"})
    code = "import sys, only_in_this_venv\nprint(sys.executable)\nprint(only_in_this_venv.WHERE)\n"
    runtime, _ = make_runtime(train_python=str(python))
    record = execute({"experiment_dir": scratch_run(tmp_path / "exp", code), "run_count": 0}, runtime)["latest_run"]
    assert record["status"] == "ok", record["error"]
    assert (tmp_path / "exp" / "run_1" / "output.log").read_text().splitlines() == [str(python), "the training venv"]


def test_a_training_interpreter_named_on_path_is_found_there(tmp_path: Path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "amr-train-python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    runtime, _ = make_runtime(train_python="amr-train-python")
    record = execute({"experiment_dir": scratch_run(tmp_path / "exp", "import sys\nprint(sys.executable)\n"), "run_count": 0}, runtime)["latest_run"]
    assert record["status"] == "ok", record["error"]
    assert (tmp_path / "exp" / "run_1" / "output.log").read_text() == f"{tmp_path / 'bin' / 'amr-train-python'}\n"


def test_crashing_script(tmp_path: Path):
    runtime, _ = make_runtime()
    update = execute({"experiment_dir": scratch_run(tmp_path, TRAIN_CRASH), "run_count": 0}, runtime)
    record = update["latest_run"]

    assert record["status"] == "failed"
    assert record["exit_code"] == 1
    assert record["error"] == "ValueError: the data is missing"
    assert record["metrics"] == {"epoch": 1.0, "loss": 0.7}  # no metrics.json: the log's last values
    assert "Traceback" in update["last_summary"]


def test_timeout(tmp_path: Path):
    runtime, events = make_runtime(timeout_seconds=1)
    record = execute({"experiment_dir": scratch_run(tmp_path, TRAIN_SLEEP), "run_count": 0}, runtime)["latest_run"]

    assert record["status"] == "timeout"
    assert record["exit_code"] is None
    assert record["error"] == "timed out after 1 s"
    assert 1 <= record["duration_s"] < 10
    assert "starting" in (tmp_path / "run_1" / "output.log").read_text()
    assert events_of(events, "run_done")[0]["status"] == "timeout"


def test_interrupted_attempt_log_is_kept(tmp_path: Path):
    root = scratch_run(tmp_path, TRAIN_OK)
    run_dir = tmp_path / "run_1"
    (run_dir / "output.log").write_text("epoch=1 loss=9.9\n(partial, the runner died here")
    (run_dir / "output.interrupted-1.log").write_text("an even earlier attempt\n")
    (run_dir / "metrics.json").write_text(json.dumps({"stale": 1.0}))
    runtime, _ = make_runtime()

    record = execute({"experiment_dir": root, "run_count": 0}, runtime)["latest_run"]

    assert (run_dir / "output.interrupted-1.log").read_text() == "an even earlier attempt\n"
    assert (run_dir / "output.interrupted-2.log").read_text() == "epoch=1 loss=9.9\n(partial, the runner died here"
    assert (run_dir / "output.log").read_text() == "epoch=1 loss=0.5\n"
    assert record["metrics"] == {"accuracy": 0.93}


def test_first_interrupted_log_is_numbered_1(tmp_path: Path):
    root = scratch_run(tmp_path, TRAIN_OK)
    (tmp_path / "run_1" / "output.log").write_text("partial")
    runtime, _ = make_runtime()
    execute({"experiment_dir": root, "run_count": 0}, runtime)
    assert (tmp_path / "run_1" / "output.interrupted-1.log").read_text() == "partial"


def test_stale_metrics_file_is_not_reported(tmp_path: Path):
    root = scratch_run(tmp_path, TRAIN_CRASH)
    (tmp_path / "run_1" / "metrics.json").write_text(json.dumps({"accuracy": 0.99}))
    runtime, _ = make_runtime()
    record = execute({"experiment_dir": root, "run_count": 0}, runtime)["latest_run"]
    assert "accuracy" not in record["metrics"]


def test_missing_train_py_is_written_from_state(tmp_path: Path):
    root = make_experiment(tmp_path)
    runtime, _ = make_runtime()
    record = execute({"experiment_dir": root, "run_count": 0, "code": TRAIN_OK}, runtime)["latest_run"]
    assert (tmp_path / "run_1" / "train.py").read_text() == TRAIN_OK
    assert record["status"] == "ok"


def test_child_gets_no_api_keys(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-secret")
    monkeypatch.setenv("LLM_API_KEY", "sk-local-secret")
    runtime, _ = make_runtime()

    execute({"experiment_dir": scratch_run(tmp_path, TRAIN_SHOW_KEY), "run_count": 0}, runtime)

    log = (tmp_path / "run_1" / "output.log").read_text()
    assert "key=None" in log and "llm=None" in log
    assert "secret" not in log


def test_data_dir_is_created_and_given_to_the_script(tmp_path: Path):
    runtime, _ = make_runtime()
    update = execute({"experiment_dir": scratch_run(tmp_path, TRAIN_USE_DATA_DIR), "run_count": 0}, runtime)
    assert update["latest_run"]["status"] == "ok", update["last_summary"]
    assert f"data_dir={tmp_path / 'data'}" in (tmp_path / "run_1" / "output.log").read_text()
    assert (tmp_path / "data" / "dataset.csv").read_text() == "x,y\n"


@pytest.mark.parametrize("mode", sorted({MODE, "none"}))
def test_memory_limit_stops_the_run_cleanly(mode, tmp_path: Path):
    runtime, events = make_runtime(memory_limit_mb=200, sandbox=mode)
    update = execute({"experiment_dir": scratch_run(tmp_path, TRAIN_HOG_MEMORY), "run_count": 0}, runtime)
    record = update["latest_run"]
    assert record["status"] == "failed"
    assert record["exit_code"] is None
    assert record["error"] == "stopped: memory limit (MEMORY_LIMIT_MB=200) exceeded"
    assert "Error: stopped: memory limit" in update["last_summary"]
    assert "unharmed" not in (tmp_path / "run_1" / "output.log").read_text()
    assert events_of(events, "run_done")[0]["status"] == "failed"


@pytest.mark.parametrize("mode", sorted({MODE, "none"}))
def test_a_fork_bomb_is_stopped_cleanly(mode, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(training, "MAX_TASKS", 64)
    runtime, _ = make_runtime(timeout_seconds=20, sandbox=mode)
    record = execute({"experiment_dir": scratch_run(tmp_path, FORK_BOMB), "run_count": 0}, runtime)["latest_run"]
    assert record["status"] in ("failed", "timeout")
    assert record["exit_code"] is None
    if record["status"] == "failed":
        assert record["error"].startswith("stopped: too many processes")


def test_auto_without_bwrap_runs_unsandboxed_and_warns_once(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    monkeypatch.setattr(execute_module, "_warned", set())
    root = scratch_run(tmp_path, TRAIN_OK)
    runtime, events = make_runtime(sandbox="auto")

    execute({"experiment_dir": root, "run_count": 0}, runtime)
    execute({"experiment_dir": root, "run_count": 1}, runtime)

    assert [e["sandbox"] for e in events_of(events, "stage") if e["stage"] == "execute"] == ["none", "none"]
    [warning] = events_of(events, "warning")
    assert "apt-get install bubblewrap" in warning["message"]
    assert events.index(warning) == 1  # right after the first run's stage line


def test_bwrap_asked_for_but_missing_stops_before_running(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    root = scratch_run(tmp_path, TRAIN_OK)
    runtime, events = make_runtime(sandbox="bwrap")
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        execute({"experiment_dir": root, "run_count": 0}, runtime)
    assert not (tmp_path / "run_1" / "output.log").exists()
    assert events == []


def test_a_missing_module_is_named_first_in_the_runs_summary_with_where_to_install_it(tmp_path: Path):
    runtime, events = make_runtime(train_python=sys.executable)
    update = execute({"experiment_dir": scratch_run(tmp_path, "import amrmissingpackage\n"), "run_count": 0}, runtime)
    hint = (
        f"module 'amrmissingpackage' is not installed in the training environment (TRAIN_PYTHON: {sys.executable}): "
        f"install it there, e.g. `{sys.executable} -m pip install amrmissingpackage`, or tell the model not to use it"
    )
    # First in the summary that the analyst reads and codegen's digest starts with (its head survives the clipping).
    assert update["last_summary"].startswith(f"Run 1 failed because {hint}.\n")
    assert events_of(events, "warning") == [{"event": "warning", "message": f"run 1: {hint}"}]
    crash = execute({"experiment_dir": scratch_run(tmp_path / "other", TRAIN_CRASH), "run_count": 0}, make_runtime()[0])
    assert "not installed" not in crash["last_summary"]
