"""Tests for trust.py: a self-report the grade contradicts, numbers too good to be true, a grader failing the same way."""

from __future__ import annotations

import pytest

from state import RunRecord
from trust import GRADER_FAILURES, disagreements, grader_failing, suspicious

# disagreements


def test_a_self_report_far_from_its_grade_is_a_line_naming_both():
    assert disagreements({"test_accuracy": 0.71}, {"test_accuracy": 0.99}, 0.01) == ["self-reported test_accuracy 0.99, graded 0.71"]


@pytest.mark.parametrize(
    ("graded", "reported", "flagged"),
    [
        (0.7, 0.709, False),  # below 1 the tolerance is absolute
        (0.7, 0.711, True),
        (0.0, 0.011, True),
        (0.0, -0.009, False),
        (100.0, 100.9, False),  # above 1 it is relative to the grade: 1% of 100
        (100.0, 101.1, True),
        (-200.0, -198.5, False),  # relative to the grade's size
        (-200.0, -197.5, True),
        (5.0, 5.0, False),
    ],
)
def test_the_tolerance_is_absolute_below_one_and_relative_above(graded: float, reported: float, flagged: bool):
    assert bool(disagreements({"m": graded}, {"m": reported}, 0.01)) is flagged


def test_only_the_names_both_gave_are_compared():
    graded = {"accuracy": 0.7, "f1": 0.6}
    reported = {"accuracy": 0.7, "val_accuracy": 0.1, "loss": 9.0}
    assert disagreements(graded, reported, 0.01) == []
    assert disagreements(graded, {}, 0.01) == [] and disagreements({}, reported, 0.01) == []


def test_each_disagreeing_metric_is_its_own_line():
    lines = disagreements({"accuracy": 0.5, "f1": 0.4, "auc": 0.9}, {"accuracy": 0.9, "f1": 0.8, "auc": 0.9}, 0.05)
    assert lines == ["self-reported accuracy 0.9, graded 0.5", "self-reported f1 0.8, graded 0.4"]


# suspicious


@pytest.mark.parametrize(
    "name",
    ["accuracy", "val_accuracy", "test_acc", "test/acc", "eval.f1", "roc_auc", "val-auc", "r2", "exact_match", "Accuracy"],
)
def test_a_perfect_score_off_the_training_data_is_flagged(name: str):
    (line,) = suspicious({name: 1.0})
    assert line.startswith(f"perfect score {name} 1:")


@pytest.mark.parametrize("name", ["loss", "val_loss", "test/mse", "rmse", "error", "wer"])
def test_a_perfect_loss_off_the_training_data_is_flagged(name: str):
    (line,) = suspicious({name: 0.0})
    assert line.startswith(f"perfect score {name} 0:")


@pytest.mark.parametrize(
    "metrics",
    [
        {"train_accuracy": 1.0},
        {"training_acc": 1.0},
        {"train/acc": 1.0},
        {"train_loss": 0.0},
        {"train_loss": 0},
        {"accuracy": 0.999},
        {"loss": 0.001},
        {"time_s": 0.0},  # fast, not perfect
        {"epochs": 1.0},
        {"answer_f1s": 1.0},
        {},
    ],
)
def test_what_is_not_a_perfect_score_is_not_flagged(metrics: dict[str, float]):
    assert suspicious(metrics) == []


@pytest.mark.parametrize(
    ("test", "validation"),
    [
        ("test_accuracy", "val_accuracy"),
        ("test_acc", "valid_acc"),
        ("test_acc", "validation_acc"),
        ("test_acc", "dev_acc"),
        ("test/acc", "val/acc"),
        ("acc_test", "acc_val"),
        ("eval.test.f1", "eval.val.f1"),
    ],
)
def test_a_test_score_far_above_its_validation_twin_is_flagged(test: str, validation: str):
    (line,) = suspicious({test: 0.95, validation: 0.80})
    assert line.startswith(f"{test} 0.95 is far better than {validation} 0.8")
    assert suspicious({test: 0.85, validation: 0.80}) == []  # close
    assert suspicious({test: 0.60, validation: 0.80}) == []  # worse is no leak


