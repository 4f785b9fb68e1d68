"""graph: the wiring, its schemas and routing, and a whole experiment run in memory with a scripted model."""

from __future__ import annotations

import json
from pathlib import Path

from fakes import ScriptedChatModel, analysis_reply, code_reply, make_experiment, make_settings, plan_reply, text_reply
from langgraph.checkpoint.memory import InMemorySaver

from adapters.files import ExperimentFiles
from graph import build_graph, graph
from graph.experiment import after_analyze

TRAIN = """\
import json
print("epoch=1 loss=0.5", flush=True)
json.dump({"accuracy": 0.8}, open("metrics.json", "w"))
"""


def test_compiled_graph_has_no_checkpointer():
    assert graph.checkpointer is None
    assert graph.name == "experiment"


def test_nodes():
    assert set(graph.nodes) - {"__start__"} == {"initialize", "summarize", "codegen", "review", "execute", "wait", "analyze", "report"}


def test_input_schema_requires_only_the_experiment_dir():
    schema = graph.get_input_jsonschema()
    assert schema["required"] == ["experiment_dir"]
    assert set(schema["properties"]) == {"experiment_dir", "max_runs"}


def test_output_schema():
    assert {"stop_reason", "report_path", "run_count", "best_run"} <= set(graph.get_output_jsonschema()["properties"])


def test_after_analyze_routing():
    assert after_analyze({"experiment_dir": "x", "stop_reason": None}) == "summarize"
    assert after_analyze({"experiment_dir": "x"}) == "summarize"
    assert after_analyze({"experiment_dir": "x", "stop_reason": "max_runs"}) == "report"
    assert after_analyze({"experiment_dir": "x", "stop_reason": "goal_met"}) == "report"


def test_two_runs_end_to_end(tmp_path: Path):
    model = ScriptedChatModel(
        responses=[
            plan_reply(goal="accuracy >= 0.9", tasks=("Baseline", "Tune")),
            code_reply(TRAIN),
            analysis_reply(summary="First run.", findings=["accuracy 0.8"], task_updates=[{"id": 1, "status": "done"}]),
            code_reply(TRAIN),
            analysis_reply(summary="Second run.", new_tasks=[{"title": "Try an MLP"}]),
            text_reply("# Report\n\nTwo runs, accuracy 0.8."),
        ]
    )
    root = make_experiment(tmp_path / "exp")
    compiled = build_graph().compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "test"}}

    updates, custom = [], []
    for mode, chunk in compiled.stream({"experiment_dir": root, "max_runs": 2}, config, context=make_settings(model), stream_mode=["updates", "custom"]):
        (updates if mode == "updates" else custom).append(chunk)

    exp = tmp_path / "exp"
    for name in ("PLAN.md", "tasks.json", "KEY_FINDINGS.md", "REPORT.md", "run_1/train.py", "run_1/output.log", "run_2/train.py", "run_2/metrics.json"):
        assert (exp / name).is_file(), name
    assert [next(iter(u)) for u in updates] == [
        "initialize",
        *["summarize", "codegen", "review", "execute", "wait", "analyze"] * 2,
        "report",
    ]

    final = compiled.get_state(config).values
    assert final["stop_reason"] == "max_runs"
    runs = ExperimentFiles(root).read_runs(final["run_count"])
    assert [(r["number"], r["operator"], r["parent"]) for r in runs] == [(1, "draft", None), (2, "improve", 1)]
    assert all(r["status"] == "ok" and r["metrics"] == {"accuracy": 0.8} for r in runs)
    assert final["latest_run"] == runs[-1] and final["best_run"] == runs[0]  # the earliest of equal values
    assert final["report_path"] == str(exp.resolve() / "REPORT.md")
    assert final["findings_digest"].count("## Run ") == 2 and "## Run 2 (ok, improve of run 1)" in (exp / "KEY_FINDINGS.md").read_text()
    # Summed per stage and model: the state stays a few entries however many calls (the audit log has each).
    assert [(u["stage"], u["calls"]) for u in final["usage"]] == [("initialize", 1), ("codegen", 2), ("analyze", 2), ("report", 1)]
    tasks = json.loads((exp / "tasks.json").read_text())["tasks"]
    assert tasks == final["tasks"] and [t["title"] for t in tasks] == ["Baseline", "Tune", "Try an MLP"]
    report = (exp / "REPORT.md").read_text()
    assert "Two runs, accuracy 0.8." in report and "**max_runs** (all 2 runs done, the limit set by -r/MAX_RUNS) after 2 of 2 runs" in report

    stages = [(e["stage"], e.get("run")) for e in custom if e["event"] == "stage"]
    assert stages == [
        ("initialize", None),
        *[(stage, run) for run in (1, 2) for stage in ("summarize", "codegen", "execute", "wait", "analyze")],
        ("report", None),
    ]
    assert [e["run"] for e in custom if e["event"] == "run_done"] == [1, 2]
    assert any(e["event"] == "output" and "epoch=1 loss=0.5" in e["lines"] for e in custom)
    assert [e["summary"] for e in custom if e["event"] == "analysis"] == ["First run.", "Second run."]

    # codegen's second prompt saw the first run's digest and code.
    second_codegen = model.prompt(3)
    assert "Run 1: ok (exit 0)" in second_codegen and "json.dump" in second_codegen
