"""Tests for the offline OpenAI-compatible FakeLLMServer, driven through the real clients."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
from fake_llm import FakeLLMServer
from langchain_openai import ChatOpenAI
from pydantic import BaseModel


class Verdict(BaseModel):
    label: str
    score: float


def make_llm(server: FakeLLMServer, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(base_url=server.base_url, api_key="test", model="test-model", max_retries=0, **kwargs)


def test_plain_text_reply_with_scripted_usage():
    reply = {"content": "Hello there", "usage": {"prompt_tokens": 11, "completion_tokens": 2}, "cost": 0.001}
    with FakeLLMServer(lambda body: reply) as server:
        msg = make_llm(server).invoke("Say hello")
    assert msg.content == "Hello there"
    assert msg.usage_metadata["input_tokens"] == 11
    assert msg.usage_metadata["output_tokens"] == 2
    assert msg.usage_metadata["total_tokens"] == 13
    assert msg.response_metadata["model_name"] == "test-model"
    assert msg.response_metadata["finish_reason"] == "stop"


def test_default_usage_counts_words():
    with FakeLLMServer(lambda body: {"content": "one two three"}) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        resp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a b c d"}])
    assert resp.usage.prompt_tokens == 4
    assert resp.usage.completion_tokens == 3
    assert resp.usage.total_tokens == 7


def test_tool_call_parses_into_structured_output():
    def responder(body: dict) -> dict:
        assert body["tools"][0]["function"]["name"] == "Verdict"
        return {"tool_call": {"name": "Verdict", "arguments": {"label": "good", "score": 0.9}}}

    with FakeLLMServer(responder) as server:
        result = make_llm(server).with_structured_output(Verdict, method="function_calling").invoke("Judge")
    assert result == Verdict(label="good", score=0.9)


def test_tool_call_message_shape():
    with FakeLLMServer(lambda body: {"tool_call": {"name": "Fn", "arguments": {"x": 1}}}) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        resp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "Fn" and json.loads(call.function.arguments) == {"x": 1}


def test_401_raises_authentication_error():
    with FakeLLMServer(lambda body: {"status": 401, "error": "bad key"}) as server:
        with pytest.raises(openai.AuthenticationError) as info:
            make_llm(server).invoke("hi")
    assert info.value.status_code == 401
    assert "bad key" in str(info.value)


def test_402_raises_api_status_error():
    reply = {"status": 402, "error": "insufficient credits", "headers": {"Retry-After": "1"}}
    with FakeLLMServer(lambda body: reply) as server:
        with pytest.raises(openai.APIStatusError) as info:
            make_llm(server).invoke("hi")
    assert info.value.status_code == 402
    assert info.value.response.headers["retry-after"] == "1"


def test_responder_exception_becomes_500():
    def responder(body: dict) -> dict:
        raise RuntimeError("scripted failure")

    with FakeLLMServer(responder) as server:
        with pytest.raises(openai.InternalServerError, match="scripted failure"):
            make_llm(server).invoke("hi")


def test_requests_are_recorded_in_order():
    with FakeLLMServer(lambda body: {"content": "ok"}) as server:
        llm = make_llm(server, temperature=0)
        llm.invoke("first")
        llm.invoke([("system", "be brief"), ("user", "second")])
    assert [r["messages"][-1]["content"] for r in server.requests] == ["first", "second"]
    assert server.requests[1]["messages"][0] == {"role": "system", "content": "be brief"}
    assert all(r["model"] == "test-model" for r in server.requests)


def test_models_list():
    with FakeLLMServer(lambda body: {"content": ""}, models=["a-model", "b-model"]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        assert [m.id for m in client.models.list()] == ["a-model", "b-model"]


def test_models_and_unknown_paths_404():
    with FakeLLMServer(lambda body: {"content": ""}) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.models.list()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.base_url + "/nowhere")
        assert info.value.code == 404
        assert "error" in json.loads(info.value.read())


def test_streaming_returns_full_content_and_usage():
    reply = {"content": "streamed words here", "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    with FakeLLMServer(lambda body: reply) as server:
        msg = make_llm(server, streaming=True, stream_usage=True).invoke("stream please")
        assert server.requests[0]["stream"] is True
    assert msg.content == "streamed words here"
    assert msg.usage_metadata["input_tokens"] == 5
    assert msg.usage_metadata["output_tokens"] == 3


def test_streaming_tool_call():
    reply = {"tool_call": {"name": "Verdict", "arguments": {"label": "bad", "score": 0.1}}}
    with FakeLLMServer(lambda body: reply) as server:
        llm = make_llm(server, streaming=True).with_structured_output(Verdict, method="function_calling")
        assert llm.invoke("judge") == Verdict(label="bad", score=0.1)


def test_delay_and_stop_restart():
    server = FakeLLMServer(lambda body: {"content": "late", "delay": 0.2})
    url = server.start()
    try:
        assert url == server.base_url and url.startswith("http://127.0.0.1:")
        assert make_llm(server).invoke("x").content == "late"
        with pytest.raises(openai.APITimeoutError):
            make_llm(server, timeout=0.05).invoke("x")
    finally:
        server.stop()
    server.stop()  # idempotent
