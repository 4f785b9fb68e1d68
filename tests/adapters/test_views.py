"""Tests for adapters/views.py: the live view rendered at a fixed width at points of a run; the plain, quiet and live views fed as main.py feeds them."""

from __future__ import annotations

import io
import os
import re
import termios
import threading
import time

import pytest
from fakes import make_run
from rich.console import Console

from adapters import views
from adapters.terminal import KeyReader
from adapters.views import LiveView, PlainView, Progress, QuietView, elapsed, render_live
from state import RunRecord, Usage

MODELS = {"plan, report": "big-model", "codegen": "coder", "analyze": "small-model"}
T0 = 1000.0
"""The fake clock's reading when the experiment starts."""
SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Clock:
    """Stands in for the `time` module in adapters.views, which reads only time.monotonic()."""

    def __init__(self) -> None:
        self.now = T0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(views, "time", clock)
    return clock


@pytest.fixture(autouse=True)
def xterm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same terminal whatever runs the tests: rich reads TERM (a dumb one gets no redraws) and NO_COLOR as it prints."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)


def make_progress(**overrides) -> Progress:
    # Progress's default_factory holds the real time.monotonic, so the clock readings are given here.
    fields = {"experiment": "exp", "max_runs": 5, "models": MODELS, "sandbox": "bwrap", "started": T0, "stage_started": T0} | overrides
    return Progress(**fields)


def render(progress: Progress) -> str:
    """The live view as a 100-column terminal shows it, trailing spaces dropped."""
    console = Console(file=io.StringIO(), record=True, width=100, force_terminal=True, color_system=None)
    console.print(render_live(progress))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def cells(text: str, first: str) -> list[str]:
    """The cells of the table row in `text` whose first cell is `first` (columns are at least two spaces apart)."""
    for line in text.splitlines():
        row = re.split(r"\s{2,}", line.strip())
        if row[0] == first:
            return row
    raise AssertionError(f"no row starting with {first!r} in:\n{text}")


def run(
    number: int, status: str = "ok", metrics: dict[str, float] | None = None, duration_s: float = 1.5, operator: str = "draft", parent: int | None = None
) -> RunRecord:
    return {**make_run(number, status, metrics), "duration_s": duration_s, "operator": operator, "parent": parent}


def finish(progress: Progress | PlainView | LiveView, *records: RunRecord) -> None:
    """Wait's update for each record, as the stream brings it: the run that finished last, and how many have."""
    for record in records:
        progress.update("wait", {"latest_run": record, "run_count": record["number"]})


def usage(stage: str, model: str, input_tokens: int, output_tokens: int, cost_usd: float | None = None) -> Usage:
    return Usage(stage=stage, model=model, input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost_usd)


def stage(name: str, run: int | None = None, model: str | None = None) -> dict:
    return {"event": "stage", "stage": name, "run": run, "model": model}


def chosen(name: str, run: int, operator: str, parent: int | None, model: str | None = None, reason: str | None = None) -> dict:
    """A stage event that says what the coming run does, as summarize (with the search's reason) and codegen (with its model) emit it."""
    event = {"event": "stage", "stage": name, "run": run, "operator": operator, "parent": parent}
    return event | ({"model": model} if model else {}) | ({"reason": reason} if reason else {})


def output(*lines: str, run: int = 1) -> dict:
    return {"event": "output", "run": run, "lines": list(lines)}


def run_done(number: int, metrics: dict[str, float], status: str = "ok", duration_s: float = 2.0, operator: str = "draft", parent: int | None = None) -> dict:
    return {"event": "run_done", "run": number, "status": status, "duration_s": duration_s, "metrics": metrics, "operator": operator, "parent": parent}


def started(number: int, gpus: list[str], operator: str = "draft", parent: int | None = None, node: str = "") -> dict:
    """run_started, as a run's thread emits it when its train.py starts on `gpus` (of Ray node `node`)."""
    event = {"event": "run_started", "run": number, "operator": operator, "parent": parent, "gpus": gpus, "started": 1.7e9}
    return {**event, "node": node} if node else event


# --- elapsed ---


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0:00"), (7.9, "0:07"), (65, "1:05"), (3599, "59:59"), (3600, "1:00:00"), (3725, "1:02:05")])
def test_elapsed_shows_minutes_and_seconds_and_hours_only_when_needed(seconds, shown):
    assert elapsed(seconds) == shown


# --- the live view, rendered at several points of a run ---


def test_at_the_start_the_header_shows_the_experiment_and_the_planner_will_propose_the_goal():
    text = render(make_progress())

    lines = text.splitlines()
    assert lines[0].startswith("╭─ experiment exp ─")
    assert cells(text, "│ goal") == ["│ goal", "(the planner proposes one)", "│"]
    assert cells(text, "│ models") == ["│ models", "plan, report: big-model · codegen: coder · analyze: small-model", "│"]
    assert cells(text, "│ sandbox") == ["│ sandbox", "bwrap", "│"]
    assert cells(text, "runs 0/5") == ["runs 0/5", "elapsed 0:00 0 tokens · $0.0000"]
    # Nothing has happened yet: no stage, no output panel, no runs, no tokens.
    assert len(lines) == 6
    assert not any(frame in text for frame in SPINNER_FRAMES)


def test_the_goal_appears_once_initialize_sets_it():
    progress = make_progress()
    progress.event(stage("initialize", model="big-model"))
    progress.update("initialize", {"goal": "val_accuracy >= 0.95", "usage": [usage("initialize", "big-model", 900, 300)]})

    text = render(progress)

    assert cells(text, "│ goal") == ["│ goal", "val_accuracy >= 0.95", "│"]
    assert "(the planner proposes one)" not in text
    assert "initialize (big-model)" in text


def test_during_execute_the_view_shows_the_last_15_output_lines_and_the_latest_metrics(clock: Clock):
    progress = make_progress(goal="val_accuracy >= 0.95")
    clock.now = T0 + 10
    progress.event(stage("execute", run=1))
    assert cells(render(progress), "│ (no output yet)") == ["│ (no output yet)", "│"]

    lines = ["config: lr=0.001"] + [f"epoch={i} loss={1 - i / 25:.2f} val_accuracy={0.5 + i / 50:.2f}" for i in range(2, 21)]
    progress.event(output(*lines[:12]))
    progress.event(output(*lines[12:]))  # the tail runs across events
    clock.now = T0 + 75
    text = render(progress)

    assert "╭─ run 1 · output.log (last 15 lines) ─" in text
    panel = [line.strip("│ ") for line in text.splitlines() if line.startswith("│ ") and "=" in line and "loss" in line]
    assert panel == lines[5:]
    assert "config:" not in text and "epoch=2 " not in text and "epoch=5 " not in text
    # A metric from a line that scrolled out of the tail still counts; the newest value of each wins.
    assert "latest metrics: lr=0.001, epoch=20, loss=0.2, val_accuracy=0.9" in text
    assert re.search(r"^\S run 1 · execute  1:05$", text, re.MULTILINE), text
    assert "elapsed 1:15" in text


def test_the_tail_shows_a_progress_bar_redrawn_with_carriage_returns_as_a_terminal_would():
    progress = make_progress()
    progress.event(stage("execute", run=1))
    progress.event(output(" 10%|#         | 1/10\r 50%|#####     | 5/10\r", "\x1b[1mdone\x1b[0m"))

    assert list(progress.in_flight[1].tail) == [" 50%|#####     | 5/10", "[1mdone[0m"]


