"""Tests for view_tasks.py: the tasks and runs of experiment folders written by hand, once and with --watch."""

from __future__ import annotations

import io
import json
import os
import re
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
    assert cells(out, "2") == ["2", "", "not finished", "-", "-", ""] and "output.log 2.0 KiB" in out  # no child-2.json: not known to run
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
    assert "not finished" in out and "every 0.5 s, Ctrl-C to stop" in out
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


# --- how each run came about: the From column and the tree ---


def cells(output: str, first_cell: str) -> list[str]:
    """The cells of the Runs table's row whose first cell is `first_cell`."""
    return [cell.strip() for cell in row(output, "Runs", first_cell).split("│")[1:-1]]


def tree_lines(output: str) -> list[str]:
    """The lines of the runs tree, its title left out, down to the summary line."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Runs as a tree"))
    end = next(i for i, line in enumerate(lines) if re.match(r"\d+ runs? finished", line))
    return [line.rstrip() for line in lines[start + 1 : end]]


def write_old_result(files: ExperimentFiles, number: int, accuracy: float) -> None:
    """A result.json as the runner wrote it before the tree search: no operator, no parent."""
    files.run_dir(number).mkdir(parents=True, exist_ok=True)
    old = {"number": number, "status": "ok", "exit_code": 0, "duration_s": 2.0, "metrics": {"test_accuracy": accuracy}, "error": ""}
    (files.run_dir(number) / "result.json").write_text(json.dumps(old))


@pytest.fixture
def searched(tmp_path: Path) -> ExperimentFiles:
    """A tree search: draft 1, a failed improve (2) and its fix (3), a better improve (4) whose child 5 is the best and
    child 6 timed out, a second draft (7), and run 8 still going."""
    runs = [
        make_run(1, metrics={"test_accuracy": 0.9}, operator="draft", parent=None),
        make_run(2, "failed", error="ValueError: bad shape", operator="improve", parent=1),
        make_run(3, metrics={"test_accuracy": 0.93}, operator="debug", parent=2),
        make_run(4, metrics={"test_accuracy": 0.95}, operator="improve", parent=1),
        make_run(5, metrics={"test_accuracy": 0.985}, operator="improve", parent=4),
        make_run(6, "timeout", operator="improve", parent=4),
        make_run(7, metrics={"test_accuracy": 0.8}, operator="draft", parent=None),
    ]
    files = write_experiment(tmp_path / "tree", "test_accuracy >= 0.98", [make_task(1, "Baseline", "done", runs=[1])], runs)
    files.run_dir(8).mkdir()
    (files.run_dir(8) / "output.log").write_text("x" * 2048)
    return files


def test_the_runs_table_says_how_each_run_came_about(searched):
    _, out = show("-d", str(searched.root))

    assert re.search(r"┃ Run ┃ From +┃ Status +┃ Duration ┃ test_accuracy ┃ Error", out), out
    assert cells(out, "1") == ["1", "draft", "ok", "1.5 s", "0.9", ""]
    assert cells(out, "2") == ["2", "improve ← 1", "failed", "1.5 s", "-", "ValueError: bad shape"]
    assert cells(out, "3") == ["3", "debug ← 2", "ok", "1.5 s", "0.93", ""]
    assert cells(out, "5 ★") == ["5 ★", "improve ← 4", "ok", "1.5 s", "0.985", ""]
    assert cells(out, "7") == ["7", "draft", "ok", "1.5 s", "0.8", ""]
    assert cells(out, "8")[:3] == ["8", "", "not finished"]
    assert "Runs as a tree" not in out, "the tree only with --tree"


def test_the_tree_puts_each_run_under_its_parent_and_stacks_a_line_of_single_children(searched):
    code, out = show("-d", str(searched.root), "--tree")

    assert code == 0
    assert tree_lines(out) == [
        "├── 1 draft · ok · 0.9",
        "│   ├── 2 improve ← 1 · failed · ValueError: bad shape",
        "│   │   3 debug ← 2 · ok · 0.93",
        "│   └── 4 improve ← 1 · ok · 0.95",
        "│       ├── 5 ★ improve ← 4 · ok · 0.985",
        "│       └── 6 improve ← 4 · timeout",
        "├── 7 draft · ok · 0.8",
        "└── 8 · not finished · output.log 2.0 KiB",
    ]
    assert "\nRuns\n" not in out and "Duration" not in out, "the tree in place of the table"
    assert out.rstrip().endswith("7 runs finished, 1 not finished · best run 5 with test_accuracy=0.985 vs target >= 0.98 (goal met)")


def test_runs_from_before_the_tree_search_show_a_dash_and_stand_as_roots(tmp_path):
    files = write_experiment(tmp_path / "old", "test_accuracy >= 0.98", [make_task(1, runs=[1, 2])], [])
    write_old_result(files, 1, 0.9)
    write_old_result(files, 2, 0.95)
    files.write_result(make_run(3, metrics={"test_accuracy": 0.99}, operator="improve", parent=2))  # resumed by the new runner

    _, table = show("-d", str(files.root))
    _, tree = show("-d", str(files.root), "--tree")

    assert cells(table, "1") == ["1", "—", "ok", "2.0 s", "0.9", ""]
    assert cells(table, "2")[:2] == ["2", "—"] and cells(table, "3 ★")[:2] == ["3 ★", "improve ← 2"]
    assert tree_lines(tree) == ["├── 1 · ok · 0.9", "└── 2 · ok · 0.95", "    3 ★ improve ← 2 · ok · 0.99"]


def tree_text(results: list[dict], goal: str = "test_accuracy >= 0.98", limit: int = view_tasks.TREE_RUNS) -> list[str]:
    """runs_tree of these results, as a 100-column console prints it, its title left out."""
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(view_tasks.runs_tree(view_tasks.Snapshot(Path("exp"), goal, [], results), limit=limit))
    return [line.rstrip() for line in console.file.getvalue().splitlines()[1:]]


def test_a_long_line_of_runs_is_folded_past_the_limit_and_keeps_the_best_and_the_latest():
    runs = [make_run(1, metrics={"test_accuracy": 0.5}, operator="draft", parent=None)]
    runs += [make_run(n, metrics={"test_accuracy": 0.9 if n == 40 else 0.5}) for n in range(2, 101)]  # each improves the one before

    assert len(tree_text(runs, limit=100)) == 100, "up to the limit, every run has its row"
    assert tree_text(runs, limit=99) == [
        "└── 1 draft · ok · 0.5",
        "    2 improve ← 1 · ok · 0.5",
        "    3 improve ← 2 · ok · 0.5",
        "    ⋮ 36 runs not shown, each building on the one above",
        "    40 ★ improve ← 39 · ok · 0.9",
        "    ⋮ 57 runs not shown, each building on the one above",
        "    98 improve ← 97 · ok · 0.5",
        "    99 improve ← 98 · ok · 0.5",
        "    100 improve ← 99 · ok · 0.5",
    ]


def test_many_attempts_on_one_run_are_folded_to_the_latest_and_the_one_leading_to_the_best():
    runs = [make_run(1, metrics={"test_accuracy": 0.5}, operator="draft", parent=None)]
    runs += [make_run(n, "failed", error="boom", parent=1) for n in range(2, 20)]
    runs[4] = make_run(5, metrics={"test_accuracy": 0.6}, parent=1)
    runs.append(make_run(20, metrics={"test_accuracy": 0.99}, parent=5))

    assert tree_text(runs, limit=10) == [
        "├── 1 draft · ok · 0.5",
        "│   ├── … 14 earlier attempts not shown (14 runs in all)",
        "│   ├── 17 improve ← 1 · failed · boom",
        "│   ├── 18 improve ← 1 · failed · boom",
        "│   └── 19 improve ← 1 · failed · boom",
        "└── 5 improve ← 1 · ok · 0.6",  # the best run's line goes on at the top
        "    20 ★ improve ← 5 · ok · 0.99",
    ]


def test_a_folded_tree_shows_the_best_runs_line_at_one_depth_however_deep_it_grew():
    runs = [make_run(1, metrics={"test_accuracy": 0.5}, operator="draft", parent=None)]
    for step in range(1, 30):  # each step: a failed attempt on the line's newest run, then a better run on it
        tip = runs[-1]["number"]
        runs.append(make_run(tip + 1, "failed", error="boom", parent=tip))
        runs.append(make_run(tip + 2, metrics={"test_accuracy": 0.5 + step / 100}, parent=tip))

    whole, folded = tree_text(runs, limit=len(runs)), tree_text(runs, limit=len(runs) - 1)

    assert max(len(line) for line in whole) == 100, "nested, the line of improvements runs off the screen"
    best = next(line for line in folded if "★" in line)
    assert best == "└── 59 ★ improve ← 57 · ok · 0.79"
    assert [line[:4] for line in folded if " ok " in line] == ["├── "] * 29 + ["└── "], "every run of the best's line at the top"
    assert folded[:2] == ["├── 1 draft · ok · 0.5", "│   └── 2 improve ← 1 · failed · boom"], "its failed attempts one level in"


# --- several runs in flight: out of order, running and cancelled ---


def start_run(files: ExperimentFiles, number: int, log: str = "", child: dict | None = None, ago_s: float = 300.0) -> None:
    """Run `number` as the runner leaves it while it trains: train.py, a growing output.log, and .runner/child-N.json
    listing its processes with the note execute adds (the run, its GPUs, when it started; `child` adds to or replaces it)."""
    run_dir = files.run_dir(number)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.py").write_text("print('training')\n")
    if log:
        (run_dir / "output.log").write_text(log)
    if child is not None:
        note = {"run": number, "gpus": [], "started": round(time.time() - ago_s, 3), **child}
        files.private.mkdir(exist_ok=True)
        (files.private / f"child-{number}.json").write_text(json.dumps({**note, "pid": 4242, "cwd": str(run_dir), "tree": [[4242, 1]]}))


@pytest.fixture
def parallel(tmp_path: Path) -> ExperimentFiles:
    """Five runs given out with three workers: run 2 trains on GPU 1 while run 3, which started after it, has ended;
    run 4 trains too (its child-4.json names no operator: how execute writes it today) and run 5's code waits for a device."""
    runs = [
        make_run(1, metrics={"test_accuracy": 0.9}, operator="draft", parent=None),
        make_run(3, metrics={"test_accuracy": 0.95}, operator="improve", parent=1),
    ]
    files = write_experiment(tmp_path / "parallel", "test_accuracy >= 0.98", [make_task(1, "Baseline", "in_progress", runs=[1, 3])], runs)
    start_run(files, 2, log="x" * 2048, child={"gpus": ["1"], "operator": "improve", "parent": 1})
    start_run(files, 4, log="epoch 1\n", child={"gpus": ["0", "2"]}, ago_s=600)
    start_run(files, 5)
    return files


