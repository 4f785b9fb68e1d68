"""Tests for view_tasks.py: the tasks and runs of experiment folders written by hand, once and with --watch."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakes import make_run, make_task
from rich.console import Console
from scripted import REPO

import view_tasks
from adapters.files import ExperimentFiles
from goal import plan_goal_line

WIDE = 200
"""Console width for the tests, so that no cell wraps and every value reads on one line."""


def write_experiment(root: Path, goal: str, tasks: list, runs: list, report: bool = False) -> ExperimentFiles:
    """An experiment folder as the runner leaves it: PLAN.md with the goal line, tasks.json, run_N/result.json."""
    files = ExperimentFiles(root)
    root.mkdir(parents=True, exist_ok=True)
    files.write_plan(f"# Plan\n\n{plan_goal_line(goal, 'from IDEA.md')}\n" if goal else "# Plan\n")
    files.write_tasks(tasks)
    for run in runs:
        files.write_result(run)
        (files.run_dir(run["number"]) / "output.log").write_text("done\n")
    if report:
        files.write_report("# Report")
    return files


@pytest.fixture
def finished(tmp_path: Path) -> ExperimentFiles:
    """Three runs and a report; run 2 meets test_accuracy >= 0.98, run 3 failed."""
    tasks = [
        make_task(1, "Baseline logistic regression", "done", "0.95 on test [not markup]", [1]),
        make_task(2, "Small CNN", "done", "meets the goal", [2, 3]),
        make_task(3, "Augmentation", "dropped", "not needed"),
    ]
    runs = [
        make_run(1, metrics={"test_accuracy": 0.95, "loss": 0.3}),
        make_run(2, metrics={"test_accuracy": 0.985, "loss": 0.1}),
        make_run(3, "failed", error="RuntimeError: CUDA out of memory. " + "x" * 200),
    ]
    return write_experiment(tmp_path / "done", "test_accuracy >= 0.98", tasks, runs, report=True)


@pytest.fixture
def in_progress(tmp_path: Path) -> ExperimentFiles:
    """Run 1 finished below the goal; run 2 is still writing its output.log."""
    tasks = [make_task(1, "Baseline", "done", "0.9", [1]), make_task(2, "Deeper net", "in_progress", runs=[2]), make_task(3, "Tune lr")]
    files = write_experiment(tmp_path / "busy", "test_accuracy >= 0.98", tasks, [make_run(1, metrics={"test_accuracy": 0.9})])
    files.run_dir(2).mkdir()
    (files.run_dir(2) / "output.log").write_text("x" * 2048)
    return files


def show(*args: str, console: Console | None = None) -> tuple[int, str]:
    """Run main() in-process; its exit code and what it printed."""
    console = console or Console(file=io.StringIO(), width=WIDE, color_system=None)
    code = view_tasks.main(list(args), console=console)
    return code, console.file.getvalue()


def row(output: str, table: str, first_cell: str) -> str:
    """The line of the Tasks or Runs table whose first cell is `first_cell`."""
    tasks, runs = output.split("\nRuns")
    lines = (tasks if table == "Tasks" else runs).splitlines()
    return next(line for line in lines if line.startswith("│") and line.split("│")[1].strip() == first_cell)


def test_a_finished_experiment_shows_tasks_runs_the_best_run_and_the_report(finished):
    code, out = show("-d", str(finished.root))
    assert code == 0
    assert "goal: test_accuracy >= 0.98" in out
    assert "Tasks (2 done, 1 dropped)" in out
    assert "Baseline logistic regression" in row(out, "Tasks", "1") and "0.95 on test [not markup]" in row(out, "Tasks", "1")
    assert "done" in row(out, "Tasks", "2") and "2, 3" in row(out, "Tasks", "2")
    assert "dropped" in row(out, "Tasks", "3") and "not needed" in row(out, "Tasks", "3")
    assert "0.985" in row(out, "Runs", "2 ★") and "1.5 s" in row(out, "Runs", "2 ★")
    assert out.count("★") == 1
    assert "failed" in row(out, "Runs", "3") and "RuntimeError: CUDA out of memory." in row(out, "Runs", "3") and "x" * 100 not in out  # the error is cut short
    report = finished.root / "REPORT.md"
    assert out.rstrip().endswith(f"3 runs finished · best run 2 with test_accuracy=0.985 vs target >= 0.98 (goal met) · report: {report}")


def test_a_run_without_result_json_shows_as_not_finished_with_its_log_size(in_progress):
    code, out = show("-d", str(in_progress.root))
    assert code == 0
    assert "in_progress" in out and "Deeper net" in out and "Tune lr" in out
    assert "running / not finished" in row(out, "Runs", "2") and "output.log 2.0 KiB" in out
    assert "0.9" in row(out, "Runs", "1 ★")
    summary = out.rstrip().splitlines()[-1]
    assert summary == "1 run finished, 1 not finished · best run 1 with test_accuracy=0.9 vs target >= 0.98 (goal not met)"


def test_without_a_numeric_goal_runs_show_their_metrics_and_none_is_starred(tmp_path):
    runs = [make_run(1, metrics={"f1": 0.7, "loss": 0.5})]
    files = write_experiment(tmp_path / "exp", "", [make_task(1, "Try it", "done", runs=[1])], runs)
    _, out = show("-d", str(files.root))
    assert "f1=0.7, loss=0.5" in row(out, "Runs", "1")
    assert "★" not in out
    assert out.rstrip().endswith("1 run finished · no numeric goal in PLAN.md")


def test_a_goal_to_minimise_stars_the_lowest_value(tmp_path):
    runs = [make_run(1, metrics={"loss": 0.4}), make_run(2, metrics={"loss": 0.2}), make_run(3, metrics={"loss": 0.3})]
    files = write_experiment(tmp_path / "exp", "loss <= 0.1", [make_task(1, runs=[1, 2, 3])], runs)
    _, out = show("-d", str(files.root))
    assert "0.2" in row(out, "Runs", "2 ★")
    assert "best run 2 with loss=0.2 vs target <= 0.1 (goal not met)" in out


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no tasks.json in"),
        (lambda root: (root.mkdir(), (root / "tasks.json").write_text('{"tasks": [')), "cannot read"),
        (lambda root: (root.mkdir(), (root / "tasks.json").write_bytes(b"\xff\xfe")), "cannot read"),
        (lambda root: (root.mkdir(), (root / "tasks.json").write_text("[1, 2]")), "is garbled"),
        (lambda root: (root.mkdir(), (root / "tasks.json").write_text('{"tasks": [{"id": 1, "runs": 3}]}')), "is garbled"),
    ],
    ids=["missing folder", "no tasks.json", "truncated json", "not utf-8", "not an object", "runs not a list"],
)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, setup, message):
    root = tmp_path / "exp"
    setup(root)
    code, out = show("-d", str(root))
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("args", [["--watch", "0"], ["--interval", "soon"], ["--bogus"]])
def test_bad_arguments_are_one_error_line_and_exit_2(capsys, args):
    code, _ = show(*args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_the_command_line_exits_2_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "view_tasks.py", "-d", str(tmp_path / "missing")], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: experiment directory {tmp_path / 'missing'} does not exist\n"


def test_watch_in_a_terminal_redraws_in_place_and_ctrl_c_exits_0(in_progress, monkeypatch):
    sleeps = []

    def sleep(seconds):  # the first pause finishes run 2; the second is the user's Ctrl-C
        sleeps.append(seconds)
        if len(sleeps) == 1:
            in_progress.write_result(make_run(2, metrics={"test_accuracy": 0.99}))
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(view_tasks.time, "sleep", sleep)
    console = Console(file=io.StringIO(), width=WIDE, force_terminal=True, color_system=None)
    code, out = show("-d", str(in_progress.root), "--watch", "0.5", console=console)
    assert code == 0 and sleeps == [0.5, 0.5]
    assert "running / not finished" in out and "every 0.5 s, Ctrl-C to stop" in out
    assert "best run 2 with test_accuracy=0.99 vs target >= 0.98 (goal met)" in out
    assert "\x1b[" in out  # Live moved the cursor back to redraw


class Watcher:
    """`python view_tasks.py --watch` as a child process, its stdout collected line by line by a thread."""

    def __init__(self, *args: str):
        env = {**os.environ, "COLUMNS": str(WIDE)}
        self.process = subprocess.Popen([sys.executable, "view_tasks.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert self.process.poll() is None, f"view_tasks.py exited {self.process.returncode}: {self.process.stderr.read()}"
            assert time.monotonic() < deadline, f"{text!r} never appeared in:\n{''.join(self.lines)}"
            time.sleep(0.05)

    def interrupt(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=10)
        self.reader.join(timeout=5)
        return code, self.process.stderr.read()


def test_watch_waits_for_the_experiment_then_shows_each_change_and_exits_0_on_ctrl_c(tmp_path):
    files = ExperimentFiles(tmp_path / "exp")
    files.root.mkdir()
    watcher = Watcher("-d", str(files.root), "--watch", "0.2")
    try:
        watcher.wait_for("waiting for the experiment to start")
        files.write_tasks([make_task(1, "Baseline", "in_progress")])
        watcher.wait_for("Baseline")
        files.write_tasks([make_task(1, "Baseline", "done", "works", [1])])
        watcher.wait_for("works")
    finally:
        code, err = watcher.interrupt()
    assert code == 0 and "Traceback" not in err and err == ""
    output = "".join(watcher.lines)
    assert "\x1b" not in output  # not a terminal: plain snapshots, no control codes
    assert output.count("Experiment ") >= 2
