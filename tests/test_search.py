"""The search policy: which run comes next, as a pure function of the runs so far."""

from __future__ import annotations

from fakes import make_run

from search import Choice, Policy, lineage, lineage_text, next_choice, origin, stuck

GOAL = "accuracy >= 0.99"
TREE = Policy(search="tree", drafts=3, debug_depth=3, same_failures=3)


def draft(number: int, accuracy: float | None = None, status: str = "ok", error: str = ""):
    return make_run(number, status, {"accuracy": accuracy} if accuracy is not None else {}, error, operator="draft", parent=None)


def child(number: int, operator: str, parent: int, accuracy: float | None = None, status: str = "ok", error: str = ""):
    return make_run(number, status, {"accuracy": accuracy} if accuracy is not None else {}, error, operator=operator, parent=parent)


def test_the_first_runs_are_drafts_then_a_crashed_draft_is_debugged_then_the_best_improved():
    runs: list = []
    assert next_choice(runs, GOAL, TREE) == Choice("draft", None, "the first run")
    runs.append(draft(1, 0.90))
    assert next_choice(runs, GOAL, TREE).operator == "draft"
    runs.append(draft(2, status="failed", error="ValueError: bad shape"))
    assert next_choice(runs, GOAL, TREE).operator == "draft"  # drafts first, as AIDE does
    runs.append(draft(3, 0.85))
    choice = next_choice(runs, GOAL, TREE)
    assert (choice.operator, choice.parent) == ("debug", 2)
    runs.append(child(4, "debug", 2, 0.80))
    # The best run is 1 (0.90), not the last (4) nor the latest draft (3).
    choice = next_choice(runs, GOAL, TREE)
    assert (choice.operator, choice.parent) == ("improve", 1) and "best" in choice.reason


def test_a_debug_line_is_abandoned_after_debug_depth_failed_fixes():
    policy = Policy(search="tree", drafts=1, debug_depth=2, same_failures=9)
    runs = [draft(1, 0.9), child(2, "improve", 1, status="failed", error="KeyError: 'a'")]
    assert (next_choice(runs, GOAL, policy).operator, next_choice(runs, GOAL, policy).parent) == ("debug", 2)
    runs.append(child(3, "debug", 2, status="failed", error="TypeError: x"))
    assert (next_choice(runs, GOAL, policy).operator, next_choice(runs, GOAL, policy).parent) == ("debug", 3)
    runs.append(child(4, "debug", 3, status="timeout", error="timed out after 60 s"))
    # Two fixes (3 and 4) failed: DEBUG_DEPTH=2 abandons the line, and the best good run is improved instead.
    choice = next_choice(runs, GOAL, policy)
    assert (choice.operator, choice.parent) == ("improve", 1)


def test_debug_depth_zero_never_debugs():
    policy = Policy(search="tree", drafts=1, debug_depth=0)
    runs = [draft(1, 0.5), child(2, "improve", 1, status="failed", error="E")]
    assert (next_choice(runs, GOAL, policy).operator, next_choice(runs, GOAL, policy).parent) == ("improve", 1)


def test_without_a_good_run_the_search_drafts_again():
    policy = Policy(search="tree", drafts=1, debug_depth=1, same_failures=9)
    runs = [draft(1, status="failed", error="A"), child(2, "debug", 1, status="failed", error="B")]
    assert next_choice(runs, GOAL, policy) == Choice("draft", None, "no run has worked yet")


def test_linear_search_builds_on_the_run_before_whatever_it_was():
    policy = Policy(search="linear")
    runs = [draft(1, 0.95), child(2, "improve", 1, 0.5)]
    assert (next_choice(runs, GOAL, policy).operator, next_choice(runs, GOAL, policy).parent) == ("improve", 2)
    runs.append(child(3, "improve", 2, status="failed", error="E"))
    assert (next_choice(runs, GOAL, policy).operator, next_choice(runs, GOAL, policy).parent) == ("debug", 3)


def test_a_goal_with_lower_is_better_ranks_the_other_way():
    runs = [make_run(1, metrics={"val_loss": 0.3}, operator="draft", parent=None), make_run(2, metrics={"val_loss": 0.1}, operator="draft", parent=None)]
    runs.append(make_run(3, metrics={"val_loss": 0.2}, operator="improve", parent=2))
    choice = next_choice(runs, "val_loss <= 0.05", Policy(drafts=2))
    assert (choice.operator, choice.parent) == ("improve", 2)


def test_good_runs_without_metrics_improve_the_latest_good_one():
    runs = [draft(1), child(2, "improve", 1), child(3, "improve", 2, status="failed", error="E")]
    choice = next_choice(runs, GOAL, Policy(debug_depth=0))
    assert (choice.operator, choice.parent) == ("improve", 2)


