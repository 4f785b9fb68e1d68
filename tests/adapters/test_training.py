"""Tests for adapters/training.py's judge: a run's status, metrics and flags, from its self-report and its grade."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fakes import make_settings

from adapters.files import ExperimentFiles
from adapters.grader import GRADE_LOG
from adapters.training import Judged, judge


@pytest.fixture
def files(tmp_path: Path) -> ExperimentFiles:
    """An experiment with IDEA.md, private/test_labels.csv and run_1/ (a grader only where a test writes grade.py)."""
    root = tmp_path / "exp"
    (root / "run_1").mkdir(parents=True)
    (root / "IDEA.md").write_text("Classify; reach accuracy >= 0.9.")
    (root / "private").mkdir()
    (root / "private" / "test_labels.csv").write_text("id,label\n1,cat\n")
    return ExperimentFiles(root)


def write_grader(files: ExperimentFiles, source: str) -> None:
    (files.root / "grade.py").write_text(source)


PRINTS_071 = 'import json\nprint(json.dumps({"accuracy": 0.71}))\n'


# Without a grader: the self-report judges


def test_ungraded_metrics_are_the_self_report_with_its_flags(files: ExperimentFiles):
    judged = judge(files, make_settings(), 1, "ok", "", {"accuracy": 1.0, "train_accuracy": 1.0})
    assert judged.status == "ok" and judged.error == "" and judged.reported is None
    assert judged.metrics == {"accuracy": 1.0, "train_accuracy": 1.0}
    assert len(judged.flags) == 1 and judged.flags[0].startswith("perfect score accuracy 1")
    assert not (files.run_dir(1) / GRADE_LOG).exists()


def test_ungraded_failures_keep_their_status_and_error(files: ExperimentFiles):
    judged = judge(files, make_settings(), 1, "failed", "ValueError: bad", {"loss": 0.4})
    assert judged == Judged("failed", {"loss": 0.4}, "ValueError: bad")


def test_a_cancelled_run_gets_no_flags(files: ExperimentFiles):
    assert judge(files, make_settings(), 1, "cancelled", "", {"accuracy": 1.0}).flags == []


# With a grader: the grade judges, the self-report is kept beside


def test_graded_metrics_judge_and_a_contradicting_self_report_is_flagged(files: ExperimentFiles):
    write_grader(files, PRINTS_071)
    judged = judge(files, make_settings(), 1, "ok", "", {"accuracy": 0.99, "loss": 0.2})
    assert judged.status == "ok" and judged.error == ""
    assert judged.metrics == {"accuracy": 0.71}
    assert judged.reported == {"accuracy": 0.99, "loss": 0.2}
    assert judged.flags == ["self-reported accuracy 0.99, graded 0.71"]
    assert "accuracy" in (files.run_dir(1) / GRADE_LOG).read_text()


def test_a_self_report_within_the_tolerance_is_not_flagged(files: ExperimentFiles):
    write_grader(files, PRINTS_071)
    assert judge(files, make_settings(), 1, "ok", "", {"accuracy": 0.715}).flags == []
    assert judge(files, make_settings(grade_tolerance=0.001), 1, "ok", "", {"accuracy": 0.715}).flags == ["self-reported accuracy 0.715, graded 0.71"]


def test_a_graded_perfect_score_is_not_flagged_as_too_good(files: ExperimentFiles):
    write_grader(files, "print('{\"accuracy\": 1.0}')\n")
    assert judge(files, make_settings(), 1, "ok", "", {"accuracy": 1.0}).flags == []


@pytest.mark.parametrize("status", ["failed", "timeout"])
def test_a_run_that_did_not_end_well_is_not_graded(files: ExperimentFiles, status: str):
    write_grader(files, PRINTS_071)
    judged = judge(files, make_settings(), 1, status, "RuntimeError: CUDA out of memory", {"loss": 0.5})
    assert judged == Judged(status, {}, "RuntimeError: CUDA out of memory", {"loss": 0.5})
    assert not (files.run_dir(1) / GRADE_LOG).exists()


def test_a_grader_crash_is_grade_failed_with_its_failure(files: ExperimentFiles):
    write_grader(files, 'raise ValueError("boom")  # DISTINCTIVE-GRADER-SOURCE\n')
    judged = judge(files, make_settings(), 1, "ok", "", {"accuracy": 0.9})
    assert judged.status == "grade_failed"
    assert judged.metrics == {} and judged.reported == {"accuracy": 0.9}
    assert judged.error == "grade.py failed (exit code 1): ValueError: boom"


def test_a_grader_past_its_timeout_is_grade_failed(files: ExperimentFiles):
    write_grader(files, "import time\ntime.sleep(60)\n")
    began = time.monotonic()
    judged = judge(files, make_settings(grade_timeout_seconds=1), 1, "ok", "", {})
    assert judged.status == "grade_failed" and "timed out after 1 s" in judged.error
    assert time.monotonic() - began < 10


def test_what_the_scrub_removed_is_flagged_graded_or_not(files: ExperimentFiles):
    removed = ["submission.csv -> ../private/test_labels.csv"]
    write_grader(files, 'import json, sys\nopen(f"{sys.argv[1]}/submission.csv").read()\nprint(json.dumps({"accuracy": 1.0}))\n')
    judged = judge(files, make_settings(), 1, "ok", "", {"accuracy": 1.0}, removed=removed)
    assert judged.status == "grade_failed" and "FileNotFoundError" in judged.error
    assert judged.flags == ["removed from its folder before the runner read it: submission.csv -> ../private/test_labels.csv"]
    (files.root / "grade.py").unlink()
    assert judge(files, make_settings(), 1, "ok", "", {"accuracy": 0.5}, removed=removed).flags == judged.flags


def test_a_submission_grade_py_rejects_makes_the_run_failed_not_grade_failed(files: ExperimentFiles):
    write_grader(files, "import sys\nprint('no submission', file=sys.stderr)\nsys.exit(2)\n")
    judged = judge(files, make_settings(), 1, "ok", "", {"accuracy": 0.9})
    assert judged.status == "failed" and judged.error == "grade.py rejected the submission: no submission" and judged.metrics == {}


def test_the_grader_gets_no_llm_key_but_the_names_passed_on_purpose(files: ExperimentFiles, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-the-grader")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-on-purpose")
    write_grader(files, 'import json, os\nprint(json.dumps({n: int(n in os.environ) for n in ("OPENAI_API_KEY", "WANDB_API_KEY", "DATA_DIR")}))\n')
    judged = judge(files, make_settings(sandbox_env=("WANDB_API_KEY",)), 1, "ok", "", {})
    assert judged.metrics == {"openai_api_key": 0.0, "wandb_api_key": 1.0, "data_dir": 1.0}  # names as the goal reads them: lower case


def test_a_run_cancelled_while_it_is_graded_is_not_judged(files: ExperimentFiles):
    write_grader(files, "import time\ntime.sleep(60)\n")
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    try:
        assert judge(files, make_settings(), 1, "ok", "", {}, cancel) is None
    finally:
        timer.join()
