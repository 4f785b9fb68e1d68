"""records: the goal, the ranking of runs, tasks and findings as bounded prompt text, and the runs table with exact numbers."""

from __future__ import annotations

import re

import pytest
from fakes import make_run, make_task

from nodes.analyze import findings_section
from nodes.prompts import BUDGET
from nodes.records import (
    Ranking,
    best_ranked,
    best_run,
    condensed_section,
    exact_number,
    findings_digest,
    parse_goal,
    ranking,
    run_line,
    runs_table,
    tasks_text,
)
from state import RunAnalysis


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
    """A KEY_FINDINGS section as analyze writes it."""
    analysis = RunAnalysis(summary=summary, change=change, findings=list(findings), goal_achieved=False)
    return findings_section(make_run(run), analysis)


def test_digest_is_every_section_when_they_fit():
    assert findings_digest(["a", "b", "c"], 1_000) == "a\n\nb\n\nc"


def test_digest_empty():
    assert findings_digest([], 1_000) == "(none yet)"


def test_digest_keeps_the_newest_in_full_and_condenses_the_older():
    sections = [section(n, change=f"change {n}", findings=(f"finding {n}", "second point"), summary="x" * 300) for n in range(1, 11)]
    text = findings_digest(sections, 1_500)
    assert len(text) <= 1_500
    assert text.endswith(sections[-2] + "\n\n" + sections[-1])  # the newest whole, as many as fit in half the budget
    head = text.split("\n\n")[0].splitlines()
    assert head[0] == "(8 earlier sections omitted) — a line each, oldest first:"
    assert head[1:] == [f"Run {n} (ok): change {n} — finding {n}" for n in range(1, 9)]


def test_digest_at_run_50_stays_within_budget_and_still_names_the_early_runs():
    sections = [
        section(n, change=f"lr {n}e-4 and width {n * 8}", findings=(f"val_accuracy {n / 100} at epoch {n}", "more detail " * 20), summary="s " * 200)
        for n in range(1, 51)
    ]
    text = findings_digest(sections, BUDGET["findings"])
    assert len(text) <= BUDGET["findings"]
    assert "## Run 50 (ok)" in text and sections[-1] in text  # the latest findings keep their detail
    for n in (1, 2, 3, 25):
        assert f"\nRun {n} (ok): lr {n}e-4 and width {n * 8} — val_accuracy {n / 100}" in text
    assert all(f"Run {n} (ok)" in text for n in range(1, 51))  # every run named, the newest in full
    assert text.index("Run 1 (ok)") < text.index("Run 2 (ok)") < text.index("## Run 50")
    # And it does not grow with the runs: 50 more sections take the same room.
    assert len(findings_digest(sections + sections, BUDGET["findings"])) <= BUDGET["findings"]


def test_digest_drops_the_oldest_lines_with_a_note_when_even_short_lines_overflow():
    sections = [section(n, change="c" * 100) for n in range(1, 401)]
    text = findings_digest(sections, 6_000)
    assert len(text) <= 6_000
    match = re.match(r"\((\d+) earlier sections omitted\) — a line each, oldest first; the (\d+) oldest only in KEY_FINDINGS.md:\nRun (\d+) \(ok\): ccc", text)
    condensed, dropped, first_shown = map(int, match.groups())
    assert first_shown == dropped + 1 and condensed > dropped > 0
    assert all(f"Run {n} (ok)" in text for n in range(first_shown, 401)) and "Run 1 (ok)" not in text


def test_digest_cuts_one_huge_newest_section_to_what_is_left():
    text = findings_digest(["## Run 1\nsmall", "## Run 2\n" + "z" * 50_000], 1_000)
    assert text.startswith("(1 earlier sections omitted) — a line each, oldest first:\nRun 1: small\n\n## Run 2")
    assert "characters cut" in text and len(text) == 1_000


def test_condensed_section_without_change_takes_the_summary():
    assert condensed_section("## Run 3 (failed)\n\nCrashed on load.\n", 200) == "Run 3 (failed): Crashed on load."
    assert condensed_section("## Run 3 (ok)\n\n" + "w" * 500, 40) == "Run 3 (ok): " + "w" * 27 + "…"