def test_a_runs_tail_goes_when_it_ends_and_the_next_run_starts_with_an_empty_one():
    progress = make_progress()
    progress.event(stage("execute", run=1))
    progress.event(output("epoch=1 loss=0.5"))
    progress.event(run_done(1, {"loss": 0.5}))
    progress.event(stage("analyze", run=1, model="small-model"))
    assert "output.log" not in render(progress), "the tail is shown only while a script runs"

    progress.event(stage("execute", run=2))
    text = render(progress)

    assert "run 2 · output.log (last 15 lines)" in text
    assert "(no output yet)" in text and "epoch=1" not in text
    assert "latest metrics: none found" in text


def test_a_long_output_line_is_cut_not_wrapped():
    progress = make_progress()
    progress.event(stage("execute", run=1))
    progress.event(output("x" * 300, "last line"))

    text = render(progress)

    assert all(len(line) <= 100 for line in text.splitlines())
    panel = text.split("output.log")[1].split("╰")[0].splitlines()[1:]
    assert len(panel) == 2
    assert panel[0].startswith("│ xxx") and panel[0].endswith("x… │")


def test_after_runs_the_table_marks_the_finished_run_with_the_highest_value_of_a_greater_than_goal():
    progress = make_progress(goal="val_accuracy >= 0.95")
    progress.event(stage("execute", run=3))
    for record in [
        run(1, metrics={"val_accuracy": 0.90, "loss": 0.3}, duration_s=12.34),
        run(2, "failed", duration_s=0.4, operator="improve", parent=1),
        run(3, "timeout", metrics={"val_accuracy": 0.93}, duration_s=60, operator="debug", parent=2),
    ]:
        progress.event(run_done(record["number"], record["metrics"], record["status"], record["duration_s"], record["operator"], record["parent"]))
        finish(progress, record)

    text = render(progress)

    assert text.count("runs 3/5") == 1
    assert cells(text, "run") == ["run", "from", "status", "duration", "goal metric"]
    # Run 3 printed a higher value before it timed out, but only a run that ended well can be best (goal.best_ranked).
    assert cells(text, "1 ★") == ["1 ★", "draft", "ok", "12.3 s", "val_accuracy=0.9"]
    assert cells(text, "2") == ["2", "improve ← 1", "failed", "0.4 s", "-"]
    assert cells(text, "3") == ["3", "debug ← 2", "timeout", "60.0 s", "val_accuracy=0.93"]
    assert text.count("★") == 1


def test_for_a_less_than_goal_the_lowest_value_is_the_best():
    progress = make_progress(goal="val_loss <= 0.1")
    finish(progress, run(1, metrics={"val_loss": 0.5}), run(2, metrics={"val_loss": 0.2}), run(3, metrics={"val_loss": 0.4}))

    text = render(progress)

    assert cells(text, "2 ★") == ["2 ★", "draft", "ok", "1.5 s", "val_loss=0.2"]
    assert text.count("★") == 1
    assert "runs 3/5" in text


def test_without_a_numeric_goal_the_table_shows_every_metric_and_no_star():
    progress = make_progress(goal="find out which optimiser works best")
    finish(progress, run(1, metrics={"accuracy": 0.8, "loss": 0.25}), run(2, "failed", operator="improve", parent=1))

    text = render(progress)

    assert cells(text, "run") == ["run", "from", "status", "duration", "metrics"]
    assert cells(text, "1") == ["1", "draft", "ok", "1.5 s", "accuracy=0.8, loss=0.25"]
    assert cells(text, "2") == ["2", "improve ← 1", "failed", "1.5 s", "none found"]
    assert "★" not in text


def test_a_long_experiment_shows_the_latest_12_runs_and_counts_the_earlier_ones():
    progress = make_progress(goal="accuracy >= 0.99")
    progress.update("initialize", {"max_runs": 30})
    finish(progress, *(run(n, metrics={"accuracy": 0.9 if n == 5 else 0.5 + n / 100}, operator="improve", parent=max(n - 2, 1)) for n in range(1, 31)))

    text = render(progress)

    assert "runs 30/30" in text
    assert cells(text, "…") == ["…", "18 earlier runs"]
    shown = [row.split()[0] for row in text.split("goal metric")[1].splitlines()[2:]]
    assert shown == ["5", *(str(n) for n in range(20, 31))], "the best run stays in sight, in place of the oldest shown"
    assert cells(text, "5 ★") == ["5 ★", "improve ← 3", "ok", "1.5 s", "accuracy=0.9"]
    assert text.count("★") == 1


def test_usage_without_a_provider_cost_or_model_prices_is_unknown():
    progress = make_progress()
    progress.update("initialize", {"usage": [usage("initialize", "big-model", 1000, 200)]})
    progress.update("codegen", {"usage": [usage("codegen", "coder", 3000, 1500), usage("codegen", "coder", 3500, 1600)]})

    text = render(progress)

    assert cells(text, "stage") == ["stage", "calls", "input tokens", "output tokens", "cost"]
    assert cells(text, "initialize") == ["initialize", "1", "1,000", "200", "unknown"]
    assert cells(text, "codegen") == ["codegen", "2", "6,500", "3,100", "unknown"]
    assert cells(text, "total") == ["total", "3", "7,500", "3,300", "unknown"]
    assert cells(text, "runs 0/5")[-1] == "elapsed 0:00 10,800 tokens", "no cost is shown when none is known"


def test_usage_sums_provider_costs_and_prices_the_rest_with_model_prices():
    progress = make_progress(model_prices={"coder": [1.0, 2.0]})  # USD per million input, output tokens
    progress.update("initialize", {"usage": [usage("initialize", "big-model", 1000, 200, cost_usd=0.0123)]})
    progress.update("analyze", {"usage": [usage("analyze", "small-model", 500, 100, cost_usd=0.0007)]})
    progress.update("codegen", {"usage": [usage("codegen", "coder", 100_000, 20_000), usage("codegen", "coder", 0, 0, cost_usd=0.5)]})

    text = render(progress)

    assert cells(text, "initialize") == ["initialize", "1", "1,000", "200", "$0.0123"]
    assert cells(text, "analyze") == ["analyze", "1", "500", "100", "$0.0007"]
    # 100k input at $1/M + 20k output at $2/M = $0.14, and the provider said $0.50 for the other call.
    assert cells(text, "codegen") == ["codegen", "2", "100,000", "20,000", "$0.6400"]
    assert cells(text, "total") == ["total", "4", "101,500", "20,300", "$0.6530"]
    assert cells(text, "runs 0/5")[-1] == "elapsed 0:00 121,800 tokens · $0.6530"