def test_runs_in_flight_show_as_running_beside_runs_that_ended_before_them(parallel):
    with parallel.runner_lock():  # a runner is working on it
        code, out = show("-d", str(parallel.root))

    assert code == 0
    assert cells(out, "1") == ["1", "draft", "ok", "1.5 s", "0.9", ""]
    assert cells(out, "2") == ["2", "improve ← 1", "running", "5.0 min", "-", ""]
    assert cells(out, "3 ★") == ["3 ★", "improve ← 1", "ok", "1.5 s", "0.95", ""]
    assert cells(out, "4") == ["4", "", "running", "10.0 min", "-", ""]
    assert cells(out, "5") == ["5", "", "not started", "-", "-", ""]
    assert "output.log 2.0 KiB · GPU 1" in out and "output.log 8 B · GPUs 0,2" in out and "no output.log yet" in out
    assert out.rstrip().splitlines()[-1] == "2 runs finished, 2 running, 1 not started · best run 3 with test_accuracy=0.95 vs target >= 0.98 (goal not met)"


def test_the_tree_puts_a_run_in_flight_under_its_parent_and_lists_the_others_last(parallel):
    with parallel.runner_lock():
        code, out = show("-d", str(parallel.root), "--tree")

    assert code == 0
    assert tree_lines(out) == [
        "├── 1 draft · ok · 0.9",
        "│   ├── 2 improve ← 1 · running · 5.0 min · output.log 2.0 KiB · GPU 1",
        "│   └── 3 ★ improve ← 1 · ok · 0.95",
        "├── 4 · running · 10.0 min · output.log 8 B · GPUs 0,2",
        "└── 5 · not started · no output.log yet",
    ]