# the ranking and the report's numbers


def test_ranking_follows_the_goal():
    runs = [make_run(1, metrics={"loss": 0.3, "acc": 0.7})]
    assert ranking(runs, "loss <= 0.1") == Ranking("loss", False, 0.1, "loss, the goal's metric (lower is better)")


def test_ranking_without_a_numeric_goal_takes_the_first_metric_and_guesses_its_direction():
    rank = ranking([make_run(1), make_run(2, metrics={"val_loss": 0.3, "acc": 0.7})], "be good")
    assert (rank.metric, rank.higher_is_better, rank.target) == ("val_loss", False, None)
    assert "the goal names no metric" in rank.basis and "lower taken as better" in rank.basis
    rank = ranking([make_run(1, metrics={"f1": 0.5})], "accuracy >= 0.9")
    assert rank.metric == "f1" and rank.higher_is_better and "no run reported the goal's metric accuracy" in rank.basis
    assert ranking([make_run(1)], "accuracy >= 0.9") is None


def test_best_ranked_without_a_numeric_goal():
    runs = [make_run(1, metrics={"f1": 0.5}), make_run(2, metrics={"f1": 0.7}), make_run(3, metrics={"f1": 0.6})]
    assert best_ranked(runs, ranking(runs, ""))["number"] == 2
    assert best_run(runs, "") is None  # best_run stays the goal's judgement alone


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
    assert table[0] == "| Run | Status | Duration | accuracy | loss | Error | What changed |"
    assert table[2:] == [
        "| 1 | ok | 1.5 s | 0.5 | — |  | baseline |",
        "| 2 | failed | 1.5 s | — | — | OSError: x\\|y |  |",
        "| 3 ★ | ok | 1.5 s | 0.7 | 0.123456789 |  | wider \\| deeper net |",
    ]
    assert "★" not in runs_table([make_run(1)], "")


def test_runs_table_puts_metrics_past_the_columns_together():
    metrics = {f"m{i}": float(i) for i in range(8)}
    table = runs_table([make_run(1, metrics=metrics)], "m7 >= 1").splitlines()
    assert table[0] == "| Run | Status | Duration | m7 | m0 | m1 | m2 | m3 | m4 | Other metrics | What changed |"
    assert table[2] == "| 1 ★ | ok | 1.5 s | 7 | 0 | 1 | 2 | 3 | 4 | m5=5, m6=6 |  |"


def test_goal_from_idea():
    from nodes.records import goal_from_idea

    assert goal_from_idea("Digits.\ngoal: test_accuracy >= 0.99\n") == "test_accuracy >= 0.99"
    assert goal_from_idea("  Goal:  val_loss<0.25 ") == "val_loss < 0.25"
    assert goal_from_idea("Reach a good accuracy, goals are for later.") is None
    for bad in ("goal: as good as possible", "goal: accuracy == 0.9", "goal: accuracy >= 0.9 on the test set"):
        with pytest.raises(ValueError, match="goal: <metric> <op> <number>"):
            goal_from_idea(bad)


@pytest.mark.parametrize(
    ("name", "higher"),
    [("val_loss", False), ("test_error", False), ("train_time", False), ("latency_ms", False), ("answer_f1", True), ("sentiment_accuracy", True)],
)
def test_without_a_goal_the_direction_is_guessed_from_whole_words(name: str, higher: bool):
    runs = [make_run(1, metrics={name: 0.5}), make_run(2, metrics={name: 0.7})]
    rank = ranking(runs, "")
    assert rank.metric == name and rank.higher_is_better is higher
    assert best_ranked(runs, rank)["number"] == (2 if higher else 1)


def test_progress_counters_are_never_the_ranking_metric():
    runs = [make_run(1, metrics={"epoch": 9, "accuracy": 0.9}), make_run(2, metrics={"epoch": 20, "accuracy": 0.6})]
    assert ranking(runs, "").metric == "accuracy" and best_ranked(runs, ranking(runs, "")) == runs[0]