def test_a_resumed_experiment_starts_from_its_saved_state():
    progress = make_progress()
    next_run = {"number": 3, "operator": "improve", "parent": 2, "reason": "run 2 is the best so far", "change": "a wider hidden layer"}
    values = {"goal": "accuracy >= 0.9", "max_runs": 8, "run_count": 2, "next_run": next_run, "usage": []}
    progress.seed(values, [run(1, metrics={"accuracy": 0.7}), run(2, metrics={"accuracy": 0.8}, operator="improve", parent=1)])
    progress.event(stage("execute", run=3))  # the resumed step: execute's event does not say how the run came about

    text = render(progress)

    assert cells(text, "│ goal") == ["│ goal", "accuracy >= 0.9", "│"]
    assert "runs 2/8" in text
    assert cells(text, "2 ★") == ["2 ★", "improve ← 1", "ok", "1.5 s", "accuracy=0.8"]
    assert re.search(r"^\S run 3 · execute · improve ← 2  0:00  a wider hidden layer$", text, re.MULTILINE), text


def test_a_run_sent_again_by_a_resumed_step_replaces_its_first_record():
    progress = make_progress(goal="accuracy >= 0.9")
    finish(progress, run(1, metrics={"accuracy": 0.7}), run(2, "failed", operator="improve", parent=1))
    finish(progress, run(2, metrics={"accuracy": 0.8}, operator="improve", parent=1))

    text = render(progress)

    assert [r["number"] for r in progress.runs] == [1, 2]
    assert "runs 2/5" in text
    assert cells(text, "2 ★") == ["2 ★", "improve ← 1", "ok", "1.5 s", "accuracy=0.8"]


def test_a_record_from_before_the_tree_search_shows_a_dash_for_where_it_came_from():
    progress = make_progress(goal="accuracy >= 0.9")
    old = {name: value for name, value in run(1, metrics={"accuracy": 0.7}).items() if name not in ("operator", "parent")}
    progress.seed({"goal": "accuracy >= 0.9"}, [old, run(2, metrics={"accuracy": 0.5}, operator="improve", parent=1)])

    text = render(progress)

    assert cells(text, "1 ★") == ["1 ★", "—", "ok", "1.5 s", "accuracy=0.7"]
    assert cells(text, "2") == ["2", "improve ← 1", "ok", "1.5 s", "accuracy=0.5"]


def test_the_stage_line_says_what_the_coming_run_does_from_the_search_choice_to_its_change(clock: Clock):
    progress = make_progress(goal="accuracy >= 0.9")
    finish(progress, run(1, metrics={"accuracy": 0.8}), *(run(n, "failed" if n == 4 else "ok", operator="improve", parent=n - 1) for n in range(2, 5)))
    progress.event(chosen("summarize", 5, "debug", 4, reason="run 4 failed: fix 1 of at most 3"))
    assert re.search(r"^\S run 5 · summarize · debug ← 4  0:00  run 4 failed: fix 1 of at most 3$", render(progress), re.MULTILINE)

    progress.update("summarize", {"next_run": {"number": 5, "operator": "debug", "parent": 4, "reason": "run 4 failed: fix 1 of at most 3"}})
    progress.event(chosen("codegen", 5, "debug", 4, model="coder"))
    clock.now += 7
    assert re.search(r"^\S run 5 · codegen · debug ← 4 \(coder\)  0:07  run 4 failed: fix 1 of at most 3$", render(progress), re.MULTILINE)

    progress.update("codegen", {"next_run": {**progress.coming, "change": "cast the labels to int"}, "code": "x"})
    progress.event(stage("execute", run=5))
    assert re.search(r"^\S run 5 · execute · debug ← 4  0:00  cast the labels to int$", render(progress), re.MULTILINE)

    finish(progress, run(5, metrics={"accuracy": 0.85}, operator="debug", parent=4))
    progress.event(stage("analyze", run=5, model="small-model"))
    text = render(progress)
    assert re.search(r"^\S run 5 · analyze · debug ← 4 \(small-model\)  0:00  cast the labels to int$", text, re.MULTILINE), text
    assert cells(text, "5 ★") == ["5 ★", "debug ← 4", "ok", "1.5 s", "accuracy=0.85"]


def test_a_long_reason_is_cut_on_the_stage_line_not_wrapped():
    progress = make_progress()
    progress.event(chosen("summarize", 2, "improve", 1, reason="because " + "very " * 40 + "good"))

    line = next(line for line in render(progress).splitlines() if "summarize" in line)

    assert len(line) <= 100 and line.endswith("…")


def test_markup_in_names_and_goals_is_shown_as_written():
    progress = make_progress(experiment="exp[bold]", goal="[red]acc >= 0.9", models={"codegen": "org/model[beta]"})

    text = render(progress)

    assert "experiment exp[bold]" in text
    assert "[red]acc >= 0.9" in text
    assert "codegen: org/model[beta]" in text


# --- the plain view: one line per event ---


def plain_console(**kwargs) -> Console:
    return Console(file=io.StringIO(), width=100, **kwargs)


def feed_a_run(view: PlainView, clock: Clock) -> None:
    """Events and updates as main.py passes them during the first run of an experiment, the clock moving."""
    view.start()
    view.event(stage("initialize", model="big-model"))
    clock.now += 4.25
    view.update("initialize", {"goal": "accuracy >= 0.9", "usage": [usage("initialize", "big-model", 1000, 200)]})
    view.event(chosen("summarize", 1, "draft", None, reason="the first run"))
    view.update("summarize", {"next_run": {"number": 1, "operator": "draft", "parent": None, "reason": "the first run"}})
    view.event(chosen("codegen", 1, "draft", None, model="coder"))
    view.event({"event": "syntax_retry", "run": 1, "error": "line 3: invalid syntax"})
    clock.now += 12
    view.update("codegen", {"usage": [usage("codegen", "coder", 2000, 800), usage("codegen", "coder", 2500, 900)]})
    view.event(chosen("execute", 1, "draft", None) | {"in_flight": 1})
    view.event({"event": "warning", "message": "no GPU found: train.py runs on the CPU"})
    view.update("execute", {"in_flight": [{"number": 1, "operator": "draft", "parent": None, "reason": "the first run", "submitted_at": 1.0}]})
    view.event(started(1, gpus=[]))
    view.event(output("epoch=1 loss=0.5", "[done] accuracy=0.9"))
    clock.now += 2
    view.event(run_done(1, {"accuracy": 0.9}))
    finish(view, run(1, metrics={"accuracy": 0.9}))
    view.event(stage("analyze", run=1, model="small-model"))
    view.event({"event": "analysis", "run": 1, "summary": "A small MLP reached the goal.", "goal_met": True})
    clock.now += 1
    view.update("analyze", None)


PLAIN_TRANSCRIPT = [
    "experiment exp · sandbox: bwrap · models: plan, report=big-model, codegen=coder, analyze=small-model",
    "▶ initialize (big-model)",
    "  ✓ initialize (4.2 s) · 1,200 tokens · goal: accuracy >= 0.9",
    "▶ run 1 · summarize · draft · the first run",
    "  ✓ summarize (0.0 s) · 1,200 tokens",
    "▶ run 1 · codegen · draft (coder)",
    "! run 1: generated code does not compile (line 3: invalid syntax); asking once more",
    "  ✓ codegen (12.0 s) · 7,400 tokens",
    "▶ run 1 · execute · draft",
    "! no GPU found: train.py runs on the CPU",
    "  ✓ execute (0.0 s) · 7,400 tokens",
    "  run 1 │ epoch=1 loss=0.5",
    "  run 1 │ [done] accuracy=0.9",
    "■ run 1 ok in 2.0 s · draft · metrics: accuracy=0.9",
    "  ✓ wait (2.0 s) · 7,400 tokens",
    "▶ run 1 · analyze (small-model)",
    "✎ run 1: A small MLP reached the goal.",
    "  ✓ analyze (1.0 s) · 7,400 tokens",
]


