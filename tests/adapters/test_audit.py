"""The audit trail: one line per LLM request, with what was asked and answered (or only the metadata)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_llm import FakeLLMServer
from fakes import make_settings
from langchain_core.messages import HumanMessage, SystemMessage

from adapters.audit import AuditLog, read_audit
from adapters.llm import LLMError, ask_structured, ask_text
from state import ExperimentPlan

MESSAGES = [SystemMessage("You plan experiments."), HumanMessage("Classify digits.")]
PLAN = {"goal": "accuracy >= 0.9", "plan": "Start small.", "tasks": [{"title": "Baseline", "notes": ""}]}


def test_a_text_call_is_recorded_with_its_messages_reply_tokens_and_cost(tmp_path: Path):
    with FakeLLMServer(lambda body: {"content": "print('hi')", "cost": 0.0125}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0)
        ask_text(settings, "some/model", MESSAGES, "codegen", AuditLog(tmp_path / "llm_calls.jsonl"))
        sent = server.requests[0]

    [line] = read_audit(tmp_path / "llm_calls.jsonl")
    assert (line["stage"], line["model"], line["ok"], line["error"]) == ("codegen", "some/model", True, None)
    assert line["messages"] == [{"role": m["role"].replace("user", "human").replace("assistant", "ai"), "content": m["content"]} for m in sent["messages"]]
    assert line["reply"] == {"role": "ai", "content": "print('hi')"}
    assert line["input_tokens"] > 0 and line["output_tokens"] > 0 and line["cost_usd"] == 0.0125
    assert line["latency_s"] >= 0 and line["time"].endswith("+00:00")


def test_a_structured_call_records_the_tool_call_and_every_repair(tmp_path: Path):
    replies = iter([{"tool_call": {"name": "ExperimentPlan", "arguments": {"goal": "x"}}}, {"tool_call": {"name": "ExperimentPlan", "arguments": PLAN}}])
    with FakeLLMServer(lambda body: next(replies)) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0)
        ask_structured(settings, "some/model", ExperimentPlan, MESSAGES, "initialize", AuditLog(tmp_path / "llm_calls.jsonl"))
        assert len(server.requests) == 2

    first, second = read_audit(tmp_path / "llm_calls.jsonl")
    assert first["reply"]["tool_calls"] == [{"name": "ExperimentPlan", "args": {"goal": "x"}}]
    assert "could not be used" in second["messages"][-1]["content"]  # the repair request, as sent
    assert second["reply"]["tool_calls"][0]["args"] == PLAN


def test_failed_requests_are_recorded_too_and_a_shrunk_retry_is_its_own_line(tmp_path: Path):
    with FakeLLMServer(lambda body: {"status": 400, "error": "maximum context length is 10 tokens"}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0)
        with pytest.raises(LLMError):
            ask_text(settings, "some/model", MESSAGES, "analyze", AuditLog(tmp_path / "llm_calls.jsonl"))
        assert len(server.requests) == 2

    lines = read_audit(tmp_path / "llm_calls.jsonl")
    assert [line["ok"] for line in lines] == [False, False]
    assert "too long" in lines[0]["error"] and "even with each message cut" in lines[1]["error"]
    assert len(lines[1]["messages"][1]["content"]) < len(lines[0]["messages"][1]["content"])
    assert lines[0]["reply"] is None and lines[0]["input_tokens"] is None


def test_without_content_only_the_metadata_is_kept(tmp_path: Path):
    with FakeLLMServer(lambda body: {"content": "secret reply"}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0)
        ask_text(settings, "some/model", MESSAGES, "report", AuditLog(tmp_path / "llm_calls.jsonl", content=False))

    [line] = read_audit(tmp_path / "llm_calls.jsonl")
    assert "messages" not in line and "reply" not in line
    assert "secret reply" not in (tmp_path / "llm_calls.jsonl").read_text() and "Classify digits" not in (tmp_path / "llm_calls.jsonl").read_text()
    assert line["stage"] == "report" and line["output_tokens"] > 0
