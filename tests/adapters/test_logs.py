"""Tests for adapters/logs.py: metrics, traceback and tail taken from a log in bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from adapters.logs import (
    LINE_CHARS,
    MAX_METRICS,
    PROGRESS_LOOKBACK,
    LogSummary,
    clip,
    latest_progress,
    missing_module,
    missing_package_hint,
    parse_metrics,
    parse_progress,
    read_metrics_file,
    render_summary,
    run_progress,
    summarize_log,
)
from bench.log_summary import write_log as write_log_of_size

REPO_ROOT = Path(__file__).resolve().parents[2]

TRACEBACK = """\
Traceback (most recent call last):
  File "train.py", line 12, in <module>
    main()
  File "train.py", line 9, in main
    raise ValueError("shapes do not match: (3, 4) vs (4, 5)")
ValueError: shapes do not match: (3, 4) vs (4, 5)
"""


def write_log(tmp_path: Path, text: str, name: str = "output.log") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- parse_metrics: one line ---


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("loss=0.25", {"loss": 0.25}),
        ("loss = 0.25, acc=0.9", {"loss": 0.25, "acc": 0.9}),
        ("val_loss: 1.5", {"val_loss": 1.5}),
        ("Test accuracy: 0.98", {"test_accuracy": 0.98}),
        ("epoch 3: Train Loss: 0.5 | val/acc=0.75", {"train_loss": 0.5, "val_acc": 0.75}),
        ("lr=1e-4 wd=5E-2 big=2.5e+3", {"lr": 1e-4, "wd": 5e-2, "big": 2500.0}),
        ("delta=-0.5 gain=+2 frac=.5", {"delta": -0.5, "gain": 2.0, "frac": 0.5}),
        ('{"loss": 0.1, "Val Acc": 0.9, "epoch": 3}', {"loss": 0.1, "val_acc": 0.9, "epoch": 3.0}),
    ],
)
def test_parse_metrics_reads_named_numbers(line, expected):
    assert parse_metrics(line) == pytest.approx(expected)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "loading data from /tmp/cache",
        "started at 12:30:45",  # a clock time has no name
        "loss=nan acc=inf",  # not numbers to the parser
        "loss=1e999",  # overflows to inf: not finite
        "version=1.2.3",  # not one number
        "step=5abc",
    ],
)
def test_parse_metrics_ignores_what_is_not_a_metric(line):
    assert parse_metrics(line) == {}


def test_parse_metrics_json_keeps_only_finite_numbers():
    line = json.dumps({"loss": 0.5, "done": True, "name": "resnet", "nested": {"a": 1}, "bad": float("nan"), "worse": float("inf")})
    assert parse_metrics(line) == {"loss": 0.5}


def test_parse_metrics_json_with_huge_integer_does_not_crash():
    assert parse_metrics('{"loss": 0.5, "n": 1' + "0" * 400 + "}") == {"loss": 0.5}


# --- read_metrics_file ---


def test_read_metrics_file(tmp_path):
    path = tmp_path / "metrics.json"
    assert read_metrics_file(path) is None
    path.write_text("not json")
    assert read_metrics_file(path) is None
    path.write_text("[1, 2]")
    assert read_metrics_file(path) is None
    path.write_text('{"Test Accuracy": 0.9, "ok": true, "note": "x", "inf": Infinity, "n": 1' + "0" * 400 + "}")
    assert read_metrics_file(path) == {"test_accuracy": 0.9}


# --- summarize_log: metrics ---


def test_last_value_of_each_metric_wins(tmp_path):
    log = write_log(tmp_path, "epoch=1 loss=0.9\nepoch=2 loss=0.5\nacc: 0.7\nepoch=3 loss=0.3\n")
    summary = summarize_log(log)
    assert summary.metrics == {"epoch": 3.0, "loss": 0.3, "acc": 0.7}
    assert summary.metrics_source == "log"
    assert summary.lines == 4
    assert summary.bytes == log.stat().st_size


def test_metrics_json_wins_over_log_lines(tmp_path):
    log = write_log(tmp_path, "loss=0.3\naccuracy=0.5\n")
    metrics = write_log(tmp_path, json.dumps({"accuracy": 0.99}), "metrics.json")
    summary = summarize_log(log, metrics)
    assert summary.metrics == {"accuracy": 0.99}
    assert summary.metrics_source == "metrics.json"


def test_unusable_metrics_json_falls_back_to_log(tmp_path):
    log = write_log(tmp_path, "loss=0.3\n")
    for text in ["{broken", "{}", '{"flag": true, "loss": NaN}']:
        metrics = write_log(tmp_path, text, "metrics.json")
        summary = summarize_log(log, metrics)
        assert (summary.metrics, summary.metrics_source) == ({"loss": 0.3}, "log")
    assert summarize_log(log, tmp_path / "absent.json").metrics_source == "log"


def test_non_finite_and_bool_values_are_ignored(tmp_path):
    log = write_log(tmp_path, 'loss=0.4\nloss=nan\n{"loss": NaN, "acc": Infinity, "stop": true, "ok": 1}\nacc=1e400\n')
    summary = summarize_log(log)
    assert summary.metrics == {"loss": 0.4, "ok": 1.0}


def test_metric_names_are_capped_but_known_ones_still_update(tmp_path):
    names = "\n".join(f"m{i}={i}" for i in range(MAX_METRICS + 10))
    log = write_log(tmp_path, names + "\nm0=99\n")
    metrics = summarize_log(log).metrics
    assert len(metrics) == MAX_METRICS
    assert metrics["m0"] == 99.0
    assert f"m{MAX_METRICS}" not in metrics


def test_missing_log_gives_an_empty_summary(tmp_path):
    summary = summarize_log(tmp_path / "never_written.log")
    assert summary == LogSummary()


def test_last_line_without_newline_still_counts(tmp_path):
    log = write_log(tmp_path, "loss=0.5\nfinal accuracy: 0.93")
    summary = summarize_log(log)
    assert summary.metrics == {"loss": 0.5, "final_accuracy": 0.93}
    assert summary.tail == ["loss=0.5", "final accuracy: 0.93"]
    assert summary.lines == 2


# --- summarize_log: traceback and tail ---


def test_traceback_and_error_line_are_captured(tmp_path):
    log = write_log(tmp_path, "starting\nloss=0.9\n" + TRACEBACK)
    summary = summarize_log(log)
    assert summary.error == "ValueError: shapes do not match: (3, 4) vs (4, 5)"
    assert summary.traceback == TRACEBACK.splitlines()


def test_only_the_last_traceback_is_kept(tmp_path):
    first = TRACEBACK.replace("ValueError: shapes", "KeyError: shapes")
    second = 'Traceback (most recent call last):\n  File "train.py", line 40, in <module>\n    1 / 0\nZeroDivisionError: division by zero\n'
    log = write_log(tmp_path, first + "recovered, going on\n" + second + "after\n")
    summary = summarize_log(log)
    assert summary.error == "ZeroDivisionError: division by zero"
    assert summary.traceback == second.splitlines()


def test_error_of_an_earlier_traceback_is_not_shown_with_a_cut_one(tmp_path):
    cut = 'Traceback (most recent call last):\n  File "train.py", line 40, in <module>\n'
    log = write_log(tmp_path, TRACEBACK + cut)
    summary = summarize_log(log)
    assert summary.traceback == cut.splitlines()
    assert summary.error == ""


def test_exception_without_message_ends_the_traceback(tmp_path):
    log = write_log(tmp_path, 'Traceback (most recent call last):\n  File "train.py", line 3, in <module>\nKeyboardInterrupt\nlater line\n')
    summary = summarize_log(log)
    assert summary.error == "KeyboardInterrupt"
    assert summary.traceback[-1] == "KeyboardInterrupt"


def test_tail_keeps_the_last_lines_only(tmp_path):
    log = write_log(tmp_path, "".join(f"line {i}\n" for i in range(1000)))
    summary = summarize_log(log, tail_lines=5)
    assert summary.tail == [f"line {i}" for i in range(995, 1000)]
    assert summary.lines == 1000


def test_long_lines_are_clipped_in_tail_and_traceback(tmp_path):
    long_error = "RuntimeError: " + "x" * 10_000
    log = write_log(tmp_path, 'Traceback (most recent call last):\n  File "a.py", line 1\n' + long_error + "\n")
    summary = summarize_log(log)
    assert summary.error.startswith("RuntimeError: xxx")
    assert len(summary.error) < LINE_CHARS + 40
    assert all(len(line) < LINE_CHARS + 40 for line in summary.tail + summary.traceback)


def test_enormous_line_without_newline_stays_bounded(tmp_path):
    log = tmp_path / "output.log"
    size = 50 * 1024 * 1024
    with open(log, "wb") as f:
        f.write(b"loss=0.1\nacc=0.7 ")
        for _ in range(size // 2**20):
            f.write(b"y" * 2**20)
    tracemalloc.start()
    try:
        summary = summarize_log(log)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"peak Python allocation {peak} bytes for a 50 MB line"
    assert summary.bytes == log.stat().st_size
    assert summary.lines == 2
    assert summary.metrics == {"loss": 0.1, "acc": 0.7}
    assert summary.tail[0] == "loss=0.1"
    assert summary.tail[1].startswith("acc=0.7 yyy")
    assert len(summary.tail[1]) < LINE_CHARS + 40
    assert len(render_summary(1, "timeout", None, 7200.0, summary)) <= 4000


def test_lines_after_an_enormous_line_are_still_read(tmp_path):
    log = tmp_path / "output.log"
    with open(log, "wb") as f:
        f.write(b"acc=0.5 " + b"z" * (3 * 1024 * 1024) + b"\n")
        f.write(b"loss=0.2\n")
    summary = summarize_log(log)
    assert summary.lines == 2
    assert summary.metrics == {"acc": 0.5, "loss": 0.2}
    assert summary.tail[-1] == "loss=0.2"


def test_200_mb_log_is_summarised_in_bounded_memory(tmp_path):
    """Measured in a fresh interpreter, so the peak RSS is summarize_log's and not the test run's.

    The peak is VmHWM, not ru_maxrss: a child started by Python's subprocess (vfork, then exec) carries
    the parent's peak in ru_maxrss, so after a big test that number says nothing about summarize_log.
    """
    log = tmp_path / "output.log"
    write_log_of_size(log, 200)
    size = log.stat().st_size
    assert size > 199 * 1024 * 1024

    code = (
        "import json, re, sys\n"
        "from pathlib import Path\n"
        "from adapters.logs import summarize_log\n"
        "summary = summarize_log(Path(sys.argv[1]))\n"
        "peak_kb = int(re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text()).group(1))\n"
        "print(json.dumps({'peak_kb': peak_kb, 'metrics': summary.metrics, 'bytes': summary.bytes, 'tail': summary.tail}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", code, str(log)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    assert report["peak_kb"] < 150 * 1024, f"peak RSS {report['peak_kb'] // 1024} MB for a {size // 2**20} MB log"
    assert report["bytes"] == size
    # The last values write_log_of_size prints.
    assert report["metrics"] == pytest.approx({"train_loss": float(f"{1 / 300:.5f}"), "lr": 1e-4, "epoch": 2.0, "val_acc": 0.299, "test_accuracy": 0.987})
    assert report["tail"][-1] == "Test accuracy: 0.987"


# --- clip and render_summary ---


@pytest.mark.parametrize("budget", [0, 5, 20, 40, 100, 999])
def test_clip_respects_budget_exactly(budget):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    clipped = clip(text, budget)
    assert len(clipped) == budget


def test_clip_keeps_head_and_tail():
    text = "HEAD" + "-" * 5000 + "TAIL"
    clipped = clip(text, 200)
    assert len(clipped) == 200
    assert clipped.startswith("HEAD---")
    assert clipped.endswith("---TAIL")
    assert "characters cut" in clipped


def test_clip_leaves_short_text_alone():
    assert clip("short", 5) == "short"
    assert clip("", 0) == ""


def test_render_summary_shows_every_part():
    log = LogSummary(
        metrics={"loss": 0.25},
        metrics_source="log",
        error="ValueError: bad",
        traceback=["Traceback (most recent call last):", "ValueError: bad"],
        tail=["last line"],
        lines=10,
        bytes=100,
    )
    text = render_summary(3, "failed", 1, 12.34, log)
    assert text.startswith("Run 3: failed (exit 1) after 12.3 s; log 10 lines, 100 bytes.")
    assert "Metrics (log): loss=0.25" in text
    assert "Error: ValueError: bad" in text
    assert "Traceback:\nTraceback (most recent call last):" in text
    assert text.endswith("Log tail (last 1 lines):\nlast line")
    assert "no exit code" in render_summary(3, "timeout", None, 1.0, LogSummary())
    assert "Metrics (none): none found" in render_summary(3, "timeout", None, 1.0, LogSummary())


@pytest.mark.parametrize("budget", [300, 1000, 4000])
def test_render_summary_stays_under_budget(budget):
    log = LogSummary(
        metrics={f"metric_{i}": i / 7 for i in range(MAX_METRICS)},
        metrics_source="log",
        error="RuntimeError: " + "e" * LINE_CHARS,
        traceback=["  " + "t" * LINE_CHARS] * 40,
        tail=["l" * LINE_CHARS] * 30,
        lines=10**9,
        bytes=10**12,
    )
    text = render_summary(12, "failed", -9, 7200.0, log, budget=budget)
    assert len(text) <= budget
    assert text.startswith("Run 12: failed (exit -9)")
    assert text.endswith("l" * 10)


# --- progress lines ---


@pytest.mark.parametrize(
    ("line", "shown", "fraction"),
    [
        ("  45%|████▌     | 450/1000 [00:12<00:15, 36.2it/s]", "450/1000 it (45%, 00:15 left)", 0.45),
        ("Epoch 3:  45%|████▌     | 450/1000 [00:12<00:15, 36.2it/s, loss=0.3]", "Epoch 3: 450/1000 it (45%, 00:15 left)", 0.45),
        ("  0%|          | 0/1000 [00:00<?, ?it/s]", "0/1000 it (0%)", 0.0),
        ("train: 100%|##########| 1.2k/1.2k [01:02:03<00:00, 3.21batch/s]", "train: 1.2k/1.2k batch (100%, 00:00 left)", 1.0),
        (" 10%|#         | 1/10\r 50%|#####     | 5/10\r", "5/10 it (50%)", 0.5),  # redrawn: what a terminal shows
        ("epoch 3/10", "epoch 3/10 (30%)", 0.3),
        ("Epoch [3/10] loss: 0.41", "epoch 3/10 (30%)", 0.3),
        ("EPOCH 3 / 10 - val_acc=0.9", "epoch 3/10 (30%)", 0.3),
        ("step 1200/5000 loss=0.2", "step 1200/5000 (24%)", 0.24),
        ("Iteration 40/100", "iter 40/100 (40%)", 0.4),
        ("iter: 40/100", "iter 40/100 (40%)", 0.4),
        ("epoch 2/5 step 300/1000", "step 300/1000 (30%)", 0.3),  # the innermost counter
    ],
)
def test_parse_progress_reads_tqdm_bars_and_counters(line, shown, fraction):
    progress = parse_progress(line)
    assert progress is not None
    assert str(progress) == shown
    assert progress.fraction == pytest.approx(fraction)


@pytest.mark.parametrize("line", ["epoch=3 loss=0.41", "lr=1/3", "saved to runs/3/10", "date 2024/10/12", "epoch 12/10", "step 0/0", "", "50% done"])
def test_parse_progress_leaves_other_lines_alone(line):
    assert parse_progress(line) is None


def test_a_bars_own_estimate_of_the_time_left_is_read_in_seconds():
    assert parse_progress("45%|####| 450/1000 [00:12<01:02:15, 36.2it/s]").left_s == 3735
    assert parse_progress("epoch 3/10").left_s is None


def test_latest_progress_is_the_newest_line_reporting_one_among_the_last_lines():
    lines = ["epoch 1/10", "loss=0.5", "epoch 2/10", "val_acc=0.7", "saving"]
    assert str(latest_progress(lines)) == "epoch 2/10 (20%)"
    assert latest_progress(["epoch 1/10", *["noise"] * PROGRESS_LOOKBACK]) is None, "only the newest lines are looked at"
    assert latest_progress([]) is None


def test_run_progress_reads_the_end_of_the_log(tmp_path: Path):
    redrawn = "".join(f"{p}%|#| {p}/100 [00:10<00:{60 - p // 2:02d}]\r" for p in range(0, 41, 10))  # a bar not ended yet
    log = write_log(tmp_path, "start\n" + "x" * 200_000 + "\nepoch 1/10\n" + redrawn)
    assert run_progress(log) == "40/100 it (40%, 00:40 left)"

    write_log(tmp_path, "epoch=1 loss=0.3\nEpoch [7/20] loss: 0.2\nsaving checkpoint\n")
    assert run_progress(log) == "epoch 7/20 (35%)"


def test_run_progress_of_a_log_without_progress_or_without_a_log_is_none(tmp_path: Path):
    assert run_progress(write_log(tmp_path, "epoch=1 loss=0.3\n")) is None
    assert run_progress(tmp_path / "missing.log") is None


# --- a missing package ---

MISSING = """\
Traceback (most recent call last):
  File "/exp/run_2/train.py", line 3, in <module>
    import xgboost as xgb