def test_the_plain_view_prints_one_line_per_event_and_no_escape_codes_off_a_terminal(clock: Clock):
    console = plain_console(force_terminal=False)
    feed_a_run(PlainView(console, make_progress()), clock)

    written = console.file.getvalue()
    assert written.splitlines() == PLAIN_TRANSCRIPT
    assert "\x1b" not in written


def test_the_plain_view_says_which_runs_failed_and_what_is_spent():
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress(model_prices={"coder": [1.0, 2.0]}))

    view.event(run_done(2, {}, status="timeout", duration_s=3600, operator="improve", parent=1))
    view.update("codegen", {"usage": [usage("codegen", "coder", 100_000, 20_000)]})

    assert console.file.getvalue().splitlines() == [
        "■ run 2 timeout in 3600.0 s · improve ← 1 · metrics: none found",
        "  ✓ codegen (0.0 s) · 120,000 tokens · $0.1400",
    ]


def test_the_views_say_how_a_model_gives_structured_replies_and_count_cached_tokens():
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress())
    refused = ["function_calling refused: 400 m does not support tools", "json_schema refused: 400 response_format is not supported"]

    view.event({"event": "structured_output", "model": "small-model", "method": "prompt", "refused": refused})
    view.update("analyze", {"usage": [{**usage("analyze", "small-model", 1000, 100), "cached_tokens": 800}]})

    assert console.file.getvalue().splitlines() == [
        "· structured output of model small-model: prompt (function_calling refused: 400 m does not support tools; "
        "json_schema refused: 400 response_format is not supported)",
        "  ✓ analyze (0.0 s) · 1,100 tokens (800 cached)",
    ]
    assert cells(render(view.progress), "analyze") == ["analyze", "1", "1,000", "800", "100", "unknown"]


def test_the_plain_view_names_each_runs_operator_and_parent_and_the_change_codegen_named(clock: Clock):
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress(goal="accuracy >= 0.9"))

    view.event(chosen("summarize", 5, "improve", 3, reason="run 3 is the best so far"))
    view.update("summarize", {"next_run": {"number": 5, "operator": "improve", "parent": 3, "reason": "run 3 is the best so far"}})
    view.event(chosen("codegen", 5, "improve", 3, model="coder"))
    clock.now += 2
    view.update("codegen", {"next_run": {"number": 5, "operator": "improve", "parent": 3, "reason": "", "change": "lr 1e-3 → 3e-4,\nand no dropout"}})
    view.event(stage("execute", run=5))
    view.event(run_done(5, {"accuracy": 0.93}, operator="improve", parent=3))
    view.event(chosen("summarize", 6, "debug", 4, reason="run 4 failed: fix 2 of at most 3"))
    view.event(chosen("codegen", 7, "draft", None, model="coder"))

    assert console.file.getvalue().splitlines() == [
        "▶ run 5 · summarize · improve ← 3 · run 3 is the best so far",
        "  ✓ summarize (0.0 s) · 0 tokens · $0.0000",
        "▶ run 5 · codegen · improve ← 3 (coder)",
        "  ✓ codegen (2.0 s) · 0 tokens · $0.0000 · change: lr 1e-3 → 3e-4, and no dropout",
        "▶ run 5 · execute",
        "■ run 5 ok in 2.0 s · improve ← 3 · metrics: accuracy=0.93",
        "▶ run 6 · summarize · debug ← 4 · run 4 failed: fix 2 of at most 3",
        "▶ run 7 · codegen · draft (coder)",
    ]


def test_the_plain_view_can_leave_the_scripts_output_out():
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress(), echo_output=False)

    view.event(stage("execute", run=1))
    view.event(output("epoch=1 loss=0.5"))

    assert console.file.getvalue().splitlines() == ["▶ run 1 · execute"]
    assert list(view.progress.in_flight[1].tail) == ["epoch=1 loss=0.5"], "the progress is kept up to date all the same"


def test_while_the_review_prompt_waits_the_plain_view_holds_what_the_runs_in_flight_say_and_prints_it_after():
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress())
    view.event(stage("execute", run=1))

    with view.paused():
        console.print("Approve run 2?")
        view.event(output("epoch 1", "epoch 2", run=1))
        view.event(run_done(1, {"accuracy": 0.9}))
        assert console.file.getvalue().splitlines() == ["▶ run 1 · execute", "Approve run 2?"]  # nothing in the prompt's way

    after = console.file.getvalue().splitlines()[2:]
    assert after[0].startswith("■ run 1 ok in 2.0 s") and "2 lines of output while paused" in after[1]
    view.event(output("epoch 3", run=1))
    assert console.file.getvalue().splitlines()[-1] == "  run 1 │ epoch 3"


def test_the_plain_view_shows_the_scripts_output_as_a_terminal_would_leave_it_without_control_characters():
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress())

    view.event(output("\x1b[31mred\x1b[0m text\x07", " 10%|#   |\r 50%|#####|\r100%|##########|", "a\tb\x00c\x9bd"))

    assert console.file.getvalue().splitlines() == ["  run 1 │ [31mred[0m text", "  run 1 │ 100%|##########|", "  run 1 │ a\tbcd"]


def test_the_plain_view_dims_the_scripts_output_on_a_terminal():
    console = plain_console(force_terminal=True)
    PlainView(console, make_progress()).event(output("epoch=1"))

    assert console.file.getvalue() == "\x1b[2m  run 1 │ epoch=1\x1b[0m\n"


SGR = re.compile(r"\x1b\[([0-9;]*)m")


def colour_codes(written: str) -> list[str]:
    """The SGR parameters in `written` that set a foreground or background colour."""
    params = [int(p) for match in SGR.findall(written) for p in match.split(";") if p]
    return [str(p) for p in params if 30 <= p <= 49 or 90 <= p <= 107]


def test_the_plain_view_on_a_terminal_is_coloured_unless_no_color_is_set(monkeypatch: pytest.MonkeyPatch, clock: Clock):
    coloured = plain_console(force_terminal=True)
    feed_a_run(PlainView(coloured, make_progress()), clock)
    assert colour_codes(coloured.file.getvalue()), "the check below would pass for nothing"

    monkeypatch.setenv("NO_COLOR", "1")
    plain = plain_console(force_terminal=True)
    feed_a_run(PlainView(plain, make_progress()), clock)

    written = plain.file.getvalue()
    assert colour_codes(written) == []
    assert [SGR.sub("", line) for line in written.splitlines()] == PLAIN_TRANSCRIPT


