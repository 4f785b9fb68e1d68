"""Tests for adapters/grader.py: real grade.py scripts run on a run's folder, their metrics, failures, log and links."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_process import gone_soon

from adapters import grader
from adapters.grader import GRADE_LOG, Grade, grade_run, last_line, metrics_line
from adapters.process import RunCancelled, allow_new_runs, cancel_running_scripts
from adapters.sandbox import child_environment, scrub_run_folder

LABELS = "id,label\n1,cat\n2,dog\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A graded experiment: private/test_labels.csv and an empty run_1/ (grade.py is each test's own)."""
    folder = tmp_path / "exp"
    (folder / "run_1").mkdir(parents=True)
    (folder / "private").mkdir()
    (folder / "private" / "test_labels.csv").write_text(LABELS)
    return folder


def grade(root: Path, source: str, *, timeout_s: float = 30, env: dict[str, str] | None = None, cancel: threading.Event | None = None) -> Grade:
    """Write `source` as root's grade.py and grade run 1 with it."""
    (root / "grade.py").write_text(textwrap.dedent(source))
    return grade_run(root, 1, python=sys.executable, env=dict(os.environ) if env is None else env, timeout_s=timeout_s, cancel=cancel)


# What it printed


def test_the_json_line_gives_the_metrics_without_non_numbers(root: Path):
    source = """
    import json, sys
    print("loading", sys.argv[1])
    print(json.dumps({"accuracy": 0.75, "n": 3, "ok": True, "name": "x", "nested": {"a": 1}, "none": None, "list": [1]}))
    """
    found = grade(root, source)
    assert found.metrics == {"accuracy": 0.75, "n": 3.0} and found.failure == ""


def test_the_grader_runs_from_the_experiment_folder_on_the_run_named(root: Path):
    found = grade(root, 'import json, os, sys\nprint(json.dumps({"here": int(os.path.isdir(sys.argv[1]) and sys.argv[1] == "run_1")}))\n')
    assert found.metrics == {"here": 1.0}


def test_the_last_json_line_wins_and_blank_lines_after_it_do_not_count(root: Path):
    found = grade(root, 'print(\'{"accuracy": 0.1}\')\nprint("some words")\nprint(\'{"accuracy": 0.9}\')\nprint()\nprint("   ")\n')
    assert found.metrics == {"accuracy": 0.9} and found.failure == "" and not found.cancelled


def test_a_json_line_not_last_is_not_taken(root: Path):
    found = grade(root, 'print(\'{"accuracy": 0.9}\')\nprint("done grading")\n')
    assert found.metrics is None
    assert found.failure.startswith("grade.py printed no JSON object")


@pytest.mark.parametrize(
    "last",
    [
        "SECRET-WORDS-OF-THE-GRADER 0.93",
        "[0.93, 0.5]",
        '{"verdict": "SECRET-WORDS-OF-THE-GRADER", "passed": true}',
        '{"accuracy": "0.93"}',
    ],
)
def test_no_json_object_of_numbers_is_a_failure_that_does_not_quote_stdout(root: Path, last: str):
    found = grade(root, f"print({last!r})\n")
    assert found.metrics is None
    assert found.failure == "grade.py printed no JSON object of metrics as its last line of stdout"
    assert "SECRET-WORDS" not in found.failure and "0.93" not in found.failure


def test_no_output_at_all_is_a_failure(root: Path):
    found = grade(root, "pass\n")
    assert found.metrics is None and found.failure.startswith("grade.py printed no JSON object")


# How it failed


def test_a_crash_names_the_exit_code_and_the_exception_but_no_line_of_grade_py(root: Path):
    source = """
    labels = open("private/test_labels.csv").read()
    raise ValueError("boom")  # DISTINCTIVE-GRADER-SOURCE
    """
    found = grade(root, source)
    assert found.metrics is None
    assert found.failure == "grade.py failed (exit code 1): ValueError: boom"
    assert "DISTINCTIVE-GRADER-SOURCE" not in found.failure and "raise" not in found.failure
    assert "cat" not in found.failure  # nothing of private/ either
    assert "DISTINCTIVE-GRADER-SOURCE" in (root / "run_1" / GRADE_LOG).read_text()  # the user sees the traceback


