"""How far a run's numbers can be trusted: a self-report the grade contradicts, or (without a grader) numbers that look
too good to be true. Pure functions of the metrics, so the record, the report and the analyst's prompt say the same.

A flag is a line of doubt, not a verdict: a perfect score can be real. The judges (goal, best, search) never read
flags; with a grader they read the graded metrics, which the script cannot make up.
"""

from __future__ import annotations

import re

from adapters.logs import exact_number
from goal import LOWER_IS_BETTER
from search import failure_signature
from state import RunRecord

FLAG_MARK = " ⚑"
"""After the status of a run whose numbers are in doubt (it has flags), in the report, the views and view_tasks.py."""
GRADER_FAILURES = 3
"""The grader failing the same way on this many graded runs in a row stops the experiment (fatal): grade.py needs a fix."""

PERFECT_AT_ONE = re.compile(r"(?:^|[_./-])(?:acc|accuracy|f1|auc|roc_auc|precision|recall|r2|iou|dice|exact_match)(?:$|[_./-])", re.IGNORECASE)
"""Scores whose best possible value is 1."""
PERFECT_AT_ZERO = re.compile(r"(?:^|[_./-])(?:loss|err|error|mse|rmse|mae|wer|cer|perplexity)(?:$|[_./-])", re.IGNORECASE)
"""Losses and errors whose best possible value is 0 (a time of 0 is merely fast: not listed)."""
TRAINING = re.compile(r"^(?:train|training)(?:$|[_./-])", re.IGNORECASE)
"""A metric on the training data: a perfect one is common and proves nothing."""
TEST_WORD = re.compile(r"(?:^|(?<=[_./-]))test(?=$|[_./-])", re.IGNORECASE)
VALIDATION_WORDS = ("val", "valid", "validation", "dev")
WIDE_GAP = 0.1
"""A test metric better than its validation twin by more than this (absolute for scores up to 1, relative above) is flagged."""


def disagreements(graded: dict[str, float], reported: dict[str, float], tolerance: float) -> list[str]:
    """A line for each metric both the grader and the script gave whose values differ by more than `tolerance`
    (absolute, relative to the grade above 1): `self-reported test_accuracy 0.99, graded 0.71`."""
    lines = []
    for name, grade in graded.items():
        if name in reported and abs(reported[name] - grade) > tolerance * max(1.0, abs(grade)):
            lines.append(f"self-reported {name} {exact_number(reported[name])}, graded {exact_number(grade)}")
    return lines


def suspicious(metrics: dict[str, float]) -> list[str]:
    """Numbers that look too good, a line each: a perfect score on anything but the training data, and a test metric
    far better than the same run's validation metric (the test data leaking into training or model selection)."""
    lines = []
    for name, value in metrics.items():
        if TRAINING.search(name):
            continue
        if (PERFECT_AT_ONE.search(name) and value == 1.0) or (PERFECT_AT_ZERO.search(name) and value == 0.0):
            lines.append(f"perfect score {name} {exact_number(value)}: check that it is not measured on training data or leaked labels")
    for name, value in metrics.items():
        if not TEST_WORD.search(name):
            continue
        for word in VALIDATION_WORDS:
            twin = TEST_WORD.sub(word, name)
            if twin not in metrics:
                continue
            validation = metrics[twin]
            better = validation - value if LOWER_IS_BETTER.search(name) else value - validation
            if better > WIDE_GAP * max(1.0, abs(validation)):
                lines.append(f"{name} {exact_number(value)} is far better than {twin} {exact_number(validation)}: does the test data leak into training?")
            break
    return lines


def grader_failing(runs: list[RunRecord]) -> list[RunRecord]:
    """The latest GRADER_FAILURES graded runs when grade.py failed on each of them the same way (search.failure_signature:
    numbers, paths and quoted values aside), else []. Graded runs are those it ran on (ok or grade_failed); a run whose
    script failed was not graded and breaks no row."""
    graded = [run for run in runs if "reported" in run and run["status"] in ("ok", "grade_failed")]
    latest = graded[-GRADER_FAILURES:]
    if len(latest) < GRADER_FAILURES or any(run["status"] != "grade_failed" for run in latest):
        return []
    return latest if len({failure_signature(run) for run in latest}) == 1 else []