def test_the_plain_view_shows_a_graded_runs_self_report_the_graders_failure_and_its_first_doubt():
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress(goal="accuracy >= 0.9"))
    flags = ["self-reported accuracy 0.99, graded 0.71", "a link out of its folder was removed before grading: labels.csv"]

    view.event(run_done(1, {"accuracy": 0.71}) | {"reported": {"accuracy": 0.99}, "flags": flags})
    view.event(run_done(2, {}, status="grade_failed", operator="improve", parent=1) | {"reported": {"accuracy": 0.9}, "error": "grade.py timed out after 60 s"})
    view.event(run_done(3, {"test_accuracy": 1.0}, operator="improve", parent=1) | {"flags": ["perfect score test_accuracy 1: check it"]})

    assert console.file.getvalue().splitlines() == [
        "■ run 1 ok in 2.0 s · draft · metrics: accuracy=0.71 · self-reported: accuracy=0.99 · ⚑ self-reported accuracy 0.99, graded 0.71 (and 1 more)",
        "■ run 2 grade_failed in 2.0 s · improve ← 1 · metrics: none found · self-reported: accuracy=0.9 · grade.py timed out after 60 s",
        "■ run 3 ok in 2.0 s · improve ← 1 · metrics: test_accuracy=1 · ⚑ perfect score test_accuracy 1: check it",
    ]
    assert views.event_line(run_done(2, {}, status="grade_failed")).style == "red"
    kept = {run["number"]: run for run in view.progress.runs}
    assert kept[1]["reported"] == {"accuracy": 0.99} and kept[1]["flags"] == flags and kept[1]["error"] == ""
    assert kept[2]["error"] == "grade.py timed out after 60 s" and "flags" not in kept[2]
    assert "reported" not in kept[3]


def test_the_runs_table_marks_flagged_runs_and_shows_the_self_report_beside_the_grade():
    progress = make_progress(goal="accuracy >= 0.9")
    flagged = RunRecord(**run(1, metrics={"accuracy": 0.71}), reported={"accuracy": 0.99}, flags=["self-reported accuracy 0.99, graded 0.71"])
    failed = RunRecord(**run(2, "grade_failed", operator="improve", parent=1), reported={"accuracy": 0.9})
    finish(progress, flagged, failed, RunRecord(**run(3, metrics={"accuracy": 0.8}, operator="improve", parent=1), reported={}))

    text = render(progress)

    assert cells(text, "1") == ["1", "draft", "ok ⚑", "1.5 s", "accuracy=0.71 (self-reported 0.99)"]
    assert cells(text, "2") == ["2", "improve ← 1", "grade_failed", "1.5 s", "- (self-reported 0.9)"]
    assert cells(text, "3 ★") == ["3 ★", "improve ← 1", "ok", "1.5 s", "accuracy=0.8"]
    ungraded = make_progress(goal="")
    finish(ungraded, RunRecord(**run(1, metrics={"accuracy": 1.0}), flags=["perfect score accuracy 1: check it"]))
    assert cells(render(ungraded), "1") == ["1", "draft", "ok ⚑", "1.5 s", "accuracy=1"]


# --- the quiet view: nothing but warnings ---


def test_the_quiet_view_prints_nothing_but_warnings_which_go_to_their_own_console(clock: Clock):
    console, warnings = plain_console(force_terminal=False), plain_console(force_terminal=False)
    view = QuietView(console, make_progress(), warnings)

    feed_a_run(view, clock)
    view.stop()

    assert console.file.getvalue() == ""
    assert warnings.file.getvalue() == "! no GPU found: train.py runs on the CPU\n"
    assert view.progress.goal == "accuracy >= 0.9" and len(view.progress.runs) == 1, "the progress is kept for the outcome"


def test_the_quiet_view_shows_markup_in_a_warning_as_written():
    console, warnings = plain_console(force_terminal=False), plain_console(force_terminal=False)

    QuietView(console, make_progress(), warnings).event({"event": "warning", "message": "[bold]not bold[/bold]"})

    assert warnings.file.getvalue() == "! [bold]not bold[/bold]\n"


# --- the live view on a terminal ---


CONTROL = re.compile(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)")


def screen(written: str) -> list[str]:
    """What a terminal shows after `written`: enough of one to follow Live's cursor-up and erase-line codes, trailing spaces dropped."""
    lines, row, col = [""], 0, 0
    for token in CONTROL.split(written):
        if token == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            col = 0
        elif token == "\x1b[2K":
            lines[row] = ""
        elif match := re.fullmatch(r"\x1b\[(\d*)A", token):
            row = max(row - int(match.group(1) or 1), 0)
        elif token and not token.startswith("\x1b"):
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [line.rstrip() for line in lines]


def live_console(height: int = 40) -> Console:
    return Console(file=io.StringIO(), width=100, height=height, force_terminal=True, color_system=None)


@pytest.fixture
def live_view():
    """A LiveView on a 100-column terminal; stopped after the test whatever happens (Live redirects sys.stdout while it runs)."""
    view = LiveView(live_console(), make_progress(goal="accuracy >= 0.9"))
    yield view
    view.live.stop()


def test_the_live_view_prints_messages_above_itself_and_leaves_a_last_frame_without_the_spinner(live_view: LiveView):
    view, console = live_view, live_view.console
    view.start()
    view.event(chosen("codegen", 1, "draft", None, model="coder"))
    view.event({"event": "syntax_retry", "run": 1, "error": "line 3: invalid syntax"})
    view.update("codegen", {"usage": [usage("codegen", "coder", 2000, 800)]})
    view.event(stage("execute", run=1))
    view.event(output("epoch=1 loss=0.5 accuracy=0.93"))
    view.live.refresh()
    assert any(line.endswith("run 1 · execute · draft  0:00") for line in screen(console.file.getvalue())), "the frame shows the stage while it runs"
    view.event({"event": "warning", "message": "disk almost full"})
    view.event(run_done(1, {"accuracy": 0.93}))
    finish(view, run(1, metrics={"accuracy": 0.93}))
    view.event(stage("analyze", run=1, model="small-model"))
    view.event({"event": "analysis", "run": 1, "summary": "It reached the goal.", "goal_met": True})

    view.stop()

    assert not view.live.is_started
    shown = screen(console.file.getvalue())
    assert shown[:3] == [
        "! run 1: generated code does not compile (line 3: invalid syntax); asking once more",
        "! disk almost full",
        "✎ run 1: It reached the goal.",
    ]
    last_frame = "\n".join(shown[3:]).rstrip("\n")
    assert last_frame == render(view.progress)
    assert "runs 1/5" in last_frame and cells(last_frame, "1 ★")[-1] == "accuracy=0.93"
    assert "run 1 · analyze" not in last_frame and "output.log" not in last_frame
    assert not any(frame in last_frame for frame in SPINNER_FRAMES)
    assert console.file.getvalue().endswith("\x1b[?25h"), "the cursor is given back"


def test_stopping_the_live_view_twice_or_before_it_starts_is_harmless(live_view: LiveView):
    live_view.stop()
    assert live_view.console.file.getvalue() == ""

    live_view.start()
    live_view.stop()
    written = live_view.console.file.getvalue()
    live_view.stop()

    assert live_view.console.file.getvalue() == written
    assert not live_view.live.is_started


def test_the_live_view_stops_redrawing_while_paused_and_starts_again_after(live_view: LiveView):
    live_view.start()
    live_view.event(stage("review", run=1))

    with live_view.paused():
        assert not live_view.live.is_started
        paused_at = len(live_view.console.file.getvalue())
        live_view.console.print("Run it? [a]pprove, [r]eject with a reason, [e]dit:", markup=False)
        assert live_view.console.file.getvalue()[paused_at:] == "Run it? [a]pprove, [r]eject with a reason, [e]dit:\n", "no frame is redrawn around it"

    assert live_view.live.is_started
    live_view.stop()
    assert not live_view.live.is_started


