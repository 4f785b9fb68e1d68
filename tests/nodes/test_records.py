"""records: the goal, the best run, tasks and findings as bounded prompt text."""

from __future__ import annotations

import pytest
from fakes import make_run, make_task

from nodes.records import best_run, latest_findings, parse_goal, run_line, runs_table, tasks_text


@pytest.mark.parametrize(
    ("goal", "expected"),
    [
        ("test_accuracy >= 0.99", ("test_accuracy", ">=", 0.99)),
        ("Reach val_loss<0.1 on the held-out set", ("val_loss", "<", 0.1)),
        ("Accuracy > 95", ("accuracy", ">", 95.0)),
        ("loss <= 1e-3", ("loss", "<=", 0.001)),
        ("val/acc >= .9", ("val/acc", ">=", 0.9)),
        ("reward >= -1.5", ("reward", ">=", -1.5)),
        ("f1-score>=0.8", ("f1-score", ">=", 0.8)),
    ],
)
def test_parse_goal(goal, expected):
    assert parse_goal(goal) == expected


@pytest.mark.parametrize("goal", ["", None, "do well", "accuracy of ninety percent"])
def test_parse_goal_without_a_comparison(goal):
    assert parse_goal(goal) is None


def test_best_run_higher_is_better():
    runs = [
        make_run(1, metrics={"accuracy": 0.8}),
        make_run(2, metrics={"accuracy": 0.95}),
        make_run(3, status="failed"),
        make_run(4, metrics={"accuracy": 0.9}),
    ]
    assert best_run(runs, "accuracy >= 0.99")["number"] == 2


def test_best_run_lower_is_better():
    runs = [make_run(1, metrics={"loss": 0.3}), make_run(2, metrics={"loss": 0.1}), make_run(3, metrics={"loss": 0.2})]
    assert best_run(runs, "loss <= 0.05")["number"] == 2
    assert best_run(runs, "loss < 0.05")["number"] == 2


def test_best_run_none_without_goal_or_metric():
    runs = [make_run(1, metrics={"loss": 0.3})]
    assert best_run(runs, "accuracy >= 0.9") is None
    assert best_run(runs, "be good") is None
    assert best_run([], "loss <= 0.1") is None


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


def test_tasks_text_within_budget():
    tasks = [make_task(i, "t" * 100, notes="n" * 100) for i in range(1, 201)]
    text = tasks_text(tasks, 4_000)
    assert len(text) <= 4_000
    assert text.startswith("#1 [todo]") and text.rstrip().endswith("n" * 20)


def test_tasks_text_without_tasks():
    assert tasks_text([], 100) == "(no tasks)"


def test_latest_findings_keeps_the_newest_that_fit():
    sections = [f"## Run {n}\n" + "x" * 90 for n in range(1, 11)]  # 99 characters each
    text = latest_findings(sections, 350)  # 3 sections and their separators fit, not 4
    assert text.startswith("(7 earlier sections omitted)\n\n## Run 8\n")
    assert [line for line in text.splitlines() if line.startswith("## Run")] == ["## Run 8", "## Run 9", "## Run 10"]


def test_latest_findings_all_when_they_fit():
    assert latest_findings(["a", "b", "c"], 1_000) == "a\n\nb\n\nc"


def test_latest_findings_clips_one_huge_newest_section():
    text = latest_findings(["## Run 1\nsmall", "## Run 2\n" + "z" * 50_000], 1_000)
    assert text.startswith("(1 earlier sections omitted)\n\n## Run 2")
    assert "characters cut" in text
    assert len(text) <= 1_000 + len("(1 earlier sections omitted)\n\n")


def test_latest_findings_empty():
    assert latest_findings([], 1_000) == "(none yet)"


def test_run_line_and_table():
    runs = [make_run(1, metrics={"accuracy": 0.5}), make_run(2, status="failed", error="OSError: x"), make_run(3, metrics={"accuracy": 0.7})]
    assert run_line(runs[1]) == "run 2: failed, 2 s, none found, error: OSError: x"
    table = runs_table(runs, "accuracy >= 0.9").splitlines()
    assert table[2:] == ["| 1 | ok | 1.5 s | accuracy=0.5 |", "| 2 | failed | 1.5 s | none found |", "| 3 ★ | ok | 1.5 s | accuracy=0.7 |"]
    assert "★" not in runs_table(runs, "")


def test_goal_from_idea():
    from nodes.records import goal_from_idea

    assert goal_from_idea("Digits.\ngoal: test_accuracy >= 0.99\n") == "test_accuracy >= 0.99"
    assert goal_from_idea("  Goal:  val_loss<0.25 ") == "val_loss < 0.25"
    assert goal_from_idea("Reach a good accuracy, goals are for later.") is None
    for bad in ("goal: as good as possible", "goal: accuracy == 0.9", "goal: accuracy >= 0.9 on the test set"):
        with pytest.raises(ValueError, match="goal: <metric> <op> <number>"):
            goal_from_idea(bad)