def test_for_losses_lower_is_better():
    (line,) = suspicious({"test_loss": 0.1, "val_loss": 0.5})
    assert line.startswith("test_loss 0.1 is far better than val_loss 0.5")
    assert suspicious({"test_loss": 0.45, "val_loss": 0.5}) == []
    assert suspicious({"test_loss": 0.9, "val_loss": 0.5}) == []  # a worse test loss is no leak


def test_the_gap_is_relative_above_one():
    assert suspicious({"test_perplexity": 18.5, "val_perplexity": 20.0}) == []  # 7.5% better
    assert len(suspicious({"test_perplexity": 15.0, "val_perplexity": 20.0})) == 1  # 25% better


def test_names_where_test_is_part_of_a_word_have_no_twin():
    assert suspicious({"contest_acc": 0.99, "conval_acc": 0.5}) == []
    assert suspicious({"latest_acc": 0.99, "laval_acc": 0.5}) == []


def test_a_test_metric_without_a_validation_twin_is_not_compared():
    assert suspicious({"test_accuracy": 0.99, "val_loss": 0.01}) == []


def test_a_perfect_test_score_far_above_validation_gives_both_lines():
    lines = suspicious({"test_accuracy": 1.0, "val_accuracy": 0.7})
    assert len(lines) == 2 and lines[0].startswith("perfect score test_accuracy") and lines[1].startswith("test_accuracy 1 is far better")


# grader_failing


def run(number: int, status: str, error: str = "", reported: dict[str, float] | None = None) -> RunRecord:
    record = RunRecord(number=number, status=status, exit_code=0, duration_s=1.0, metrics={}, error=error, operator="draft", parent=None)
    if reported is not None:
        record["reported"] = reported
    return record


def failed_grade(number: int, error: str | None = None) -> RunRecord:
    return run(number, "grade_failed", error or f"grade.py failed (exit code 1): FileNotFoundError: run_{number}/submission.csv", {})


def test_three_graded_runs_failing_the_same_way_modulo_numbers_stop():
    runs = [failed_grade(1), failed_grade(2), failed_grade(3)]
    assert GRADER_FAILURES == 3
    assert grader_failing(runs) == runs


def test_fewer_than_three_are_not_yet_a_row():
    assert grader_failing([failed_grade(1), failed_grade(2)]) == []
    assert grader_failing([]) == []


def test_different_errors_are_no_row():
    runs = [failed_grade(1), failed_grade(2, "grade.py timed out after 600 s (GRADE_TIMEOUT_SECONDS)"), failed_grade(3)]
    assert grader_failing(runs) == []


def test_only_the_latest_three_count():
    runs = [run(1, "ok", reported={}), failed_grade(2), failed_grade(3), failed_grade(4)]
    assert grader_failing(runs) == runs[1:]
    older_differs = [failed_grade(1, "grade.py printed no JSON object of metrics as its last line of stdout"), *runs[1:]]
    assert grader_failing(older_differs) == runs[1:]


def test_a_failed_script_in_between_does_not_break_the_row():
    script_failed = run(3, "failed", "ValueError: bad shape", {"loss": 0.3})
    timed_out = run(5, "timeout", "stopped at TIMEOUT_SECONDS", {})
    runs = [failed_grade(1), failed_grade(2), script_failed, failed_grade(4), timed_out]
    assert grader_failing(runs) == [runs[0], runs[1], runs[3]]


def test_a_graded_run_that_went_well_breaks_the_row():
    runs = [failed_grade(1), failed_grade(2), run(3, "ok", reported={"accuracy": 0.9}), failed_grade(4), failed_grade(5)]
    assert grader_failing(runs) == []
    assert grader_failing([*runs, failed_grade(6)]) == runs[3:] + [failed_grade(6)]


def test_runs_without_a_self_report_are_not_graded_ones_and_are_ignored():
    ungraded_ok = run(2, "ok")  # from before the experiment had a grader
    runs = [failed_grade(1), ungraded_ok, failed_grade(3), failed_grade(4)]
    assert grader_failing(runs) == [runs[0], runs[2], runs[3]]