def test_a_run_listed_in_flight_without_a_runner_working_shows_as_interrupted(parallel):
    _, out = show("-d", str(parallel.root), "--tree")  # no runner holds the lock: it was killed mid-run

    assert tree_lines(out)[1] == "│   ├── 2 improve ← 1 · interrupted · output.log 2.0 KiB · GPU 1 · no runner is working: a resume runs it again"
    assert "2 runs finished, 2 interrupted, 1 not started ·" in out


def test_runs_that_end_out_of_order_are_shown_at_each_refresh(parallel, monkeypatch):
    # --watch while run 2 trains on after run 3 ended, then run 2 ends (after run 4 did): every refresh shows them all.
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 1:
            parallel.write_result(make_run(4, metrics={"test_accuracy": 0.97}, operator="improve", parent=3))
            (parallel.private / "child-4.json").unlink()
        elif len(sleeps) == 2:
            parallel.write_result(make_run(2, metrics={"test_accuracy": 0.99}, operator="improve", parent=1))
            (parallel.private / "child-2.json").unlink()
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(view_tasks.time, "sleep", sleep)
    with parallel.runner_lock():
        code, out = show("-d", str(parallel.root), "--watch", "0.5", "--tree")

    assert code == 0 and len(sleeps) == 3
    summaries = [line for line in out.splitlines() if re.match(r"\d+ runs? finished", line)]
    assert [summary.split(" · ")[0] for summary in summaries] == [
        "2 runs finished, 2 running, 1 not started",
        "3 runs finished, 1 running, 1 not started",
        "4 runs finished, 1 not started",
    ]
    assert "│   └── 3 improve ← 1 · ok · 0.95" in out and "│       4 improve ← 3 · ok · 0.97" in out
    assert "best run 2 with test_accuracy=0.99" in summaries[-1]


