"""report: REPORT.md = the LLM's narrative + the mechanical record, which survives an LLM failure."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from fakes import ScriptedChatModel, events_of, make_experiment, make_run, make_runtime, make_task, text_reply

from adapters.llm import LLMError
from nodes.report import report, usage_table
from state import Usage


def usage(stage: str, inp: int, out: int, cost: float | None = None) -> Usage:
    return Usage(stage=stage, model="m", input_tokens=inp, output_tokens=out, cost_usd=cost)


def finished_state(root: str, stop_reason: str | None = "goal_met") -> dict:
    return {
        "experiment_dir": root,
        "idea": "IDEA-TEXT",
        "plan": "PLAN-TEXT",
        "goal": "accuracy >= 0.9",
        "tasks": [make_task(1, "Baseline", status="done", runs=[1])],
        "findings": ["## Run 1 (ok)\n\nFINDING-ONE"],
        "runs": [
            make_run(1, metrics={"accuracy": 0.81}),
            make_run(2, metrics={"accuracy": 0.93}),
            make_run(3, status="failed", error="ValueError: boom"),
        ],
        "max_runs": 5,
        "stop_reason": stop_reason,
        "usage": [usage("initialize", 1000, 200, 0.01), usage("codegen", 3000, 900, 0.02), usage("codegen", 1000, 100, 0.005)],
    }


def test_report_has_narrative_runs_table_stop_reason_and_usage(tmp_path: Path):
    model = ScriptedChatModel(responses=[text_reply("# Report\n\nNARRATIVE: the MLP won.", input_tokens=50, output_tokens=10, cost=0.001)])
    runtime, events = make_runtime(model)
    root = make_experiment(tmp_path)

    update = report(finished_state(root), runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert update["report_path"] == str(tmp_path.resolve() / "REPORT.md")
    assert text.startswith("# Report\n\nNARRATIVE: the MLP won.")
    assert "Stopped because: **goal_met** after 3 of 5 runs. Goal: accuracy >= 0.9" in text
    assert "| 2 ★ | ok |" in text
    assert "| 1 | ok |" in text and "| 3 | failed |" in text
    assert "| initialize | 1000 | 200 | 0.0100 |" in text
    assert "| codegen | 4000 | 1000 | 0.0250 |" in text
    assert "| report | 50 | 10 | 0.0010 |" in text
    assert update["stop_reason"] == "goal_met"
    assert update["usage"] == [{"stage": "report", "model": runtime.context.report_model, "input_tokens": 50, "output_tokens": 10, "cost_usd": 0.001}]
    prompt = model.prompt()
    for part in ("IDEA-TEXT", "PLAN-TEXT", "FINDING-ONE", "#1 [done] Baseline", "run 2: ok", "error: ValueError: boom", "stopped because: goal_met"):
        assert part in prompt
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


def test_a_halted_experiment_gets_the_record_without_asking_the_llm(tmp_path: Path):
    model = ScriptedChatModel(responses=[])  # any call would fail: none may happen
    runtime, events = make_runtime(model)
    state = {
        **finished_state(make_experiment(tmp_path), stop_reason="fatal"),
        "stop_detail": "the LLM server rejected the API key (401): check LLM_API_KEY",
        "halted": {"stage": "report", "stop_reason": "goal_met", "stop_detail": "accuracy=0.93 meets accuracy >= 0.9"},
    }

    update = report(state, runtime)

    text = (tmp_path / "REPORT.md").read_text()
    assert update == {"report_path": str(tmp_path / "REPORT.md")}
    assert text.startswith("# Report (unfinished)")
    assert "**fatal** during report: the LLM server rejected the API key (401): check LLM_API_KEY" in text
    assert "had ended before that: goal_met (accuracy=0.93 meets accuracy >= 0.9)" in text
    assert f"resume with `python main.py -d {tmp_path} --resume`; it goes on with report" in text
    assert "Stopped because: **fatal** during report (see above) after 3 of 5 runs" in text
    assert "| 2 ★ | ok |" in text and "| initialize | 1000 | 200 | 0.0100 |" in text
    assert events_of(events, "stage")[0]["model"] is None


def test_usage_table_without_reported_cost():
    table = usage_table([usage("analyze", 10, 2), usage("analyze", 5, 1)])
    assert "| analyze | 15 | 3 | not reported |" in table
