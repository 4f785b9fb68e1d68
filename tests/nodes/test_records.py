"""records: the goal, the ranking of runs, tasks and findings as bounded prompt text, and the runs table with exact numbers."""

from __future__ import annotations

import re

import pytest
from fakes import make_run, make_task

from nodes.analyze import findings_section
from nodes.prompts import BUDGET
from nodes.records import (
    condensed_section,
    exact_number,
    findings_digest,
    run_line,
    runs_table,
    tasks_text,
)
from state import RunAnalysis, RunRecord


def test_tasks_text_lists_open_tasks_first():
    tasks = [
        make_task(1, "done one", status="done", runs=[1, 2]),
        make_task(2, "dropped one", status="dropped"),
        make_task(3, "todo three", notes="why"),
        make_task(4, "working", status="in_progress", runs=[2]),
        make_task(5, "todo five"),
    ]
    assert tasks_text(tasks, 10_000).splitlines() == [
        "#4 [in_progress] working (runs 2)",
        "#3 [todo] todo three — why",
        "#5 [todo] todo five",
        "#1 [done] done one (runs 1, 2)",
        "#2 [dropped] dropped one",
    ]


def test_only_the_latest_finished_tasks_are_listed():
    tasks = [make_task(i, f"finished {i}", status="done" if i % 2 else "dropped", runs=[i]) for i in range(1, 41)]
    tasks.append(make_task(41, "still open"))
    lines = tasks_text(tasks, 10_000).splitlines()
    assert lines == [
        "#41 [todo] still open",
        "#38 [dropped] finished 38 (runs 38)",
        "#39 [done] finished 39 (runs 39)",
        "#40 [dropped] finished 40 (runs 40)",
        "(and 37 earlier finished tasks, done or dropped: see tasks.json)",
    ]


def test_tasks_text_within_budget():
    tasks = [make_task(i, "t" * 100, notes="n" * 100) for i in range(1, 201)]
    text = tasks_text(tasks, 4_000)
    assert len(text) <= 4_000
    assert text.startswith("#1 [todo]") and text.rstrip().endswith("n" * 20)


def test_tasks_text_without_tasks():
    assert tasks_text([], 100) == "(no tasks)"


# the findings digest


def section(run: int, change: str = "", findings: tuple[str, ...] = (), summary: str = "It ran.") -> str:
    """A KEY_FINDINGS section as analyze writes it, of a run improving the one before it (run 1 a draft)."""
    analysis = RunAnalysis(summary=summary, change=change, findings=list(findings), goal_achieved=False)
    return findings_section(make_run(run), analysis)


def heading(run: int) -> str:
    """How section(run) names its run."""
    return f"Run {run} (ok, {'draft' if run == 1 else f'improve of run {run - 1}'})"


def test_digest_is_every_section_when_they_fit():
    assert findings_digest(["a", "b", "c"], 1_000) == "a\n\nb\n\nc"


def test_digest_empty():
    assert findings_digest([], 1_000) == "(none yet)"


def test_digest_keeps_the_newest_in_full_and_condenses_the_older():
    sections = [section(n, change=f"change {n}", findings=(f"finding {n}", "second point"), summary="x" * 280) for n in range(1, 11)]
    text = findings_digest(sections, 1_500)
    assert len(text) <= 1_500
    assert text.endswith(sections[-2] + "\n\n" + sections[-1])  # the newest whole, as many as fit in half the budget
    head = text.split("\n\n")[0].splitlines()
    assert head[0] == "(8 earlier sections omitted) — a line each, oldest first:"
    assert head[1:] == [f"{heading(n)}: change {n} — finding {n}" for n in range(1, 9)]


