"""summarize: whether another run may start, and a bounded digest of the runs so far for codegen, without any LLM call."""

from __future__ import annotations

from fakes import events_of, make_run, make_runtime

from nodes.prompts import BUDGET
from nodes.summarize import RECENT_RUNS, summarize


def digest(state: dict) -> str:
    runtime, _ = make_runtime()
    return summarize({"experiment_dir": "unused", "max_runs": 1000, **state}, runtime)["previous_digest"]


def usage(tokens: int) -> dict:
    return {"stage": "codegen", "model": "m", "input_tokens": tokens, "output_tokens": 0, "cost_usd": None}


def test_no_run_starts_past_the_run_limit():
    runtime, events = make_runtime()
    update = summarize({"experiment_dir": "unused", "max_runs": 2, "runs": [make_run(1), make_run(2)]}, runtime)
    assert update == {"stop_reason": "max_runs", "stop_detail": "all 2 runs done, the limit set by -r/MAX_RUNS"}
    assert events == []  # no run is announced


def test_no_run_starts_when_it_would_pass_a_budget():
    runtime, _ = make_runtime(max_tokens=1000)
    update = summarize({"experiment_dir": "unused", "max_runs": 9, "runs": [make_run(1)], "usage": [usage(600)]}, runtime)
    assert update["stop_reason"] == "budget" and "MAX_TOKENS=1000" in update["stop_detail"]


def test_the_first_run_is_not_held_back_by_the_planning_spend():
    runtime, _ = make_runtime(max_tokens=1000)
    update = summarize({"experiment_dir": "unused", "max_runs": 9, "runs": [], "usage": [usage(600)]}, runtime)
    assert "stop_reason" not in update and "No run yet" in update["previous_digest"]


def test_first_run_says_there_is_none_yet():
    runtime, events = make_runtime()
    update = summarize({"experiment_dir": "unused", "runs": []}, runtime)
    assert "No run yet" in update["previous_digest"]
    assert events_of(events, "stage") == [{"event": "stage", "stage": "summarize", "run": 1}]


def test_state_without_runs_key_counts_as_first_run():
    assert "No run yet" in digest({})


def test_includes_previous_summary_earlier_lines_and_best_run():
    runs = [
        make_run(1, metrics={"accuracy": 0.95}),
        make_run(2, status="failed", error="ValueError: boom"),
        make_run(3, metrics={"accuracy": 0.8}),
    ]
    text = digest({"runs": runs, "goal": "accuracy >= 0.9", "last_summary": "SUMMARY-THREE full text"})

    assert text.startswith("SUMMARY-THREE full text")  # the latest run's summary; earlier runs: one line each
    assert "Earlier runs:" in text
    assert "run 1: ok" in text and "accuracy=0.95" in text
    assert "run 2: failed" in text and "error: ValueError: boom" in text
    assert "Best so far for the goal (accuracy >= 0.9): run 1: ok" in text


def test_best_run_for_a_lower_is_better_goal():
    runs = [make_run(1, metrics={"loss": 0.2}), make_run(2, metrics={"loss": 0.5})]
    assert "Best so far for the goal (loss <= 0.1): run 1:" in digest({"runs": runs, "goal": "loss <= 0.1"})


def test_no_best_line_when_goal_names_no_reported_metric():
    runs = [make_run(1, metrics={"loss": 0.2}), make_run(2, metrics={"loss": 0.1})]
    assert "Best so far" not in digest({"runs": runs, "goal": "accuracy >= 0.9"})
    assert "Best so far" not in digest({"runs": runs, "goal": "do well"})


def test_single_run_has_no_earlier_runs_section():
    text = digest({"runs": [make_run(1)], "goal": "", "last_summary": "ONLY"})
    assert text == "ONLY"


def test_lists_only_the_recent_earlier_runs():
    runs = [make_run(n) for n in range(1, 31)]
    text = digest({"runs": runs})
    listed = [n for n in range(1, 31) if f"run {n}: ok" in text]
    assert listed == list(range(30 - RECENT_RUNS, 30))


def test_digest_is_bounded_with_many_huge_runs():
    huge = "x" * 50_000
    runs = [make_run(n, metrics={"accuracy": n / 100}, error="E" * 5_000) for n in range(1, 101)]
    text = digest({"runs": runs, "goal": "accuracy >= 0.99", "last_summary": f"run 100 summary {huge}"})
    assert len(text) <= BUDGET["previous_run"]
    assert text.startswith("run 100 summary")