@pytest.fixture
def stopped(tmp_path: Path) -> ExperimentFiles:
    """Run 3 met the goal while runs 2 and 4 were in flight: both were cancelled, run 2 further along than run 3 had got."""
    why = "cancelled: the experiment stopped (goal_met) while it ran"
    runs = [
        make_run(1, metrics={"test_accuracy": 0.9}, operator="draft", parent=None),
        {**make_run(2, "cancelled", metrics={"test_accuracy": 0.995}, error=why, operator="improve", parent=1), "exit_code": None},
        make_run(3, metrics={"test_accuracy": 0.985}, operator="improve", parent=1),
        {**make_run(4, "cancelled", error=why, operator="improve", parent=3), "exit_code": None},
    ]
    return write_experiment(tmp_path / "stopped", "test_accuracy >= 0.98", [make_task(1, "Baseline", "done", runs=[1, 2, 3, 4])], runs, report=True)


def test_cancelled_runs_say_so_with_their_values_when_stopped_and_are_never_the_best(stopped):
    _, table = show("-d", str(stopped.root))
    _, tree = show("-d", str(stopped.root), "--tree")

    assert cells(table, "2") == ["2", "improve ← 1", "cancelled", "1.5 s", "0.995 when stopped", "the experiment stopped (goal_met) while it ran"]
    assert cells(table, "3 ★")[2:5] == ["ok", "1.5 s", "0.985"]
    assert cells(table, "4") == ["4", "improve ← 3", "cancelled", "1.5 s", "-", "the experiment stopped (goal_met) while it ran"]
    assert table.count("★") == 1 and "".join(tree_lines(tree)).count("★") == 1
    assert tree_lines(tree) == [
        "└── 1 draft · ok · 0.9",
        "    ├── 2 improve ← 1 · cancelled · 0.995 when stopped · the experiment stopped (goal_met) while it ran",
        "    └── 3 ★ improve ← 1 · ok · 0.985",
        "        4 improve ← 3 · cancelled · the experiment stopped (goal_met) while it ran",
    ]
    assert "4 runs finished (2 cancelled) · best run 3 with test_accuracy=0.985 vs target >= 0.98 (goal met)" in table


@pytest.fixture
def graded(tmp_path: Path) -> ExperimentFiles:
    """An experiment with a grade.py: run 1 claimed more than it was graded, grade.py failed on run 2, run 3 was cancelled."""
    why = "cancelled: the experiment stopped (goal_met) while it ran"
    runs = [
        {**make_run(1, metrics={"test_accuracy": 0.71}), "reported": {"test_accuracy": 0.99}, "flags": ["self-reported test_accuracy 0.99, graded 0.71"]},
        {**make_run(2, "grade_failed", error="grade.py timed out after 60 s (GRADE_TIMEOUT_SECONDS)"), "reported": {"test_accuracy": 0.9}},
        {**make_run(3, "cancelled", error=why, operator="improve", parent=1), "exit_code": None, "reported": {"test_accuracy": 0.8}},
    ]
    return write_experiment(tmp_path / "graded", "test_accuracy >= 0.98", [make_task(1, "Baseline", "done", runs=[1, 2, 3])], runs)


def test_a_graded_run_shows_its_grade_with_its_self_report_beside_and_a_flag_after_its_status(graded):
    _, table = show("-d", str(graded.root))
    _, tree = show("-d", str(graded.root), "--tree")

    assert cells(table, "1 ★") == ["1 ★", "draft", "ok ⚑", "1.5 s", "0.71 (self-reported 0.99)", ""]  # the grade ranks the runs
    assert cells(table, "2") == ["2", "improve ← 1", "grade_failed", "1.5 s", "- (self-reported 0.9)", "grade.py timed out after 60 s (GRADE_TIMEOUT_SECONDS)"]
    assert cells(table, "3")[4] == "- (self-reported 0.8 when stopped)"
    assert tree_lines(tree)[:2] == [
        "└── 1 ★ draft · ok ⚑ · 0.71 (self-reported 0.99)",
        "    ├── 2 improve ← 1 · grade_failed · - (self-reported 0.9) · grade.py timed out after 60 s (GRADE_TIMEOUT_SECO…",
    ]


def test_a_child_file_that_cannot_be_read_still_marks_its_run_running(parallel):
    (parallel.private / "child-2.json").write_text('{"run": 2, "oper')  # a torn write: the runner replaces it whole, but a copy may not be
    (parallel.private / "child-4.json").write_text(json.dumps({"run": 4, "operator": "improve", "parent": "three"}))
    with parallel.runner_lock():
        _, out = show("-d", str(parallel.root), "--tree")

    assert tree_lines(out)[-3:] == [
        "├── 2 · running · output.log 2.0 KiB",
        "├── 4 · running · output.log 8 B",
        "└── 5 · not started · no output.log yet",
    ]