def test_digest_at_run_50_stays_within_budget_and_still_names_the_early_runs():
    sections = [
        section(n, change=f"lr {n}e-4 and width {n * 8}", findings=(f"val_accuracy {n / 100} at epoch {n}", "more detail " * 20), summary="s " * 200)
        for n in range(1, 51)
    ]
    text = findings_digest(sections, BUDGET["findings"])
    assert len(text) <= BUDGET["findings"]
    assert f"## {heading(50)}" in text and sections[-1] in text  # the latest findings keep their detail
    for n in (1, 2, 3, 25):
        assert f"\n{heading(n)}: lr {n}e-4 and width {n * 8} — val_" in text  # the heading's origin leaves the finding little room
    assert all(heading(n) in text for n in range(1, 51))  # every run named, the newest in full
    assert text.index(heading(1)) < text.index(heading(2)) < text.index("## Run 50")
    # And it does not grow with the runs: 50 more sections take the same room.
    assert len(findings_digest(sections + sections, BUDGET["findings"])) <= BUDGET["findings"]


def test_digest_drops_the_oldest_lines_with_a_note_when_even_short_lines_overflow():
    sections = [section(n, change="c" * 100) for n in range(1, 401)]
    text = findings_digest(sections, 6_000)
    assert len(text) <= 6_000
    match = re.match(
        r"\((\d+) earlier sections omitted\) — a line each, oldest first; the (\d+) oldest only in KEY_FINDINGS.md:\nRun (\d+) \(ok, improve of run \d+\): ccc",
        text,
    )
    condensed, dropped, first_shown = map(int, match.groups())
    assert first_shown == dropped + 1 and condensed > dropped > 0
    assert all(heading(n) in text for n in range(first_shown, 401)) and heading(1) not in text


def test_digest_cuts_one_huge_newest_section_to_what_is_left():
    text = findings_digest(["## Run 1\nsmall", "## Run 2\n" + "z" * 50_000], 1_000)
    assert text.startswith("(1 earlier sections omitted) — a line each, oldest first:\nRun 1: small\n\n## Run 2")
    assert "characters cut" in text and len(text) == 1_000


def test_condensed_section_without_change_takes_the_summary():
    assert condensed_section("## Run 3 (failed)\n\nCrashed on load.\n", 200) == "Run 3 (failed): Crashed on load."
    assert condensed_section("## Run 3 (ok)\n\n" + "w" * 500, 40) == "Run 3 (ok): " + "w" * 27 + "…"


# the ranking and the report's numbers


@pytest.mark.parametrize(
    ("value", "text"), [(0.1, "0.1"), (42.0, "42"), (1e-05, "1e-05"), (0.30000000000000004, "0.30000000000000004"), (-3.5, "-3.5"), (1e20, "1e+20")]
)
def test_exact_number_reads_back_as_the_same_float(value, text):
    assert exact_number(value) == text and float(text) == value


def test_run_line_and_table():
    runs = [
        make_run(1, metrics={"accuracy": 0.5}),
        make_run(2, status="failed", error="OSError: x|y"),
        make_run(3, metrics={"accuracy": 0.7, "loss": 0.123456789}),
    ]
    assert run_line(runs[1]) == "run 2: failed, 2 s, none found, error: OSError: x|y"
    table = runs_table(runs, "accuracy >= 0.9", {1: "baseline", 3: "wider | deeper\nnet"}).splitlines()
    assert table[0] == "| Run | Parent | Operator | Status | Duration | accuracy | loss | Error | What changed |"
    assert table[2:] == [
        "| 1 | — | draft | ok | 1.5 s | 0.5 | — |  | baseline |",
        "| 2 | 1 | improve | failed | 1.5 s | — | — | OSError: x\\|y |  |",
        "| 3 ★ | 2 | improve | ok | 1.5 s | 0.7 | 0.123456789 |  | wider \\| deeper net |",
    ]
    assert "★" not in runs_table([make_run(1)], "")