def test_a_silent_non_zero_exit_names_its_code(root: Path):
    found = grade(root, "import sys\nsys.exit(3)\n")
    assert found.failure.startswith("grade.py failed (exit code 3)")


def test_a_crash_after_printing_metrics_is_still_a_crash(root: Path):
    found = grade(root, "print('{\"accuracy\": 0.9}')\nraise SystemExit(4)\n")
    assert found.metrics is None and "exit code 4" in found.failure and not found.rejected


def test_exit_code_2_rejects_the_submission_the_runs_fault_with_its_reason(root: Path):
    found = grade(root, "import sys\nprint('no submission: run_1/submission.csv is missing', file=sys.stderr)\nsys.exit(2)\n")
    assert found.rejected and found.metrics is None
    assert found.failure == "grade.py rejected the submission: no submission: run_1/submission.csv is missing"


def test_a_failure_after_a_warning_quotes_no_line_of_grade_py(root: Path):
    source = """
    import sys, warnings
    warnings.warn("labels look odd")  # DISTINCTIVE-GRADER-SOURCE
    sys.exit(1)
    """
    found = grade(root, source)
    assert found.metrics is None and "exit code 1" in found.failure
    assert "DISTINCTIVE-GRADER-SOURCE" not in found.failure


def test_an_interpreter_that_cannot_start_is_a_failure(root: Path):
    (root / "grade.py").write_text("print('{}')\n")
    found = grade_run(root, 1, python=str(root / "no-such-python"), env=dict(os.environ), timeout_s=5)
    assert found.metrics is None and found.failure.startswith("grade.py could not start")


def test_a_grader_that_hangs_is_killed_at_its_timeout_with_its_children(root: Path):
    source = """
    import subprocess, time
    child = subprocess.Popen(["sleep", "60"])
    with open("child.pid", "w") as out:
        out.write(str(child.pid))
    time.sleep(60)
    """
    began = time.monotonic()
    found = grade(root, source, timeout_s=1)
    assert time.monotonic() - began < 10
    assert found.metrics is None
    assert found.failure == "grade.py timed out after 1 s (GRADE_TIMEOUT_SECONDS)"
    assert "killed (timeout)" in (root / "run_1" / GRADE_LOG).read_text()
    child = int((root / "child.pid").read_text())
    assert gone_soon(child, 5), f"the grader's child {child} outlived its timeout"


# Its log


def test_grade_log_keeps_stdout_and_stderr(root: Path):
    source = """
    import json, sys
    print("STDOUT-WORDS")
    print("STDERR-WORDS", file=sys.stderr)
    print(json.dumps({"accuracy": 0.5}))
    """
    found = grade(root, source)
    assert found.metrics == {"accuracy": 0.5}
    log = (root / "run_1" / GRADE_LOG).read_text()
    assert f"$ {sys.executable} grade.py run_1" in log and "exit code 0" in log
    stdout, stderr = log.split("--- stderr (its end) ---")
    assert "STDOUT-WORDS" in stdout and '{"accuracy": 0.5}' in stdout and "STDERR-WORDS" in stderr


# Stopped while it grades


def later(seconds: float, action) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def test_a_cancelled_run_gets_no_grade(root: Path):
    cancel = threading.Event()
    timer = later(0.3, cancel.set)
    began = time.monotonic()
    try:
        found = grade(root, "import time\ntime.sleep(60)\n", cancel=cancel)
    finally:
        timer.join()
    assert found.cancelled and found.metrics is None and found.failure == ""
    assert time.monotonic() - began < 10


def test_the_runner_stopping_raises_run_cancelled(root: Path):
    timer = later(0.3, cancel_running_scripts)
    began = time.monotonic()
    try:
        with pytest.raises(RunCancelled):
            grade(root, "import time\ntime.sleep(60)\n")
    finally:
        timer.join()
        allow_new_runs()
    assert time.monotonic() - began < 10