def test_what_is_printed_while_the_live_view_is_paused_stays_on_screen(live_view: LiveView):
    console = live_view.console
    live_view.start()
    live_view.event(stage("review", run=1))
    live_view.live.refresh()

    with live_view.paused():
        console.rule("Review: run 1 · run_1/train.py")
        console.print("print('hello')", markup=False)
        console.print("Run it? [a]pprove, [r]eject with a reason, [e]dit: a", markup=False)
    live_view.stop()

    shown = screen(console.file.getvalue())
    assert "print('hello')" in shown
    assert "Run it? [a]pprove, [r]eject with a reason, [e]dit: a" in shown


@pytest.mark.parametrize(
    "feed",
    [
        pytest.param(lambda view: view.event({"event": "analysis", "run": 1, "summary": "saved to C:\\out\\"}), id="analysis"),
        pytest.param(lambda view: view.event({"event": "syntax_retry", "run": 1, "error": "stray \\"}), id="syntax_retry"),
        pytest.param(lambda view: view.update("initialize", {"goal": "reach 0.9 \\"}), id="goal"),
    ],
)
def test_a_trailing_backslash_is_shown_once(feed):
    console = plain_console(force_terminal=False)

    feed(PlainView(console, make_progress()))

    assert "\\\\" not in console.file.getvalue()


def test_after_a_pause_the_live_view_still_fits_the_terminal():
    console = live_console(height=12)
    view = LiveView(console, make_progress())
    view.live.auto_refresh = False  # every frame below is drawn by an explicit refresh
    try:
        view.start()
        view.event(stage("execute", run=1))
        view.event(output(*[f"step {i}" for i in range(15)]))
        with view.paused():
            pass
        before = len(console.file.getvalue())
        view.live.refresh()
        frame = console.file.getvalue()[before:]
    finally:
        view.live.stop()

    assert frame.count("\n") < 12


# --- a stage cut short, and the script's progress ---


def halt(stage_name: str, reason: str) -> dict:
    """A node's update when it was cut short, as graph/experiment.py's halt() makes it."""
    return {"stop_reason": reason, "stop_detail": "provider down", "halted": {"stage": stage_name, "stop_reason": None, "stop_detail": ""}, "usage": []}


def test_the_plain_view_marks_a_stage_cut_short_not_as_done(clock: Clock):
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress())

    view.event(stage("initialize", model="big-model"))
    clock.now += 1.4
    view.update("initialize", halt("initialize", "llm_unavailable"))
    view.event(stage("report", model="big-model"))
    view.update("report", {"report_path": "/x/REPORT.md"})

    assert console.file.getvalue().splitlines() == [
        "▶ initialize (big-model)",
        "  ✗ initialize failed: llm_unavailable (1.4 s) · 0 tokens · $0.0000",
        "▶ report (big-model)",
        "  ✓ report (0.0 s) · 0 tokens · $0.0000",
    ]


def test_the_plain_view_marks_an_interrupted_stage_its_own_way_and_a_resumed_one_as_done(clock: Clock):
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress())

    view.event(stage("codegen", run=2, model="coder"))
    clock.now += 3
    view.update("codegen", halt("codegen", "interrupted"))
    view.update("analyze", halt("analyze", "interrupted"))  # stopped before it began: no time of its own
    view.update("codegen", {"halted": None, "stop_reason": None, "stop_detail": "", "code": "x"})  # a resume that succeeds

    assert console.file.getvalue().splitlines() == [
        "▶ run 2 · codegen (coder)",
        "  ⊘ codegen interrupted (3.0 s) · 0 tokens · $0.0000",
        "  ⊘ analyze interrupted · 0 tokens · $0.0000",
        "  ✓ codegen (3.0 s) · 0 tokens · $0.0000",
    ]


def test_the_live_view_marks_a_stage_cut_short_instead_of_spinning_and_keeps_the_mark(clock: Clock):
    progress = make_progress()
    progress.event(stage("codegen", run=1, model="coder"))
    progress.update("codegen", halt("codegen", "fatal"))

    text = render(progress)
    assert re.search(r"^✗ run 1 · codegen failed: fatal$", text, re.MULTILINE), text
    assert not any(frame in text for frame in SPINNER_FRAMES)

    progress.event(stage("report", model="big-model"))  # the record of the halt is written next
    text = render(progress)
    assert "✗ run 1 · codegen failed: fatal" in text
    assert re.search(r"^\S report \(big-model\)  0:00$", text, re.MULTILINE), text


def test_the_live_view_marks_an_interrupted_run_and_keeps_its_output_in_sight(clock: Clock):
    progress = make_progress()
    progress.event(stage("execute", run=3))
    progress.event(output("epoch 2/10 loss=0.4", run=3))
    progress.update("execute", halt("execute", "interrupted"))

    text = render(progress)

    assert "⊘ run 3 · execute interrupted" in text
    assert "epoch 2/10 loss=0.4" in text, "the output before the Ctrl-C stays"
    assert "ETA" not in text and not any(frame in text for frame in SPINNER_FRAMES)


def test_the_live_view_shows_the_runs_progress_with_the_time_left_from_the_run_time(clock: Clock):
    progress = make_progress()
    progress.event(stage("execute", run=1))
    clock.now = T0 + 5  # it waited 5 s for a device: its run time starts when train.py does
    progress.event(started(1, gpus=["0"]))
    assert "ETA" not in render(progress), "no bar before the script says how far it is"

    clock.now = T0 + 35
    progress.event(output("loading data", "Epoch [3/10] loss: 0.52"))
    clock.now = T0 + 45
    text = render(progress)

    # 30 s for 30%: 70 s to go when it was printed, 10 s of which have passed.
    assert re.search(r"^▸ run 1 +draft +GPU 0 +0:40 +loss=0.52 +epoch 3/10 +[━╸ ]+ +30% +ETA 1:00$", text, re.MULTILINE), text
    assert "latest metrics: loss=0.52" in text

    progress.event(run_done(1, {"loss": 0.52}))
    progress.event(stage("execute", run=2))
    assert "ETA" not in render(progress), "a new run starts without a bar"


def test_the_live_view_takes_a_bars_own_estimate_of_the_time_left(clock: Clock):
    progress = make_progress()
    progress.event(stage("execute", run=1))
    clock.now = T0 + 12
    bar = "Epoch 3:  45%|████▌     | 450/1000 [00:12<00:15, 36.2it/s]"
    progress.event(output("Epoch 3:  10%|#         | 100/1000 [00:02<00:20, 36.2it/s]\r" + bar))
    clock.now = T0 + 17

    text = render(progress)

    assert re.search(r"^▸ run 1 +waiting +0:17 +Epoch 3: 450/1000 it +[━╸ ]+ +45% +ETA 0:10$", text, re.MULTILINE), text