def test_runs_table_says_where_each_run_ran_when_the_records_know():
    on_ray = {**make_run(1, metrics={"accuracy": 0.5}), "node": "node-2", "gpus": ["0", "1"]}
    on_cpu = {**make_run(2, metrics={"accuracy": 0.6}), "node": "node-3", "gpus": []}
    here = {**make_run(3, metrics={"accuracy": 0.7}), "gpus": ["3"]}
    cancelled = make_run(4, status="cancelled")

    table = runs_table([on_ray, on_cpu, here, cancelled], "accuracy >= 0.9").splitlines()

    assert table[0] == "| Run | Parent | Operator | Status | Duration | Where | accuracy | What changed |"
    assert [row.split(" | ")[5] for row in table[2:6]] == ["node-2 · GPUs 0,1", "node-3 · CPU", "GPU 3", "—"]
    assert "Where" not in runs_table([make_run(1)], "")  # a local run on the CPU: nothing to say


def test_runs_table_puts_metrics_past_the_columns_together():
    metrics = {f"m{i}": float(i) for i in range(8)}
    table = runs_table([make_run(1, metrics=metrics)], "m7 >= 1").splitlines()
    assert table[0] == "| Run | Parent | Operator | Status | Duration | m7 | m0 | m1 | m2 | m3 | m4 | Other metrics | What changed |"
    assert table[2] == "| 1 ★ | — | draft | ok | 1.5 s | 7 | 0 | 1 | 2 | 3 | 4 | m5=5, m6=6 |  |"


def test_runs_table_says_which_run_each_builds_on_and_how():
    runs = [
        make_run(1, metrics={"accuracy": 0.6}, parent=None),
        make_run(2, status="failed", error="KeyError: 'label'", parent=None),
        make_run(3, status="timeout", parent=None),
        make_run(4, metrics={"accuracy": 0.8}, operator="debug", parent=2),
        make_run(5, metrics={"accuracy": 0.9}, operator="improve", parent=4),
        make_run(6, metrics={"accuracy": 0.7}, operator="improve", parent=1),
    ]
    rows = [line.split(" | ")[:4] for line in runs_table(runs, "accuracy >= 0.95").splitlines()[2:]]
    assert rows == [
        ["| 1", "—", "draft", "ok"],
        ["| 2", "—", "draft", "failed"],
        ["| 3", "—", "draft", "timeout"],
        ["| 4", "2", "debug", "ok"],
        ["| 5 ★", "4", "improve", "ok"],
        ["| 6", "1", "improve", "ok"],
    ]


# runs in flight: cancelled when another run ended the experiment


def cancelled_run(number: int, parent: int | None, metrics: dict[str, float] | None = None) -> RunRecord:
    """A run stopped in flight when another run ended the experiment, as execute.stop_runs records it."""
    run = make_run(number, status="cancelled", metrics=metrics, error="cancelled: the experiment stopped (goal_met) while it ran", parent=parent)
    return RunRecord(**{**run, "exit_code": None})


def test_run_line_says_a_cancelled_run_was_stopped_and_its_metrics_are_from_then():
    assert run_line(cancelled_run(4, parent=1, metrics={"accuracy": 0.97})) == (
        "run 4: cancelled (the experiment stopped (goal_met) while it ran), 2 s, when stopped: accuracy=0.97"
    )
    assert run_line(cancelled_run(5, parent=None)) == "run 5: cancelled (the experiment stopped (goal_met) while it ran), 2 s, when stopped: none found"
    assert "error" not in run_line(cancelled_run(5, parent=None))


def test_runs_table_marks_cancelled_runs_and_never_stars_one():
    # Runs ended out of order: 3 met the goal while 2 and 4 were in flight; 2 had got further than 3 when stopped.
    runs = [
        make_run(1, metrics={"accuracy": 0.8}, parent=None),
        cancelled_run(2, parent=1, metrics={"accuracy": 0.99}),
        make_run(3, metrics={"accuracy": 0.96}, parent=1),
        cancelled_run(4, parent=3),
    ]
    table = runs_table(runs, "accuracy >= 0.95").splitlines()
    why = "cancelled: the experiment stopped (goal_met) while it ran"
    assert table[2:6] == [
        "| 1 | — | draft | ok | 1.5 s | 0.8 |  |  |",
        f"| 2 | 1 | improve | cancelled | 1.5 s | 0.99 | {why} |  |",
        "| 3 ★ | 1 | improve | ok | 1.5 s | 0.96 |  |  |",
        f"| 4 | 3 | improve | cancelled | 1.5 s | — | {why} |  |",
    ]
    assert table[6:] == [
        "",
        "Runs 2, 4 were stopped in flight when the experiment ended: their metrics are the last values their logs showed, and they are not ranked.",
    ]
    assert runs_table(runs[:2], "accuracy >= 0.95").splitlines()[-1] == (
        "Run 2 was stopped in flight when the experiment ended: its metrics are the last values its log showed, and it is not ranked."
    )
    assert "stopped in flight" not in runs_table(runs[:1], "accuracy >= 0.95")