# Links out of the run folder


def test_every_link_goes_and_those_out_of_the_folder_are_named(root: Path):
    run_dir = root / "run_1"
    (run_dir / "preds.csv").write_text("id,label\n1,cat\n")
    (run_dir / "out").mkdir()
    (run_dir / "submission.csv").symlink_to("../private/test_labels.csv")
    (run_dir / "latest.csv").symlink_to("preds.csv")  # inside: an output.log linked to grade.log would bring the grader's output to prompts
    (run_dir / "out" / "again.csv").symlink_to("../preds.csv")
    (run_dir / "out" / "key.csv").symlink_to(root / "private" / "test_labels.csv")
    (run_dir / "up").symlink_to("..")
    os.mkfifo(run_dir / "metrics.json")  # would hang whoever reads it
    removed = scrub_run_folder(run_dir)
    key = root / "private" / "test_labels.csv"
    named = ["submission.csv -> ../private/test_labels.csv", f"out/key.csv -> {key}", "up -> ..", "metrics.json (neither a file nor a folder)"]
    assert sorted(removed) == sorted(named)
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == ["out", "preds.csv"]
    assert (root / "private" / "test_labels.csv").read_text() == LABELS  # the target itself is untouched


def test_a_dangling_link_out_is_removed_too(root: Path):
    (root / "run_1" / "submission.csv").symlink_to("../private/not_yet.csv")
    assert scrub_run_folder(root / "run_1") == ["submission.csv -> ../private/not_yet.csv"]


def test_the_link_attack_fails_the_grader_reads_no_answer_key(root: Path):
    (root / "run_1" / "submission.csv").symlink_to("../private/test_labels.csv")
    source = """
    import json, sys
    submission = open(f"{sys.argv[1]}/submission.csv").read()
    labels = open("private/test_labels.csv").read()
    print(json.dumps({"accuracy": float(submission == labels)}))
    """
    assert scrub_run_folder(root / "run_1") == ["submission.csv -> ../private/test_labels.csv"]
    found = grade(root, source)
    assert found.metrics is None
    assert found.failure.startswith("grade.py failed (exit code 1): FileNotFoundError")
    assert "cat" not in found.failure


def test_grade_log_is_a_new_file_never_written_through_what_the_run_left_there(root: Path):
    run_dir = root / "run_1"
    (run_dir / "train.py").write_text("print('the code')\n")
    os.link(run_dir / "train.py", run_dir / GRADE_LOG)  # a hard link survives the scrub: the log must not write into train.py
    grade(root, "raise ValueError('DISTINCTIVE-GRADER-OUTPUT')\n")
    assert (run_dir / "train.py").read_text() == "print('the code')\n"
    assert "DISTINCTIVE-GRADER-OUTPUT" in (run_dir / GRADE_LOG).read_text()


NOBODY = 65534


def test_a_run_folder_the_script_made_unlistable_still_loses_its_links_out():
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("as root, the runner's part is played by an unprivileged user through setpriv, which is missing")
    top = Path(tempfile.mkdtemp(prefix="amr-grade-", dir="/tmp"))  # traversable by that user, unlike pytest's folder under root
    try:
        top.chmod(0o755)
        root = top / "exp"
        (root / "run_1").mkdir(parents=True)
        (root / "private").mkdir()
        (root / "private" / "test_labels.csv").write_text(LABELS)
        (root / "run_1" / "submission.csv").symlink_to("../private/test_labels.csv")
        check = f"""
from adapters.sandbox import scrub_run_folder
scrub_run_folder({str(root / "run_1")!r})
try:
    print("LEAKED" if open({str(root / "run_1" / "submission.csv")!r}).read() == {LABELS!r} else "other")
except OSError as exc:
    print(type(exc).__name__)
"""
        as_runner = [os.path.realpath(sys.executable), "-c", check]  # the interpreter itself, not a venv that user may not reach
        if os.geteuid() == 0:
            for path in (root, root / "run_1", root / "private", root / "private" / "test_labels.csv"):
                os.chown(path, NOBODY, NOBODY)
            as_runner = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *as_runner]
        (root / "run_1").chmod(0o311)  # what train.py may do to its own folder: enter it, but list it no more
        code = top / "code"  # the runner's code where that user can read it (a checkout may lie in a folder only root enters)
        shutil.copytree(Path(grader.__file__).resolve().parent, code / "adapters", ignore=shutil.ignore_patterns("__pycache__"))
        done = subprocess.run(as_runner, env={**os.environ, "PYTHONPATH": str(code)}, cwd="/", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() != "LEAKED"
    finally:
        (top / "exp" / "run_1").chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)