def test_the_plain_view_prints_the_runs_percentage_now_and_then_not_at_every_redraw(clock: Clock):
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress(), echo_output=False)
    view.event(stage("execute", run=1))

    for second in range(1, 40):  # a bar redrawn every second for 39 s: 10 items a second, 400 in all
        clock.now = T0 + second
        view.event(output(f"{second * 10 // 4}%|{'#' * (second // 4)}| {second * 10}/400 [00:{second:02d}<?, 10.00it/s]"))
    clock.now = T0 + 60
    view.event(output("step 400/400"))
    view.event(output("step 400/400"))
    clock.now = T0 + 80
    view.event(output("step 400/400", "done"))

    assert console.file.getvalue().splitlines() == [
        "▶ run 1 · execute",
        "  ⋯ run 1 · 100/400 it (25%) · ETA 0:30",
        "  ⋯ run 1 · 200/400 it (50%) · ETA 0:20",
        "  ⋯ run 1 · 300/400 it (75%) · ETA 0:10",
        "  ⋯ run 1 · step 400/400 (100%) · ETA 0:00",
    ]


def test_a_bar_redrawn_in_place_moves_the_progress_before_its_line_ends():
    progress = make_progress()
    progress.event({"event": "stage", "stage": "execute", "run": 1})
    progress.event({"event": "output_redraw", "run": 1, "line": "Epoch 1:  45%|####5     | 450/1000 [00:12<00:15, 36.2it/s]"})
    running = progress.in_flight[1]
    assert running.progress is not None and running.progress.fraction == pytest.approx(0.45)
    progress.event({"event": "output_redraw", "run": 1, "line": "loading data"})  # no progress in it: the last one stays
    assert running.progress.fraction == pytest.approx(0.45)


# --- several runs in flight (WORKERS > 1) ---


def submit(progress: Progress | PlainView, number: int, operator: str = "draft", parent: int | None = None, in_flight: int = 1) -> None:
    """Execute's stage event for run `number`, as the stream brings it once the run is handed to the executor."""
    progress.event(chosen("execute", number, operator, parent) | {"in_flight": in_flight})


def in_flight_rows(text: str) -> list[str]:
    """The live view's lines for the runs in flight, as shown: `▸ run 2  improve ← 1  GPU 1 ...`."""
    return [line for line in text.splitlines() if re.match(r"^[▸ ] run \d+ ", line)]


def row_numbers(text: str) -> list[int]:
    """The numbers of the runs in flight, line by line."""
    return [int(line.split()[-1]) for line in re.findall(r"^[▸ ] run \d+", text, re.MULTILINE)]


def test_each_run_in_flight_has_its_own_line_and_the_tail_follows_the_newest_started(clock: Clock):
    progress = make_progress(goal="val_accuracy >= 0.95")
    submit(progress, 1)
    progress.event(started(1, gpus=["0"]))
    progress.event(output("epoch 1/4 val_accuracy=0.8", "loss=0.6", run=1))
    clock.now = T0 + 10
    submit(progress, 2, "improve", 1, in_flight=2)
    progress.event(started(2, gpus=["1", "2"], operator="improve", parent=1))
    progress.event(output("loss=0.7", run=2))
    clock.now = T0 + 20
    submit(progress, 3, "debug", 2, in_flight=3)  # no device free: it waits
    clock.now = T0 + 30

    text = render(progress)

    rows = in_flight_rows(text)
    assert len(rows) == 3
    # The goal's metric once a run printed it (run 1's newest line named only loss); else its newest line's metrics.
    assert cells(text, "run 1")[:6] == ["run 1", "draft", "GPU 0", "0:30", "val_accuracy=0.8", "epoch 1/4"]
    assert cells(text, "▸ run 2") == ["▸ run 2", "improve ← 1", "GPUs 1,2", "0:20", "loss=0.7"]
    assert cells(text, "run 3") == ["run 3", "debug ← 2", "waiting", "0:10"]
    assert "run 2 · output.log (last 15 lines)" in text and "latest metrics: loss=0.7" in text
    assert "epoch 1/4" not in text.split("output.log")[1], "the tail is run 2's alone"

    progress.event(started(3, gpus=["0"], operator="debug", parent=2))
    assert "run 3 · output.log" in render(progress), "the newest started"
    progress.event(run_done(3, {}, status="failed", operator="debug", parent=2))
    text = render(progress)
    assert "run 2 · output.log" in text and row_numbers(text) == [1, 2]
    assert cells(text, "3") == ["3", "debug ← 2", "failed", "2.0 s", "-"], "an ended run is in the table at once"


def test_with_one_run_the_live_view_is_as_before_with_one_line_for_the_run(clock: Clock):
    progress = make_progress()
    submit(progress, 1)
    progress.event(started(1, gpus=[]))
    clock.now = T0 + 65

    text = render(progress)

    assert re.search(r"^\S run 1 · execute · draft  1:05$", text, re.MULTILINE), text
    assert in_flight_rows(text) == ["▸ run 1  draft  CPU  1:05"]
    assert "run 1 · output.log (last 15 lines)" in text and "Tab" not in text


def test_events_that_come_late_do_not_bring_back_a_run_that_ended():
    # A run's thread speaks at once, the graph's stream after its step: a run that crashes at once has ended
    # before its execute stage event and execute's update reach the view.
    progress = make_progress()
    progress.event(started(1, gpus=["0"]))
    progress.event(output("Traceback (most recent call last):", run=1))
    progress.event(run_done(1, {}, status="failed"))
    submit(progress, 1)
    progress.update("execute", {"in_flight": [{"number": 1, "operator": "draft", "parent": None, "reason": "", "submitted_at": 1.0}]})
    progress.event(output("late line", run=1))

    text = render(progress)

    assert progress.in_flight == {} and in_flight_rows(text) == []
    assert "output.log" not in text
    assert cells(text, "1") == ["1", "draft", "failed", "2.0 s", "none found"]


def test_a_resumed_experiment_shows_the_runs_it_had_in_flight_until_each_starts_again_or_is_taken():
    progress = make_progress()
    values = {
        "goal": "accuracy >= 0.9",
        "max_runs": 8,
        "run_count": 1,
        "in_flight": [
            {"number": 2, "operator": "improve", "parent": 1, "reason": "", "submitted_at": 1.0},
            {"number": 3, "operator": "draft", "parent": None, "reason": "", "submitted_at": 1.0},
        ],
    }
    progress.seed(values, [run(1, metrics={"accuracy": 0.7})])
    text = render(progress)
    assert row_numbers(text) == [2, 3] and cells(text, "run 2") == ["run 2", "improve ← 1", "waiting", "0:00"]

    # Run 2 ended just before the runner was killed: wait takes its record, with no run_done of this process.
    progress.update("wait", {"latest_run": run(2, metrics={"accuracy": 0.8}, operator="improve", parent=1), "in_flight": values["in_flight"][1:]})
    progress.event(started(3, gpus=["1"]))  # started again

    text = render(progress)
    assert in_flight_rows(text) == ["▸ run 3  draft  GPU 1  0:00"]
    assert "runs 2/8" in text and cells(text, "2 ★")[:3] == ["2 ★", "improve ← 1", "ok"]


def test_runs_cancelled_at_the_final_stop_join_the_table_and_none_stays_in_flight():
    progress = make_progress(goal="accuracy >= 0.9")
    for number in (1, 2, 3):
        submit(progress, number, in_flight=number)
        progress.event(started(number, gpus=[str(number - 1)]))
    progress.event(run_done(1, {"accuracy": 0.95}))
    finish(progress, run(1, metrics={"accuracy": 0.95}))
    progress.event(run_done(2, {"accuracy": 0.5}, status="cancelled"))
    progress.update("report", {"in_flight": [], "run_count": 3, "report_path": "/x/REPORT.md"})  # run 3's run_done never came

    text = render(progress)

    assert in_flight_rows(text) == [] and "output.log" not in text
    assert cells(text, "2") == ["2", "draft", "cancelled", "2.0 s", "accuracy=0.5"]
    assert "runs 2/5" in text