# graded experiments: the grade judges, the self-report stands beside it; flags mark numbers in doubt


def graded_run(
    number: int, graded: dict[str, float], reported: dict[str, float], status: str = "ok", error: str = "", flags: tuple[str, ...] = ()
) -> RunRecord:
    """A run of an experiment with a grade.py, as training.write_record leaves it."""
    run = RunRecord(**make_run(number, status=status, metrics=graded, error=error), reported=reported)
    return RunRecord(**run, flags=list(flags)) if flags else run


def test_runs_table_of_a_graded_experiment_shows_the_grade_and_the_self_report_beside_it():
    runs = [
        graded_run(1, {"accuracy": 0.71}, {"accuracy": 0.99, "loss": 0.01}, flags=("self-reported accuracy 0.99, graded 0.71",)),
        graded_run(2, {}, {"accuracy": 0.9}, status="grade_failed", error="grade.py timed out after 60 s (GRADE_TIMEOUT_SECONDS)"),
        graded_run(3, {"accuracy": 0.8}, {"accuracy": 0.8, "note|x": 1.0}),
        graded_run(4, {}, {}, status="failed", error="ValueError: boom"),
    ]

    table = runs_table(runs, "accuracy >= 0.9").splitlines()

    assert table[0] == "| Run | Parent | Operator | Status | Duration | accuracy | Self-reported | Error | What changed |"
    assert table[2:6] == [
        "| 1 | — | draft | ok ⚑ | 1.5 s | 0.71 | accuracy=0.99, loss=0.01 |  |  |",
        "| 2 | 1 | improve | grade_failed | 1.5 s | — | accuracy=0.9 | grade.py timed out after 60 s (GRADE_TIMEOUT_SECONDS) |  |",
        "| 3 ★ | 2 | improve | ok | 1.5 s | 0.8 | accuracy=0.8, note\\|x=1 |  |  |",
        "| 4 | 3 | improve | failed | 1.5 s | — | none | ValueError: boom |  |",
    ]
    assert table[6:] == [
        "",
        "The metric columns are what grade.py graded (— where it graded nothing: the script failed, or grade.py did); "
        "the Self-reported column is what each run's train.py reported about itself.",
    ]


def test_a_cancelled_run_of_a_graded_experiment_is_said_to_have_only_a_self_report():
    runs = [graded_run(1, {"accuracy": 0.8}, {"accuracy": 0.8}), RunRecord(**cancelled_run(2, parent=1), reported={"accuracy": 0.85})]
    assert runs_table(runs, "accuracy >= 0.9").splitlines()[-1] == (
        "Run 2 was stopped in flight when the experiment ended: its self-report is the last values its log showed, and it is not ranked."
    )


def test_without_a_grader_the_columns_stay_and_only_a_flag_marks_the_status():
    flagged = RunRecord(**make_run(1, metrics={"test_accuracy": 1.0}), flags=["perfect score test_accuracy 1: check that it is not measured on training data"])
    table = runs_table([flagged, make_run(2, metrics={"test_accuracy": 0.9})], "test_accuracy >= 0.95").splitlines()
    assert table[0] == "| Run | Parent | Operator | Status | Duration | test_accuracy | What changed |"
    assert table[2:] == ["| 1 ★ | — | draft | ok ⚑ | 1.5 s | 1 |  |", "| 2 | 1 | improve | ok | 1.5 s | 0.9 |  |"]