# Its environment


def test_the_grader_sees_no_secret_of_the_runner(root: Path):
    parent = {**os.environ, "OPENAI_API_KEY": "sk-test-not-for-the-grader"}
    source = """
    import json, os
    print(json.dumps({"sees_key": int("OPENAI_API_KEY" in os.environ), "has_home": int(os.path.isdir(os.environ["HOME"]))}))
    """
    env = child_environment(parent, home="", data_dir=str(root / "data"), extra_names=())
    assert grade(root, source, env=env).metrics == {"sees_key": 0.0, "has_home": 1.0}
    assert grade(root, source, env=parent).metrics["sees_key"] == 1.0  # the check can see a key that is there


# metrics_line and last_line


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("", None),
        ("\n  \n", None),
        ('{"a": 1}', {"a": 1.0}),
        ('{"a": 1}\n\n', {"a": 1.0}),
        ('{"a": NaN, "b": Infinity, "c": -Infinity, "d": 0.5}', {"d": 0.5}),
        ('{"a": NaN}', None),
        ('{"a": 1e400}', None),
        ('{"a": true, "b": false}', None),
        ("{}", None),
        ("[1, 2]", None),
        ("0.9", None),
        ('"text"', None),
        ('{"a": 1', None),
        ('{"a": -2, "b": 0}', {"a": -2.0, "b": 0.0}),
        ('  {"a": 1}  ', {"a": 1.0}),
    ],
)
def test_metrics_line(stdout: str, expected: dict | None):
    assert metrics_line(stdout) == expected


def test_an_integer_too_big_for_a_float_is_dropped_not_raised():
    assert metrics_line('{"big": 1' + "0" * 400 + ', "accuracy": 0.5}') == {"accuracy": 0.5}


def test_deeply_nested_json_is_no_object_not_a_crash():
    assert metrics_line("[" * 100_000) is None


def test_last_line_is_the_last_non_empty_line_cut_to_width():
    assert last_line("Traceback\n  x = 1\nValueError: boom\n\n") == "ValueError: boom"
    assert last_line("") == ""
    assert last_line("x" * 500, width=10) == "x" * 10


def test_the_grader_gets_a_home_and_cache_of_its_own_never_the_data_cache_runs_write(root: Path):
    env = child_environment(os.environ, home="", data_dir=str(root / "data"), extra_names=())
    found = grade(root, 'import json, os\nprint(json.dumps({"home": len(os.environ["HOME"]), "x": 1}))\nprint(os.environ["XDG_CACHE_HOME"])\n', env=env)

    assert found.metrics is None  # the last line is the folder: no JSON, but the log has it
    cache = (root / "run_1" / GRADE_LOG).read_text().split("--- stdout (its end) ---\n", 1)[1].splitlines()[1]
    assert cache.endswith("/cache") and not cache.startswith(str(root)) and env["XDG_CACHE_HOME"] == f"{root / 'data'}/cache"


def test_metric_names_are_read_as_the_goal_reads_them():
    assert metrics_line('{"Test Accuracy": 0.9, "val/F1": 0.8}') == {"test_accuracy": 0.9, "val_f1": 0.8}