ModuleNotFoundError: No module named 'xgboost'
"""


def test_a_missing_module_is_named_with_where_to_install_it(tmp_path: Path):
    error = summarize_log(write_log(tmp_path, MISSING)).error

    assert missing_module(error) == "xgboost"
    assert missing_package_hint(error, "/opt/env/bin/python") == (
        "module 'xgboost' is not installed in the training environment (TRAIN_PYTHON: /opt/env/bin/python): "
        "install it there, e.g. `/opt/env/bin/python -m pip install xgboost`, or tell the model not to use it"
    )


def test_the_hint_names_the_package_to_install_when_it_differs_from_the_module():
    hint = missing_package_hint("ModuleNotFoundError: No module named 'sklearn.ensemble'", "/my envs/python")
    assert hint is not None
    assert "module 'sklearn.ensemble' is not installed" in hint and "`'/my envs/python' -m pip install scikit-learn`" in hint


@pytest.mark.parametrize("error", ["", "ValueError: shapes do not match", "ImportError: cannot import name 'foo' from 'bar'", "timed out after 60 s"])
def test_other_errors_get_no_missing_package_hint(error):
    assert missing_module(error) is None and missing_package_hint(error, "python") is None


@pytest.mark.parametrize("line", ["10%|##| 1/10 [00:01<1::2, 3.0it/s]", "10%|##| 1/10 [00:01<:, 3.0it/s]", "10%|##| 1/10 [::<::]"])
def test_a_mangled_time_left_never_breaks_the_progress(line: str):
    progress = parse_progress(line)  # a line train.py prints must never end the run (it used to raise in left_s)
    assert progress is not None and progress.fraction == pytest.approx(0.1)
    assert progress.left_s is None or progress.left_s >= 0