def test_the_same_failure_in_one_line_abandons_it_and_across_lines_is_stuck():
    same = "ModuleNotFoundError: No module named 'torch'"
    policy = Policy(search="tree", drafts=1, debug_depth=5, same_failures=3)
    runs = [draft(1, 0.9), child(2, "improve", 1, status="failed", error=same), child(3, "debug", 2, status="failed", error=same)]
    runs.append(child(4, "debug", 3, status="failed", error=same))
    assert stuck(runs, policy) is None  # one line: abandoned, not the end
    choice = next_choice(runs, GOAL, policy)
    assert (choice.operator, choice.parent) == ("improve", 1)
    runs.append(child(5, "improve", 1, status="failed", error=same))
    assert "MAX_CONSECUTIVE_FAILURES=3" in stuck(runs, policy)  # runs 3, 4 and 5 span two lines
    assert stuck(runs, Policy(search="linear", same_failures=3)) is not None
    different = [*runs[:-1], child(5, "improve", 1, status="failed", error="ValueError: other")]
    assert stuck(different, policy) is None


def test_lineage_follows_parents_to_the_draft():
    runs = [draft(1), draft(2), child(3, "improve", 2), child(4, "improve", 3, status="failed", error="E"), child(5, "debug", 4), child(6, "improve", 1)]
    assert [run["number"] for run in lineage(runs, 5)] == [5, 4, 3, 2]
    assert lineage_text(runs, 5) == "run 5 ← 4 ← 3 ← 2, draft"
    assert lineage_text(runs, 1) == "run 1, draft"
    assert origin(runs[4]) == "debug ← 4" and origin(runs[0]) == "draft"


def test_the_choice_depends_only_on_the_runs():
    runs = [draft(1, 0.7), draft(2, 0.8), draft(3, status="failed", error="E"), child(4, "debug", 3, 0.75)]
    choices = {next_choice([dict(run) for run in runs], GOAL, TREE) for _ in range(5)}
    assert len(choices) == 1


def test_with_one_failure_allowed_the_tree_stops_at_the_first_failure_as_the_loop_did():
    runs = [draft(1, status="failed", error="E")]
    assert stuck(runs, Policy(search="tree", same_failures=1)) is not None


def flying(number: int, operator: str, parent: int | None) -> dict:
    """A run in flight, as the state holds it."""
    return {"number": number, "operator": operator, "parent": parent, "reason": "", "submitted_at": 0.0}


def test_runs_in_flight_count_as_drafts_and_as_their_parents_children():
    policy = Policy(search="tree", drafts=3, debug_depth=3, same_failures=3)
    assert next_choice([], GOAL, policy, [flying(1, "draft", None), flying(2, "draft", None)]).operator == "draft"
    runs = [draft(1, status="failed", error="KeyError: 'x'")]
    in_flight = [flying(2, "draft", None), flying(3, "draft", None)]
    assert (next_choice(runs, GOAL, policy, in_flight).operator, next_choice(runs, GOAL, policy, in_flight).parent) == ("debug", 1)
    in_flight.append(flying(4, "debug", 1))  # run 1 is being fixed already: not a second time
    choice = next_choice(runs, GOAL, policy, in_flight)
    assert choice.operator == "draft" and "3 in flight" in choice.reason


def test_improves_in_flight_spread_over_branches_then_over_parents_and_repeat_only_when_nothing_else_is_left():
    policy = Policy(search="tree", drafts=2, debug_depth=3, same_failures=3)
    runs = [draft(1, 0.90), draft(2, 0.80), child(3, "improve", 1, 0.95)]
    assert next_choice(runs, GOAL, policy).parent == 3  # alone: the best
    choice = next_choice(runs, GOAL, policy, [flying(4, "improve", 3)])
    assert (choice.operator, choice.parent) == ("improve", 2) and "branch" in choice.reason  # draft 1's branch is busy
    choice = next_choice(runs, GOAL, policy, [flying(4, "improve", 3), flying(5, "improve", 2)])
    assert choice.parent == 1 and "no run in flight improves" in choice.reason  # both branches busy: the best nothing improves
    choice = next_choice(runs, GOAL, policy, [flying(4, "improve", 3), flying(5, "improve", 2), flying(6, "improve", 1)])
    assert choice.parent == 3 and "every good run" in choice.reason


def test_a_cancelled_run_is_neither_debugged_nor_improved_nor_stuck():
    policy = Policy(search="tree", drafts=1, debug_depth=3, same_failures=2)
    runs = [draft(1, 0.9), {**child(2, "improve", 1, 0.99), "status": "cancelled"}]
    choice = next_choice(runs, GOAL, policy)
    assert (choice.operator, choice.parent) == ("improve", 1)
    crashed = [child(n, "improve", 1, status="failed", error="ValueError: x") for n in (3, 4)]
    assert stuck([*runs, crashed[0], {**child(5, "improve", 1), "status": "cancelled"}, crashed[1]], policy) is not None