def test_after_a_halt_the_runs_in_flight_keep_their_time_and_lose_their_bars(clock: Clock):
    progress = make_progress()
    submit(progress, 1)
    progress.event(started(1, gpus=["0"]))
    progress.event(output("epoch 2/10", run=1))
    submit(progress, 2, in_flight=2)
    progress.event(started(2, gpus=["1"]))
    clock.now = T0 + 20
    progress.update("wait", halt("wait", "interrupted"))
    clock.now = T0 + 100

    text = render(progress)

    assert "⊘ wait interrupted" in text
    assert [row.split()[-1] for row in in_flight_rows(text)] == ["0:20", "0:20"], "they were stopped at the halt"
    assert "ETA" not in text and "━" not in "".join(in_flight_rows(text))


def test_keys_pick_the_run_the_tail_follows(clock: Clock):
    view = LiveView(live_console(), make_progress())
    for number in (1, 2, 3):
        submit(view.progress, number, in_flight=number)
        clock.now += 1
        view.progress.event(started(number, gpus=[str(number - 1)]))

    def followed() -> str:
        text = "\n".join(line.rstrip() for line in render_text(render_live(view.progress, view.follow)).splitlines())
        marked = [row.split()[2] for row in in_flight_rows(text) if row.startswith("▸")]  # ▸ run N
        title = re.search(r"run (\d+) · output\.log", text)
        assert title is not None and marked == [title.group(1)], text
        return title.group(1)

    assert followed() == "3", "the newest started"
    view.on_key("\t")
    assert followed() == "1", "Tab goes round"
    view.on_key("\t")
    assert followed() == "2"
    view.on_key("3")
    assert followed() == "3"
    view.on_key("1")
    view.on_key("7")  # no line 7: nothing changes
    view.on_key("x")
    assert followed() == "1"
    view.on_key("0")
    assert followed() == "3", "0: the newest again"

    view.on_key("2")
    view.progress.event(run_done(2, {}))
    assert followed() == "3", "a followed run that ends gives the tail back to the newest"


def test_the_live_view_reads_keys_from_its_terminal_and_gives_the_terminal_back_for_a_pause_and_at_the_end():
    typed, read = os.openpty()
    before = termios.tcgetattr(read)
    view = LiveView(live_console(), make_progress(), keys=KeyReader(read))
    view.live.auto_refresh = False  # every frame below is drawn by an explicit refresh
    submit(view.progress, 1)
    submit(view.progress, 2, in_flight=2)
    try:
        view.start()
        os.write(typed, b"1")
        deadline = time.monotonic() + 5
        while view.follow != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        view.live.refresh()
        frame = "\n".join(screen(view.console.file.getvalue()))
        assert "run 1 · output.log" in frame and "Tab: next run" in frame

        with view.paused():
            assert termios.tcgetattr(read) == before, "the review prompt reads lines, as the terminal had it"
        assert not termios.tcgetattr(read)[3] & termios.ICANON, "keys again after the pause"
        view.stop()
        assert termios.tcgetattr(read) == before
    finally:
        view.stop()
        os.close(typed)
        os.close(read)


def render_text(renderable) -> str:
    console = Console(file=io.StringIO(), record=True, width=100, force_terminal=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_keys_are_named_under_the_tail_while_they_are_read_and_there_is_a_choice():
    progress = make_progress()
    submit(progress, 1)
    hint = "Tab: next run · 1–9: the run on that line · 0: the newest"

    assert hint not in render_text(render_live(progress, keys=True)), "one run: nothing to choose"
    submit(progress, 2, in_flight=2)
    assert hint in render_text(render_live(progress, keys=True))
    assert hint not in render_text(render_live(progress, keys=False)), "stdin is no terminal: no keys are read"


def test_the_plain_view_puts_each_runs_number_before_its_output_and_says_where_each_started(clock: Clock):
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress(), echo_output=True)

    submit(view, 1)
    view.event(started(1, gpus=["0"]))
    submit(view, 2, "improve", 1, in_flight=2)
    view.event(started(2, gpus=["1", "2"], operator="improve", parent=1))
    view.event(output("epoch 1/4", run=1))
    view.event(output("epoch 1/2", run=2))
    clock.now = T0 + 11
    view.event(output("epoch 2/4", run=1))  # each run's progress line comes on its own clock
    view.event(output("epoch 2/2", run=2))
    view.event(run_done(2, {"accuracy": 0.9}, operator="improve", parent=1))
    view.event(output("epoch 3/4", run=1))

    assert console.file.getvalue().splitlines() == [
        "▶ run 1 · execute · draft",
        "▷ run 1 started on GPU 0 · draft",
        "▶ run 2 · execute · improve ← 1 · 2 in flight",
        "▷ run 2 started on GPUs 1,2 · improve ← 1",
        "  run 1 │ epoch 1/4",
        "  run 2 │ epoch 1/2",
        "  run 1 │ epoch 2/4",
        "  ⋯ run 1 · epoch 2/4 (50%) · ETA 0:11",
        "  run 2 │ epoch 2/2",
        "  ⋯ run 2 · epoch 2/2 (100%) · ETA 0:00",
        "■ run 2 ok in 2.0 s · improve ← 1 · metrics: accuracy=0.9",
        "  run 1 │ epoch 3/4",
    ]


@pytest.mark.parametrize(
    "touch",
    [
        pytest.param(lambda progress: render_live(progress), id="a frame"),
        pytest.param(lambda progress: progress.event(output("epoch 1/4", run=1)), id="an event"),
        pytest.param(lambda progress: progress.update("wait", {"in_flight": []}), id="an update"),
        pytest.param(lambda progress: PlainView(plain_console(force_terminal=False), progress).update("wait", {}), id="a plain line"),
    ],
)
def test_the_runs_threads_the_graphs_stream_and_the_frames_take_turns(touch):
    # The runner serialises on_event but not on_update, and Live draws from a thread of its own: a frame drawn while
    # a run's event changes the runs in flight would iterate a dict that changes size under it.
    progress = make_progress()
    submit(progress, 1)
    done = threading.Event()
    progress.lock.acquire()  # as an event of another run's thread holds it
    try:
        threading.Thread(target=lambda: (touch(progress), done.set()), daemon=True).start()
        assert not done.wait(0.2), "it waits for its turn"
    finally:
        progress.lock.release()
    assert done.wait(5)


def test_a_run_on_a_ray_node_is_said_to_start_there_and_its_line_names_the_node(clock: Clock):
    console = plain_console(force_terminal=False)
    view = PlainView(console, make_progress(), echo_output=True)
    progress = make_progress()

    for event in (started(1, gpus=["1"], node="node-2"), started(2, gpus=[], node="node-3")):
        view.event(event)
        progress.event(event)

    assert console.file.getvalue().splitlines() == ["▷ run 1 started on node-2 · GPU 1 · draft", "▷ run 2 started on node-3 · CPU · draft"]
    live = render_text(render_live(progress, keys=False))
    assert "node-2 · GPU 1" in live and "node-3 · CPU" in live
