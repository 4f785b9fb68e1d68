"""summarize: whether another run may start, the search's choice for it, and a bounded digest of what it builds on, without any LLM call."""

from __future__ import annotations

from pathlib import Path

from fakes import events_of, make_experiment, make_run, make_runtime, seed_runs

from adapters.files import ExperimentFiles
from adapters.logs import run_summary
from nodes.prompts import BUDGET
from nodes.summarize import RECENT_RUNS, summarize


def summarized(tmp_path: Path, runs: list, **state) -> dict:
    """summarize's update for an experiment whose finished runs are `runs` (their records in run_N/result.json)."""
    settings = state.pop("settings", {})
    root = make_experiment(tmp_path)
    runtime, _ = make_runtime(**settings)
    return summarize({"experiment_dir": root, "max_runs": 1000, **seed_runs(root, runs), **state}, runtime)


def digest(tmp_path: Path, runs: list, **state) -> str:
    return summarized(tmp_path, runs, **state)["previous_digest"]


def usage(tokens: int) -> dict:
    return {"stage": "codegen", "model": "m", "input_tokens": tokens, "output_tokens": 0, "cost_usd": None}


def test_no_run_starts_past_the_run_limit(tmp_path: Path):
    root = make_experiment(tmp_path)
    runtime, events = make_runtime()
    update = summarize({"experiment_dir": root, "max_runs": 2, **seed_runs(root, [make_run(1), make_run(2)])}, runtime)
    assert update == {"stop_reason": "max_runs", "stop_detail": "all 2 runs done, the limit set by -r/MAX_RUNS"}
    assert events == []  # no run is announced


def test_no_run_starts_when_it_would_pass_a_budget(tmp_path: Path):
    root = make_experiment(tmp_path)
    runtime, _ = make_runtime(max_tokens=1000)
    update = summarize({"experiment_dir": root, "max_runs": 9, **seed_runs(root, [make_run(1)]), "usage": [usage(600)]}, runtime)
    assert update["stop_reason"] == "budget" and "MAX_TOKENS=1000" in update["stop_detail"]


def test_the_first_run_is_not_held_back_by_the_planning_spend():
    runtime, _ = make_runtime(max_tokens=1000)
    update = summarize({"experiment_dir": "unused", "max_runs": 9, "run_count": 0, "usage": [usage(600)]}, runtime)
    assert "stop_reason" not in update and "No run yet" in update["previous_digest"]


def test_first_run_is_a_draft_and_says_there_is_none_yet():
    runtime, events = make_runtime()
    update = summarize({"experiment_dir": "unused", "run_count": 0}, runtime)
    assert "No run yet" in update["previous_digest"]
    assert update["next_run"] == {"number": 1, "operator": "draft", "parent": None, "reason": "the first run"}
    assert events_of(events, "stage") == [{"event": "stage", "stage": "summarize", "run": 1, "operator": "draft", "parent": None, "reason": "the first run"}]


def test_state_without_run_count_counts_as_first_run():
    runtime, _ = make_runtime()
    update = summarize({"experiment_dir": "unused", "max_runs": 1000}, runtime)
    assert "No run yet" in update["previous_digest"] and update["next_run"]["number"] == 1


def test_improve_digests_the_best_run_not_the_latest(tmp_path: Path):
    runs = [
        make_run(1, metrics={"accuracy": 0.95}),
        make_run(2, status="failed", error="ValueError: boom"),
        make_run(3, metrics={"accuracy": 0.8}, operator="debug"),
    ]
    (tmp_path / "run_1").mkdir(parents=True)
    (tmp_path / "run_1" / "output.log").write_text("epoch=1 accuracy=0.95\nRUN-ONE-LOG-TAIL\n")
    update = summarized(tmp_path, runs, goal="accuracy >= 0.9")
    text = update["previous_digest"]

    assert update["next_run"] == {"number": 4, "operator": "improve", "parent": 1, "reason": "run 1 is the best so far"}
    assert text.startswith("Run 1: ok (exit 0)")  # the parent's summary, from its folder; other runs: one line each
    assert "RUN-ONE-LOG-TAIL" in text and "Lineage: run 1, draft" in text
    assert "Recent runs:" in text
    assert "run 2: failed" in text and "error: ValueError: boom" in text and "(improve ← 1)" in text
    assert "run 3: ok" in text and "accuracy=0.8" in text and "(debug ← 2)" in text
    assert "run 1: ok" not in text  # the parent is not listed again
    assert "Best so far" not in text  # the parent is the best


