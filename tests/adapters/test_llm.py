"""adapters/llm: token accounting, the repair retry, the model for a stage, provider errors as LLMError."""

from __future__ import annotations

import pytest
from fake_llm import FakeLLMServer
from fakes import ScriptedChatModel, make_settings, text_reply, tool_reply
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from adapters.llm import ATTRIBUTION_HEADERS, LLMError, ask_structured, ask_text, chat_model, usage_of
from settings import OPENROUTER_URL
from state import ExperimentPlan

MESSAGES = [SystemMessage("system"), HumanMessage("question")]
GOOD_PLAN = {"goal": "accuracy >= 0.9", "plan": "p", "tasks": [{"title": "t"}]}


# usage_of


def test_usage_of_reads_tokens_and_cost():
    reply = text_reply("hi", input_tokens=12, output_tokens=3, cost=0.0042)
    assert usage_of(reply, "codegen", "m") == {"stage": "codegen", "model": "m", "input_tokens": 12, "output_tokens": 3, "cost_usd": 0.0042}


def test_usage_of_without_usage_or_cost():
    assert usage_of(AIMessage("hi"), "report", "m") == {"stage": "report", "model": "m", "input_tokens": 0, "output_tokens": 0, "cost_usd": None}


def test_usage_of_ignores_a_cost_that_is_not_a_number():
    reply = AIMessage("hi", response_metadata={"token_usage": {"cost": "n/a"}})
    assert usage_of(reply, "s", "m")["cost_usd"] is None
    assert usage_of(AIMessage("hi", response_metadata={"token_usage": None}), "s", "m")["cost_usd"] is None


# ask_text and ask_structured


def test_ask_text_returns_text_and_usage():
    model = ScriptedChatModel(responses=[text_reply("answer", cost=0.5)])
    text, usage = ask_text(make_settings(model), "m", MESSAGES, "report")
    assert text == "answer"
    assert usage["stage"] == "report" and usage["cost_usd"] == 0.5
    assert model.calls == [MESSAGES]


def test_ask_text_joins_content_parts():
    model = ScriptedChatModel(responses=[AIMessage(content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])])
    assert ask_text(make_settings(model), "m", MESSAGES, "report")[0] == "ab"


def test_ask_structured_first_reply_good():
    model = ScriptedChatModel(responses=[tool_reply("ExperimentPlan", GOOD_PLAN)])
    plan, usages = ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")
    assert isinstance(plan, ExperimentPlan) and plan.goal == "accuracy >= 0.9"
    assert len(usages) == 1 and len(model.calls) == 1


def test_ask_structured_repairs_a_bad_reply_once():
    bad = tool_reply("ExperimentPlan", {"goal": "g"}, input_tokens=7)
    model = ScriptedChatModel(responses=[bad, tool_reply("ExperimentPlan", GOOD_PLAN, input_tokens=9)])

    plan, usages = ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")

    assert plan.plan == "p"
    assert [u["input_tokens"] for u in usages] == [7, 9]
    repair = model.calls[1]
    assert repair[:2] == MESSAGES and len(repair) == 3
    assert '"goal": "g"' in repair[2].content  # what the model said, so it can fix it
    assert "validation error" in repair[2].content.lower()


def test_ask_structured_repairs_a_reply_without_tool_call():
    model = ScriptedChatModel(responses=[text_reply("I think the goal is accuracy."), tool_reply("ExperimentPlan", GOOD_PLAN)])
    plan, usages = ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")
    assert plan.goal == "accuracy >= 0.9" and len(usages) == 2
    assert "I think the goal is accuracy." in model.calls[1][-1].content


def test_ask_structured_gives_up_after_two_bad_replies():
    bad = tool_reply("ExperimentPlan", {"goal": "g"})
    model = ScriptedChatModel(responses=[bad, bad, tool_reply("ExperimentPlan", GOOD_PLAN)])
    with pytest.raises(LLMError, match=r"initialize: model m twice gave a reply that does not match ExperimentPlan"):
        ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")
    assert len(model.calls) == 2


# chat_model


def test_chat_model_returns_the_injected_model():
    model = ScriptedChatModel(responses=[])
    assert chat_model(make_settings(model), "any/model") is model


def test_chat_model_for_openrouter_sends_attribution():
    llm = chat_model(make_settings(llm_base_url=OPENROUTER_URL, openrouter_api_key="sk-or-test"), "openai/gpt-4o-mini")
    assert isinstance(llm, ChatOpenAI)
    assert llm.model_name == "openai/gpt-4o-mini"
    assert llm.openai_api_base == OPENROUTER_URL
    assert llm.openai_api_key.get_secret_value() == "sk-or-test"
    assert llm.default_headers == ATTRIBUTION_HEADERS
    assert set(ATTRIBUTION_HEADERS) == {"HTTP-Referer", "X-OpenRouter-Title", "X-Title"}
    assert llm.extra_body == {"usage": {"include": True}}


def test_chat_model_for_a_local_server_sends_no_attribution():
    llm = chat_model(make_settings(llm_base_url="http://localhost:11434/v1", llm_timeout_seconds=30, llm_max_retries=0), "llama3")
    assert isinstance(llm, ChatOpenAI)
    assert llm.openai_api_base == "http://localhost:11434/v1"
    assert not llm.default_headers
    assert llm.extra_body is None
    assert llm.openai_api_key.get_secret_value() == "not-needed"
    assert llm.request_timeout == 30 and llm.max_retries == 0


def test_llm_api_key_wins_over_openrouter_key():
    llm = chat_model(make_settings(llm_base_url="http://localhost:8000/v1", llm_api_key="local", openrouter_api_key="or"), "m")
    assert llm.openai_api_key.get_secret_value() == "local"


# through a real ChatOpenAI against a local OpenAI-compatible server


def test_cost_reported_by_the_server_reaches_usage():
    reply = {"content": "hello", "usage": {"prompt_tokens": 11, "completion_tokens": 2}, "cost": 0.0007}
    with FakeLLMServer(lambda body: reply) as server:
        text, usage = ask_text(make_settings(llm_base_url=server.base_url, llm_max_retries=0), "m", MESSAGES, "report")
    assert text == "hello"
    assert (usage["input_tokens"], usage["output_tokens"], usage["cost_usd"]) == (11, 2, 0.0007)


@pytest.mark.parametrize(
    ("status", "says"),
    [(401, "rejected the API key"), (402, "add credits"), (403, "may not use model m"), (404, "model m not found"), (500, "answered 500")],
)
def test_provider_errors_become_one_line_llm_errors(status, says):
    with FakeLLMServer(lambda body: {"status": status, "error": "nope"}) as server:
        with pytest.raises(LLMError, match=says) as caught:
            ask_text(make_settings(llm_base_url=server.base_url, llm_max_retries=0), "m", MESSAGES, "report")
    assert caught.value.status == status
    assert "\n" not in str(caught.value)


def test_unreachable_server_is_an_llm_error():
    with pytest.raises(LLMError, match="LLM_BASE_URL"):
        ask_text(make_settings(llm_max_retries=0), "m", MESSAGES, "report")
