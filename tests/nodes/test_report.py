"""report: REPORT.md = the record computed from the runs (exact numbers, plots, tokens, how to reproduce) around the LLM's narrative."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import httpx
import openai
import pytest
from fakes import ScriptedChatModel, events_of, make_experiment, make_run, make_runtime, make_task, text_reply
from PIL import Image

from adapters.files import ExperimentFiles
from adapters.llm import LLMError
from adapters.plots import MAX_POINTS, plot_curves, plot_metric_per_run, read_curves
from nodes import report as report_module
from nodes.report import report, structured_output_text, usage_section, usage_table
from state import RunRecord, Usage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def usage(stage: str, inp: int, out: int, cost: float | None = None, model: str = "m") -> Usage:
    return Usage(stage=stage, model=model, input_tokens=inp, output_tokens=out, cost_usd=cost)


def assert_png(path: Path) -> None:
    """`path` is a PNG image that reads back, of a real size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def linked_images(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def recorded(root: str, runs: list[RunRecord]) -> dict:
    """The runs written to run_N/result.json as execute leaves them, and the state's count of them."""
    for run in runs:
        ExperimentFiles(root).write_result(run)
    return {"run_count": len(runs)}


def finished_state(root: str, stop_reason: str | None = "goal_met") -> dict:
    changes = ("baseline logistic regression", "MLP, 128 hidden units", "deeper MLP")  # KEY_FINDINGS.md holds what each run changed
    ExperimentFiles(root).write_findings([f"## Run {n} (ok)\n\nChanged: {change}\n\nIt ran." for n, change in enumerate(changes, start=1)])
    runs = [
        make_run(1, metrics={"accuracy": 0.81, "loss": 0.5}),
        make_run(2, metrics={"accuracy": 0.9312345678901234, "loss": 1.5e-07, "train_seconds": 3000.0}),
        make_run(3, status="failed", error="ValueError: boom"),
    ]
    return {
        **recorded(root, runs),
        "experiment_dir": root,
        "idea": "IDEA-TEXT",
        "plan": "PLAN-TEXT",
        "goal": "accuracy >= 0.9",
        "tasks": [make_task(1, "Baseline", status="done", runs=[1])],
        "findings_digest": "## Run 1 (ok)\n\nFINDING-ONE",
        "max_runs": 5,
        "stop_reason": stop_reason,
        "stop_detail": "run 2 met the goal 'accuracy >= 0.9' by metrics" if stop_reason == "goal_met" else "",
        "usage": [
            usage("initialize", 1000, 200, 0.01, model="big"),
            usage("codegen", 3000, 900, 0.02, model="big"),
            usage("codegen", 1000, 100, 0.005, model="big"),
            usage("analyze", 500, 50, 0.001, model="small"),
        ],
    }


def write_run_files(root: Path) -> None:
    """run_2's train.py and a log with per-epoch lines, as execute leaves them."""
    run = root / "run_2"
    run.mkdir(parents=True, exist_ok=True)
    (run / "train.py").write_text("print('train')\n")
    lines = [f"epoch={e} loss={1 / e:.4f} accuracy={0.5 + e / 25:.4f}" for e in range(1, 11)]
    (run / "output.log").write_text("loading data\n" + "\n".join(lines) + "\nTest accuracy: 0.93\n")


def test_report_is_the_record_around_the_narrative(tmp_path: Path):
    narrative = "# Report\n\nNARRATIVE: the MLP won.\n\n## Key findings\n\n- width helps\n\n## What to try next\n\n- dropout"
    model = ScriptedChatModel(responses=[text_reply(narrative, input_tokens=50, output_tokens=10, cost=0.001)])
    runtime, events = make_runtime(model)
    root = make_experiment(tmp_path)
    write_run_files(tmp_path)

    update = report(finished_state(root), runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert update["report_path"] == str(tmp_path.resolve() / "REPORT.md")
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == [
        "# Report",
        "## Goal and outcome",
        "## Best run",
        "## Key findings",
        "## What to try next",
        "## Runs",
        "## Plots",
        "## Tokens and cost",
        "## Reproduce the best run",
    ]
    assert "NARRATIVE: the MLP won." in text and f"written by {runtime.context.report_model}" in text
    assert "Stopped because: **goal_met** (run 2 met the goal 'accuracy >= 0.9' by metrics) after 3 of 5 runs. Goal: accuracy >= 0.9" in text
    # The best run with every metric exactly as recorded.
    assert "**Run 2** (ok, 1.5 s), best by accuracy, the goal's metric (higher is better)." in text
    assert "Metrics: accuracy=0.9312345678901234, loss=1.5e-07, train_seconds=3000" in text
    assert "Goal `accuracy >= 0.9`: met (accuracy=0.9312345678901234)." in text
    assert "Lineage: run 2 ← 1, draft." in text
    # Every run: the run it builds on and how, status, duration, metrics, error, what it changed.
    assert "| Run | Parent | Operator | Status | Duration | accuracy | loss | train_seconds | Error | What changed |" in text
    assert "| 1 | — | draft | ok | 1.5 s | 0.81 | 0.5 | — |  | baseline logistic regression |" in text
    assert "| 2 ★ | 1 | improve | ok | 1.5 s | 0.9312345678901234 | 1.5e-07 | 3000 |  | MLP, 128 hidden units |" in text
    assert "| 3 | 2 | improve | failed | 1.5 s | — | — | — | ValueError: boom | deeper MLP |" in text
    # Plots that exist, linked relatively.
    assert linked_images(text) == ["report/goal_metric.png", "report/tree.png", "report/best_run_curves.png"]
    for link in linked_images(text):
        assert_png(tmp_path / link)
    # Tokens and cost by stage and model, the report's own call included.
    assert "LLM cost (USD): 0.0370; source: reported by the provider." in text
    assert "| initialize | big | 1 | 1000 | 0 | 200 | 0.0100 |" in text
    assert "| codegen | big | 2 | 4000 | 0 | 1000 | 0.0250 |" in text
    assert "| analyze | small | 1 | 500 | 0 | 50 | 0.0010 |" in text
    assert f"| report | {runtime.context.report_model} | 1 | 50 | 0 | 10 | 0.0010 |" in text
    assert "| **total** |  | 5 | 5550 | 0 | 1260 | 0.0370 |" in text
    # How to run the best run again.
    assert "[run_2/train.py](run_2/train.py)" in text and f"cd run_2 && DATA_DIR=../data {shlex.quote(sys.executable)} train.py" in text

    assert update["stop_reason"] == "goal_met"
    assert update["usage"] == [{"stage": "report", "model": runtime.context.report_model, "input_tokens": 50, "output_tokens": 10, "cost_usd": 0.001}]
    prompt = model.prompt()
    for part in (
        "IDEA-TEXT",
        "PLAN-TEXT",
        "FINDING-ONE",
        "#1 [done] Baseline",
        "run 1 (draft): ok, 1.5 s, accuracy=0.81, loss=0.5, changed: baseline logistic regression",
        "run 2 (improve ← 1): ok, 1.5 s, accuracy=0.9312345678901234, loss=1.5e-07, train_seconds=3000, changed: MLP, 128 hidden units",
        "run 3 (improve ← 2): failed, 1.5 s, none, changed: deeper MLP, error: ValueError: boom",
        "<best_run>\nrun 2 (improve ← 1): ok",
        "stopped because: goal_met",
        "Do not repeat those tables",
    ):
        assert part in prompt, part
    assert events_of(events, "stage") == [{"event": "stage", "stage": "report", "model": runtime.context.report_model, "stop_reason": "goal_met"}]
    assert events_of(events, "warning") == []


def test_missing_stop_reason_reads_as_max_runs(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[text_reply("Narrative")]))
    update = report(finished_state(make_experiment(tmp_path), stop_reason=None), runtime)
    assert update["stop_reason"] == "max_runs"
    assert "**max_runs**" in (tmp_path / "REPORT.md").read_text()


def test_an_llm_failure_is_raised_for_the_graph_to_record(tmp_path: Path):
    down = openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions"))
    runtime, _ = make_runtime(ScriptedChatModel(responses=[down]))

    with pytest.raises(LLMError, match="LLM_BASE_URL"):
        report(finished_state(make_experiment(tmp_path)), runtime)
    assert not (tmp_path / "REPORT.md").exists()


def test_a_halted_experiment_gets_the_same_record_without_asking_the_llm(tmp_path: Path):
    model = ScriptedChatModel(responses=[])  # any call would fail: none may happen
    runtime, events = make_runtime(model)
    state = {
        **finished_state(make_experiment(tmp_path), stop_reason="fatal"),
        "stop_detail": "the LLM server rejected the API key (401): check LLM_API_KEY",
        "halted": {"stage": "report", "stop_reason": "goal_met", "stop_detail": "accuracy=0.93 meets accuracy >= 0.9"},
    }
    write_run_files(tmp_path)

    update = report(state, runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert update == {"report_path": str(tmp_path / "REPORT.md")}
    assert text.startswith("# Report (unfinished)")
    assert "**fatal** during report: the LLM server rejected the API key (401): check LLM_API_KEY" in text
    assert "had ended before that: goal_met (accuracy=0.93 meets accuracy >= 0.9)" in text
    assert f"resume with `python main.py -d {tmp_path} --resume`; it goes on with report" in text
    assert "Stopped because: **fatal** during report (see above) after 3 of 5 runs" in text
    assert "| 2 ★ | 1 | improve | ok | 1.5 s | 0.9312345678901234 |" in text and "| initialize | big | 1 | 1000 | 0 | 200 | 0.0100 |" in text
    assert "Metrics: accuracy=0.9312345678901234" in text and f"cd run_2 && DATA_DIR=../data {shlex.quote(sys.executable)} train.py" in text
    assert "Lineage: run 2 ← 1, draft." in text and "written by" not in text
    assert linked_images(text) == ["report/goal_metric.png", "report/tree.png", "report/best_run_curves.png"]
    for link in linked_images(text):
        assert_png(tmp_path / link)
    assert events_of(events, "stage")[0]["model"] is None


@pytest.mark.parametrize(("plot", "name"), [("plot_metric_per_run", "goal_metric.png"), ("plot_tree", "tree.png")])
def test_a_plot_that_fails_is_said_so_and_the_report_goes_on(tmp_path: Path, monkeypatch, plot: str, name: str):
    def broken(*args, **kwargs):
        raise RuntimeError("no backend")

    monkeypatch.setattr(report_module, plot, broken)
    runtime, _ = make_runtime(ScriptedChatModel(responses=[text_reply("Narrative")]))
    root = make_experiment(tmp_path)
    write_run_files(tmp_path)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / name).write_bytes(b"an old plot")

    report(finished_state(root), runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert "This plot could not be drawn (RuntimeError: no backend)." in text
    assert linked_images(text) == [link for link in ("report/goal_metric.png", "report/tree.png", "report/best_run_curves.png") if link != f"report/{name}"]
    assert not (tmp_path / "report" / name).exists()  # no stale plot beside the report


def test_without_any_metric_there_is_no_best_run_and_only_the_tree_is_drawn(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[text_reply("Narrative")]))
    root = make_experiment(tmp_path)
    state = {**finished_state(root), **recorded(root, [make_run(1, status="failed", error="OSError: x")])}
    ExperimentFiles(tmp_path).write_findings([])
    (tmp_path / "run_1" / "train.py").write_text("raise OSError('x')\n")

    report(state, runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert "No run reported a metric, so none can be called best." in text and "Lineage" not in text
    assert "No run reported a metric: no metric to plot." in text and linked_images(text) == ["report/tree.png"]
    assert_png(tmp_path / "report" / "tree.png")
    assert "## Reproduce the latest run" in text and f"cd run_1 && DATA_DIR=../data {shlex.quote(sys.executable)} train.py" in text


def test_without_a_numeric_goal_the_first_metric_ranks_the_runs(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[text_reply("Narrative")]))
    runs = [make_run(1, metrics={"val_loss": 0.4}), make_run(2, metrics={"val_loss": 0.2}), make_run(3, metrics={"val_loss": 0.3})]
    root = make_experiment(tmp_path)
    state = {**finished_state(root), "goal": "a convincing qualitative result", **recorded(root, runs)}

    report(state, runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert "**Run 2** (ok, 1.5 s), best by val_loss, the first metric reported (the goal names no metric), lower taken as better." in text
    assert "| 2 ★ | 1 | improve | ok |" in text and "Goal `" not in text
    assert "Run 2's output.log prints no metric twice or more: no training curves to draw." in text
    assert_png(tmp_path / "report" / "goal_metric.png")


def described_runs(path: Path) -> dict[int, str]:
    """The runs a tree PNG names in its Description text, by number: `7: improve ← 5, ok, accuracy=0.93, best`."""
    with Image.open(path) as image:
        image.load()
        lines = image.text["Description"].splitlines()
    return {int(line.split(":")[0]): line for line in lines}


def test_a_tree_of_runs_gets_the_best_runs_lineage_and_the_tree_figure(tmp_path: Path):
    model = ScriptedChatModel(responses=[text_reply("Narrative")])
    runtime, _ = make_runtime(model)
    root = make_experiment(tmp_path)
    runs = [
        make_run(1, metrics={"accuracy": 0.7}, parent=None),
        make_run(2, status="failed", error="KeyError: 'label'", parent=None),
        make_run(3, status="timeout", parent=None),
        make_run(4, metrics={"accuracy": 0.8}, operator="debug", parent=2),
        make_run(5, metrics={"accuracy": 0.85}, parent=4),
        make_run(6, status="failed", error="RuntimeError: CUDA out of memory", parent=5),
        make_run(7, metrics={"accuracy": 0.93}, parent=5),
        make_run(8, metrics={"accuracy": 0.75}, parent=1),
    ]
    state = {**finished_state(root), **recorded(root, runs), "max_runs": 8}
    ExperimentFiles(root).write_findings([])

    report(state, runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert "**Run 7** (ok, 1.5 s)" in text and "\n\nLineage: run 7 ← 5 ← 4 ← 2, draft.\n" in text
    assert "after 8 of 8 runs" in text
    rows = [line.split(" | ")[:4] for line in text.splitlines() if re.match(r"\| \d", line) and "| 1.5 s |" in line]
    assert [row[1:] for row in rows] == [
        ["—", "draft", "ok"],
        ["—", "draft", "failed"],
        ["—", "draft", "timeout"],
        ["2", "debug", "ok"],
        ["4", "improve", "ok"],
        ["5", "improve", "failed"],
        ["5", "improve", "ok"],
        ["1", "improve", "ok"],
    ]
    assert "![The search tree: each run under the run it builds on, by status, the best run's line marked](report/tree.png)" in text
    assert_png(tmp_path / "report" / "tree.png")
    assert described_runs(tmp_path / "report" / "tree.png") == {
        1: "1: draft, ok, accuracy=0.7",
        2: "2: draft, failed",
        3: "3: draft, timeout",
        4: "4: debug ← 2, ok, accuracy=0.8",
        5: "5: improve ← 4, ok, accuracy=0.85",
        6: "6: improve ← 5, failed",
        7: "7: improve ← 5, ok, accuracy=0.93, best",
        8: "8: improve ← 1, ok, accuracy=0.75",
    }
    prompt = model.prompt()
    for line in (
        "run 2 (draft): failed, 1.5 s, none, error: KeyError: 'label'",
        "run 4 (debug ← 2): ok, 1.5 s, accuracy=0.8",
        "<best_run>\nrun 7 (improve ← 5): ok",
    ):
        assert line in prompt, line


def test_a_report_without_runs_draws_no_tree_and_removes_an_old_one(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[text_reply("Narrative")]))
    root = make_experiment(tmp_path)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "tree.png").write_bytes(b"the tree of an earlier experiment")

    report({**finished_state(root), "run_count": 0}, runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert "No run finished." in text and "after 0 of 5 runs" in text and linked_images(text) == []
    assert not (tmp_path / "report" / "tree.png").exists()


# graded experiments (grade.py): the grade judges, the self-report stands beside it; flags are the doubts about the numbers


def graded_runs() -> list[RunRecord]:
    """Runs of an experiment with a grade.py, as training.write_record leaves them: run 2 claims more than it was graded."""
    disagreement = "self-reported accuracy 0.99, graded 0.91"
    return [
        RunRecord(**make_run(1, metrics={"accuracy": 0.8}), reported={"accuracy": 0.8}),
        RunRecord(**make_run(2, metrics={"accuracy": 0.91}), reported={"accuracy": 0.99, "loss": 0.01}, flags=[disagreement]),
        RunRecord(
            **make_run(3, status="grade_failed", error="grade.py printed no JSON object of metrics as its last line of stdout"), reported={"accuracy": 0.95}
        ),
    ]


def test_a_graded_report_shows_the_grade_and_the_self_report_and_its_doubts(tmp_path: Path):
    model = ScriptedChatModel(responses=[text_reply("Narrative")])
    runtime, _ = make_runtime(model)
    root = make_experiment(tmp_path)
    write_run_files(tmp_path)

    report({**finished_state(root), **recorded(root, graded_runs())}, runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert "**Run 2** (ok, 1.5 s), best by accuracy" in text
    assert "Metrics, as grade.py graded them: accuracy=0.91\n\nSelf-reported by its train.py: accuracy=0.99, loss=0.01" in text
    assert "Goal `accuracy >= 0.9`: met (accuracy=0.91).\n\n⚑ Its numbers are in doubt: see Doubts about the numbers below." in text
    assert "| Run | Parent | Operator | Status | Duration | accuracy | Self-reported | Error | What changed |" in text
    assert "| 2 ★ | 1 | improve | ok ⚑ | 1.5 s | 0.91 | accuracy=0.99, loss=0.01 |  | MLP, 128 hidden units |" in text
    assert "| 3 | 2 | improve | grade_failed | 1.5 s | — | accuracy=0.95 | grade.py printed no JSON object" in text
    assert "the Self-reported column is what each run's train.py reported about itself." in text
    doubts = text.split("## Doubts about the numbers\n\n")[1].split("\n\n## ")[0]
    assert doubts.splitlines() == [
        "Why the numbers of the runs marked ⚑ deserve a second look (a reason to check, not a verdict):",
        "",
        "- Run 2: self-reported accuracy 0.99, graded 0.91",
    ]
    assert text.index("## Runs") < text.index("## Doubts about the numbers") < text.index("## Plots")
    assert "It writes `metrics.json` beside it (run 2 reported: accuracy=0.99, loss=0.01)." in text
    assert f"`{shlex.quote(sys.executable)} grade.py run_2`. It graded run 2: accuracy=0.91." in text
    prompt = model.prompt()
    for line in (
        "run 1 (draft): ok, 1.5 s, graded: accuracy=0.8, self-reported: accuracy=0.8, changed: baseline logistic regression\n",
        "run 2 (improve ← 1): ok, 1.5 s, graded: accuracy=0.91, self-reported: accuracy=0.99, loss=0.01, changed: MLP, 128 hidden units, "
        "flagged: self-reported accuracy 0.99, graded 0.91",
        "run 3 (improve ← 2): grade_failed, 1.5 s, graded: none, self-reported: accuracy=0.95, changed: deeper MLP, error: grade.py printed no JSON object",
        "<best_run>\nrun 2 (improve ← 1): ok, 1.5 s, graded: accuracy=0.91",
    ):
        assert line in prompt, line


def test_a_graded_report_without_a_grade_says_no_run_was_graded_and_how_the_grader_failed(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[text_reply("Narrative")]))
    root = make_experiment(tmp_path)
    state = finished_state(root)
    failed = RunRecord(**{**graded_runs()[2], "number": 1, "parent": None, "operator": "draft"})
    (tmp_path / "run_1" / "train.py").write_text("print('train')\n")

    report({**state, **recorded(root, [failed])}, runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert "No run was graded with a metric, so none can be called best." in text
    assert "## Doubts about the numbers" not in text
    assert "## Reproduce the latest run" in text
    assert "grade.py run_1`. It failed on run 1: grade.py printed no JSON object of metrics as its last line of stdout" in text


def test_flags_without_a_grader_are_listed_and_a_halted_report_lists_them_too(tmp_path: Path):
    runtime, _ = make_runtime(ScriptedChatModel(responses=[]))  # halted: no call
    root = make_experiment(tmp_path)
    perfect = "perfect score accuracy 1: check that it is not measured on training data or leaked labels"
    gap = "test_accuracy 1 is far better than val_accuracy 0.8: does the test data leak into training?"
    runs = [make_run(1, metrics={"accuracy": 0.8}), RunRecord(**make_run(2, metrics={"accuracy": 1.0, "test_accuracy": 1.0}), flags=[perfect, gap])]
    state = {**finished_state(root, stop_reason="fatal"), **recorded(root, runs), "halted": {"stage": "report", "stop_reason": "", "stop_detail": ""}}
    write_run_files(tmp_path)

    report(state, runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert text.startswith("# Report (unfinished)")
    assert "| 2 ★ | 1 | improve | ok ⚑ | 1.5 s | 1 | 1 |" in text and "Self-reported" not in text
    assert f"- Run 2: {perfect}\n- Run 2: {gap}" in text
    assert "Metrics: accuracy=1, test_accuracy=1" in text and "⚑ Its numbers are in doubt" in text
    assert "(run 2 measured: accuracy=1, test_accuracy=1)" in text and "grade.py" not in text


def test_usage_table_without_reported_cost_and_with_model_prices():
    calls = [usage("analyze", 10, 2), usage("analyze", 5, 1), usage("codegen", 1_000_000, 0, model="priced")]
    table = usage_table(calls, {"priced": [3.0, 15.0]})
    assert "| analyze | m | 2 | 15 | 0 | 3 | unknown |" in table
    assert "| codegen | priced | 1 | 1000000 | 0 | 0 | 3.0000 |" in table
    assert "| **total** |  | 3 | 1000015 | 0 | 3 | at least 3.0000 (2 calls without a price) |" in table


def test_usage_section_gives_cached_tokens_their_price_and_each_models_structured_output():
    cached = {**usage("codegen", 1_000_000, 0, model="priced"), "cached_tokens": 800_000}
    learned = structured_output_text("auto", {"priced": "prompt", "m": "function_calling"})
    section = usage_section([cached, usage("analyze", 10, 2)], {"priced": [3.0, 15.0, 0.3]}, learned)
    assert "| codegen | priced | 1 | 1000000 | 800000 | 0 | 0.8400 |" in section  # 200k at $3, 800k at $0.30
    assert "| **total** |  | 2 | 1000010 | 800000 | 2 |" in section
    assert (
        "; source: MODEL_PRICES (1 calls without a price). Structured replies (STRUCTURED_OUTPUT=auto), by model: priced: prompt, m: function_calling."
        in section
    )
    assert structured_output_text("json_schema", {"m": "prompt"}) == "Structured replies: json_schema (STRUCTURED_OUTPUT)."
    assert structured_output_text("auto", {}) == "" and "Structured replies" not in usage_section([cached], {})


# adapters.plots, as the report draws them


def test_metric_per_run_plot_is_a_png(tmp_path: Path):
    path = tmp_path / "report" / "goal.png"
    plot_metric_per_run({1: 0.5, 2: None, 3: 0.8, 4: 0.7}, "accuracy", True, path, target="0.9", best=3)
    assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["goal.png"]  # no temporary file left


def test_metric_per_run_plot_of_a_single_run_and_lower_is_better(tmp_path: Path):
    plot_metric_per_run({1: 0.3}, "loss", False, tmp_path / "one.png", best=1)
    plot_metric_per_run({1: None}, "loss", False, tmp_path / "none.png")
    assert_png(tmp_path / "one.png") and assert_png(tmp_path / "none.png")


def test_read_curves_uses_the_epoch_and_keeps_curves_of_two_points_or_more(tmp_path: Path):
    log = tmp_path / "output.log"
    log.write_text(
        "lr=0.001 batch_size=64\nepoch=1 loss=0.9 val_accuracy=0.6\nnoise\nepoch=2 loss=0.5 val_accuracy=0.8\nepoch=3 loss=0.4\nTest accuracy: 0.91\n"
    )
    curves = read_curves(log).plottable(first="val_accuracy")
    assert curves == {"val_accuracy": ("epoch", [1.0, 2.0], [0.6, 0.8]), "loss": ("epoch", [1.0, 2.0, 3.0], [0.9, 0.5, 0.4])}
    plot_curves(curves, "Run 1", tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")


def test_read_curves_falls_back_to_the_line_order(tmp_path: Path):
    log = tmp_path / "output.log"
    log.write_text("loss=0.9\nstep=10 loss=0.5\n" + "".join(f"epoch=1 step={s} acc={s / 100}\n" for s in (1, 2, 1, 2)))
    curves = read_curves(log).plottable()
    assert curves["loss"] == ("log line", [1.0, 2.0], [0.9, 0.5])  # one line names no x
    assert curves["acc"][0] == "log line" and curves["acc"][1] == [3.0, 4.0, 5.0, 6.0]  # the step restarts


def test_read_curves_thins_a_long_log_and_keeps_its_last_value(tmp_path: Path):
    log = tmp_path / "output.log"
    with log.open("w") as f:
        for step in range(1, 50_001):
            f.write(f"step={step} loss={1 / step}\n")
    x_name, xs, ys = read_curves(log).plottable()["loss"]
    assert x_name == "step" and len(xs) <= MAX_POINTS + 1
    assert xs[0] == 1 and xs[-1] == 50_000 and ys[-1] == 1 / 50_000
    assert xs == sorted(xs)


def test_read_curves_of_a_missing_log_is_empty(tmp_path: Path):
    assert read_curves(tmp_path / "nothing.log").plottable() == {}