def test_debug_digests_the_failed_run_with_its_error_and_names_the_best(tmp_path: Path):
    runs = [
        make_run(1, metrics={"accuracy": 0.95}),
        make_run(2, metrics={"accuracy": 0.9}, parent=1),
        make_run(3, status="failed", error="ValueError: boom", parent=1),
    ]
    update = summarized(tmp_path, runs, goal="accuracy >= 0.9")
    text = update["previous_digest"]

    assert (update["next_run"]["operator"], update["next_run"]["parent"]) == ("debug", 3)
    assert text.startswith("Run 3: failed (exit 1)")
    assert "Error: ValueError: boom" in text and "Lineage: run 3 ← 1, draft" in text
    assert "run 1: ok" in text and "run 2: ok" in text
    assert "Best so far for the goal (accuracy >= 0.9): run 1: ok" in text


def test_the_parents_change_is_read_from_key_findings(tmp_path: Path):
    ExperimentFiles(make_experiment(tmp_path)).write_findings(["## Run 1 (ok, draft)\n\nChanged: logistic regression baseline\n\nIt ran."])
    assert "Run 1 changed: logistic regression baseline" in digest(tmp_path, [make_run(1)])


def test_a_draft_lists_the_other_drafts_approaches(tmp_path: Path):
    ExperimentFiles(make_experiment(tmp_path)).write_findings(["## Run 1 (ok, draft)\n\nChanged: logistic regression baseline\n\nIt ran."])
    update = summarized(tmp_path, [make_run(1, metrics={"accuracy": 0.5})], settings={"drafts": 2})
    assert update["next_run"] == {"number": 2, "operator": "draft", "parent": None, "reason": "draft 2 of 2 (DRAFTS)"}
    text = update["previous_digest"]
    assert text.startswith("The other drafts (write a different approach):\nrun 1: ok")
    assert "approach: logistic regression baseline" in text and "Run 1: ok (exit 0)" not in text  # a draft sees no parent


def test_best_run_for_a_lower_is_better_goal(tmp_path: Path):
    runs = [make_run(1, metrics={"loss": 0.2}), make_run(2, metrics={"loss": 0.5})]
    assert summarized(tmp_path / "tree", runs, goal="loss <= 0.1")["next_run"]["parent"] == 1  # the tree improves the lower loss
    # Linear search builds on run 2, so the digest names the best apart from it.
    linear = digest(tmp_path / "linear", runs, goal="loss <= 0.1", settings={"search": "linear"})
    assert linear.startswith("Run 2: ok") and "Best so far for the goal (loss <= 0.1): run 1:" in linear


def test_no_best_line_when_goal_names_no_reported_metric(tmp_path: Path):
    runs = [make_run(1, metrics={"loss": 0.2}), make_run(2, metrics={"loss": 0.1})]
    assert "Best so far" not in digest(tmp_path / "a", runs, goal="accuracy >= 0.9", settings={"search": "linear"})
    assert "Best so far" not in digest(tmp_path / "b", runs, goal="do well", settings={"search": "linear"})


def test_single_run_has_no_recent_runs_section(tmp_path: Path):
    text = digest(tmp_path, [make_run(1)], goal="")
    summary = run_summary(tmp_path / "run_1", 1, "ok", 0, 1.5, "", "python")
    assert text == f"{summary}\n\nLineage: run 1, draft"


def test_lists_only_the_recent_runs(tmp_path: Path):
    runs = [make_run(1, metrics={"accuracy": 0.99})] + [make_run(n, metrics={"accuracy": 0.5}) for n in range(2, 31)]
    text = digest(tmp_path, runs, goal="accuracy >= 0.9")
    listed = [n for n in range(1, 31) if f"run {n}: ok" in text]
    assert listed == list(range(31 - RECENT_RUNS, 31))  # the parent, run 1 (the best), comes as its summary instead


def test_digest_is_bounded_with_many_huge_runs(tmp_path: Path):
    huge = "x" * 50_000
    runs = [make_run(n, metrics={"accuracy": n / 100}, error="E" * 5_000) for n in range(1, 101)]
    (tmp_path / "run_100").mkdir(parents=True)
    (tmp_path / "run_100" / "output.log").write_text(f"run 100 log {huge}\n" * 20)
    text = digest(tmp_path, runs, goal="accuracy >= 0.99", last_summary=f"run 100 summary {huge}")
    assert len(text) <= BUDGET["previous_run"]
    assert text.startswith("Run 100: ok")
