"""goal: the goal parsed, compared and used to rank runs, with its target exactly as written."""

from __future__ import annotations

import pytest
from fakes import make_run

from goal import Goal, Ranking, best_ranked, best_run, goal_from_idea, goal_reached, parse_goal, ranking, runs_without_improvement


@pytest.mark.parametrize(
    ("goal", "expected"),
    [
        ("test_accuracy >= 0.99", ("test_accuracy", ">=", 0.99, "0.99")),
        ("Reach val_loss<0.1 on the held-out set", ("val_loss", "<", 0.1, "0.1")),
        ("Accuracy > 95", ("accuracy", ">", 95.0, "95")),
        ("loss <= 1e-3", ("loss", "<=", 0.001, "1e-3")),
        ("val/acc >= .9", ("val/acc", ">=", 0.9, ".9")),
        ("reward >= -1.5", ("reward", ">=", -1.5, "-1.5")),
        ("f1-score>=0.8", ("f1-score", ">=", 0.8, "0.8")),
    ],
)
def test_parse_goal(goal, expected):
    parsed = parse_goal(goal)
    assert (parsed.metric, parsed.op, parsed.target, parsed.written) == expected


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


def test_ranking_follows_the_goal():
    runs = [make_run(1, metrics={"loss": 0.3, "acc": 0.7})]
    assert ranking(runs, "loss <= 0.1") == Ranking("loss", False, Goal("loss", "<=", "0.1"), "loss, the goal's metric (lower is better)")
    assert ranking(runs, "loss <= 0.1").goal.target == 0.1


def test_ranking_without_a_numeric_goal_takes_the_first_metric_and_guesses_its_direction():
    rank = ranking([make_run(1), make_run(2, metrics={"val_loss": 0.3, "acc": 0.7})], "be good")
    assert (rank.metric, rank.higher_is_better, rank.goal) == ("val_loss", False, None)
    assert "the goal names no metric" in rank.basis and "lower taken as better" in rank.basis
    rank = ranking([make_run(1, metrics={"f1": 0.5})], "accuracy >= 0.9")
    assert rank.metric == "f1" and rank.higher_is_better and "no run reported the goal's metric accuracy" in rank.basis
    assert ranking([make_run(1)], "accuracy >= 0.9") is None


def test_best_ranked_without_a_numeric_goal():
    runs = [make_run(1, metrics={"f1": 0.5}), make_run(2, metrics={"f1": 0.7}), make_run(3, metrics={"f1": 0.6})]
    assert best_ranked(runs, ranking(runs, ""))["number"] == 2
    assert best_run(runs, "") is None  # best_run stays the goal's judgement alone


def test_goal_from_idea():
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


def test_goal_reached():
    assert goal_reached("accuracy >= 0.9", {"accuracy": 0.9}) is True
    assert goal_reached("accuracy > 0.9", {"accuracy": 0.9}) is False
    assert goal_reached("loss < 0.1", {"loss": 0.05}) is True
    assert goal_reached("accuracy >= 0.9", {"loss": 0.05}) is False
    assert goal_reached("a nice model", {"accuracy": 1.0}) is None


def test_runs_without_improvement_for_both_directions():
    runs = [make_run(1, metrics={"acc": 0.5}), make_run(2, metrics={"acc": 0.7}), make_run(3, metrics={"acc": 0.6}), make_run(4, status="failed")]
    assert runs_without_improvement(runs, "acc >= 0.9") == 2
    losses = [make_run(1, metrics={"loss": 0.5}), make_run(2, metrics={"loss": 0.4})]
    assert runs_without_improvement(losses, "loss <= 0.1") == 0
    assert runs_without_improvement(runs, "no numeric goal") == 0


@pytest.mark.parametrize("written", ["0.0012345678", "1234567", "0.98765432109876", "1e-7", "2.50"])
def test_the_target_is_the_number_as_written(written: str):
    goal = goal_from_idea(f"Something.\ngoal: val_loss <= {written}\n")
    assert goal == f"val_loss <= {written}"  # what PLAN.md, the report and the views show
    assert parse_goal(goal).target == float(written)


def test_a_target_with_more_digits_than_six_is_compared_exactly():
    # {target:g} made this 0.00123457: a run at 0.0012345700 met the rounded goal, not the one written.
    goal = goal_from_idea("goal: val_loss <= 0.0012345678")
    assert goal_reached(goal, {"val_loss": 0.0012345678}) is True
    assert goal_reached(goal, {"val_loss": 0.00123457}) is False
    big = goal_from_idea("goal: reward >= 1234567")
    assert big == "reward >= 1234567"
    assert goal_reached(big, {"reward": 1234566.9}) is False and goal_reached(big, {"reward": 1234567}) is True


def test_a_run_that_ended_badly_is_best_only_while_none_finished():
    crashed = make_run(2, "timeout", {"accuracy": 0.97}, "timed out")
    finished = make_run(1, "ok", {"accuracy": 0.9})
    assert best_run([finished, crashed], "accuracy >= 0.99")["number"] == 1
    assert best_run([crashed], "accuracy >= 0.99")["number"] == 2
