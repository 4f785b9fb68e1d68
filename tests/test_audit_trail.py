"""The audit trail end to end: one line in .runner/llm_calls.jsonl per request the LLM server received, with what it was sent."""

from __future__ import annotations

from pathlib import Path

from scripted import ScriptedBrain, run_main, runner_env

from adapters.audit import read_audit

ROLES = {"system": "system", "user": "human", "assistant": "ai"}


def test_every_request_of_an_experiment_is_in_the_audit_log(experiment: Path, llm_server):
    brain = ScriptedBrain(cost_per_call=0.002)
    server = llm_server(brain)
    result = run_main(["-d", str(experiment), "-r", "2"], runner_env(server.base_url))
    assert result.returncode == 0, result.stderr

    lines = read_audit(experiment / ".runner" / "llm_calls.jsonl")
    assert len(lines) == len(server.requests) == 6
    assert [line["stage"] for line in lines] == brain.stages == ["initialize", "codegen", "analyze", "codegen", "analyze", "report"]
    for line, request in zip(lines, server.requests, strict=True):
        assert line["model"] == request["model"] and line["ok"]
        assert [(m["role"], m["content"]) for m in line["messages"]] == [(ROLES[m["role"]], m["content"]) for m in request["messages"]]
        assert line["cost_usd"] == 0.002 and line["input_tokens"] > 0
    assert "```python\nimport json" in lines[1]["reply"]["content"]  # what codegen was answered, as received
    assert lines[2]["reply"]["tool_calls"][0]["name"] == "RunAnalysis"


def test_audit_content_off_keeps_the_metadata_only(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    result = run_main(["-d", str(experiment), "-r", "1"], runner_env(server.base_url, AUDIT_CONTENT="0"))
    assert result.returncode == 0, result.stderr

    lines = read_audit(experiment / ".runner" / "llm_calls.jsonl")
    assert len(lines) == len(server.requests) == 4
    assert all("messages" not in line and "reply" not in line and line["output_tokens"] > 0 for line in lines)
    assert "Classify" not in (experiment / ".runner" / "llm_calls.jsonl").read_text()  # nothing of IDEA.md
