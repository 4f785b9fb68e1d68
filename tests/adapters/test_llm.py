"""adapters/llm: token accounting, the repair retry, the model for a stage, provider errors as LLMErrors of a kind."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest
from fake_llm import FakeLLMServer
from fakes import ScriptedChatModel, make_settings, text_reply, tool_reply
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from adapters.llm import (
    ATTRIBUTION_HEADERS,
    STRUCTURED_METHODS,
    LLMError,
    Prompt,
    ask_reply,
    ask_structured,
    ask_text,
    chat_model,
    is_retryable,
    json_candidates,
    methods_to_try,
    model_variables,
    prompt_messages,
    shrink,
    strip_reasoning,
    usage_of,
    without_trailing_commas,
)
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
    plan, usages, *_ = ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")
    assert isinstance(plan, ExperimentPlan) and plan.goal == "accuracy >= 0.9"
    assert len(usages) == 1 and len(model.calls) == 1


def test_ask_structured_repairs_a_bad_reply_once():
    bad = tool_reply("ExperimentPlan", {"goal": "g"}, input_tokens=7)
    model = ScriptedChatModel(responses=[bad, tool_reply("ExperimentPlan", GOOD_PLAN, input_tokens=9)])

    plan, usages, *_ = ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")

    assert plan.plan == "p"
    assert [u["input_tokens"] for u in usages] == [7, 9]
    repair = model.calls[1]
    assert repair[:2] == MESSAGES and len(repair) == 3
    assert '"goal": "g"' in repair[2].content  # what the model said, so it can fix it
    assert "validation error" in repair[2].content.lower()


def test_ask_structured_repairs_a_reply_without_tool_call():
    model = ScriptedChatModel(responses=[text_reply("I think the goal is accuracy."), tool_reply("ExperimentPlan", GOOD_PLAN)])
    plan, usages, *_ = ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")
    assert plan.goal == "accuracy >= 0.9" and len(usages) == 2
    assert "I think the goal is accuracy." in model.calls[1][-1].content


def test_the_repair_request_never_echoes_the_reasoning():
    said = "<think>SECRET DRAFT of the plan</think>I think the goal is accuracy."
    model = ScriptedChatModel(responses=[text_reply(said), tool_reply("ExperimentPlan", GOOD_PLAN)])
    ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")
    repair = model.calls[1][-1].content
    assert "I think the goal is accuracy." in repair and "SECRET DRAFT" not in repair and "<think>" not in repair


def test_a_json_answer_after_the_reasoning_is_read_without_a_repair():
    draft = json.dumps({"goal": "a draft", "plan": "never this", "tasks": []})
    model = ScriptedChatModel(responses=[text_reply(f"<think>First a draft: {draft}</think>\n```json\n{json.dumps(GOOD_PLAN)}\n```")])
    plan, usages, *_ = ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")
    assert plan.goal == "accuracy >= 0.9" and len(model.calls) == 1 and len(usages) == 1


@pytest.mark.parametrize(
    "reply",
    [
        "Here is the plan you asked for: {plan} I hope it helps.",  # among prose
        "```\n{plan}\n```",  # a bare fence
        '<think>an example first: {{"goal": "not this"}}</think>Example: {{"tasks": []}}. The answer: {plan}',  # the valid object wins
        "{trailing}",  # trailing commas, which JSON refuses
        "Answer:\n```json\n{trailing}\n```",
    ],
)
def test_a_json_answer_is_read_from_prose_fences_and_trailing_commas_without_a_repair(reply: str):
    plan = json.dumps(GOOD_PLAN)
    trailing = plan.replace("]", ",]").replace("}", ",}")  # a comma before every closing bracket
    model = ScriptedChatModel(responses=[text_reply(reply.format(plan=plan, trailing=trailing))])
    answer, *_ = ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")
    assert answer == ExperimentPlan(**GOOD_PLAN) and len(model.calls) == 1


def test_commas_inside_strings_are_kept_and_objects_are_found_past_braces_in_strings():
    assert without_trailing_commas('{"a": [1, 2,], "b": "x,}", }') == '{"a": [1, 2], "b": "x,}" }'
    text = 'Sure: {"a": {"b": "}"}} and {"c": "\\"}"} done'
    assert list(json_candidates(text))[1:] == ['{"a": {"b": "}"}}', '{"c": "\\"}"}']


def test_ask_structured_gives_up_after_two_bad_replies():
    bad = tool_reply("ExperimentPlan", {"goal": "g"})
    model = ScriptedChatModel(responses=[bad, bad, tool_reply("ExperimentPlan", GOOD_PLAN)])
    with pytest.raises(
        LLMError, match=r"initialize: model m twice gave a reply that does not match ExperimentPlan: try STRUCTURED_OUTPUT=json_schema"
    ) as caught:
        ask_structured(make_settings(model), "m", ExperimentPlan, MESSAGES, "initialize")
    assert len(model.calls) == 2
    assert caught.value.kind == "reply" and not is_retryable(caught.value)


# reasoning and replies cut off


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("<think>\nA draft:\n```python\nx = 1\n```\n</think>\n\nThe answer.", "The answer."),
        ("<thinking>hmm</thinking>The answer.", "The answer."),
        ("<THINK>hmm</THINK> The answer.", "The answer."),
        ("<think>a</think>\n<think>b</think>The answer.", "The answer."),
        ("<think>a</think>The <think>b</think> tags of a chat template.", "The <think>b</think> tags of a chat template."),
        ("```python\nanswer = text.split('</think>')[-1]\n```", "```python\nanswer = text.split('</think>')[-1]\n```"),
        ('```python\nEMPTY = """<think>\n</think>\n"""\n```', '```python\nEMPTY = """<think>\n</think>\n"""\n```'),
        ("  <think>\nStill thinking when the reply stopped: ```python\nx = 1\n```", ""),
        ("The template opened the block.\n```python\nx = 1\n```\n</think>\nThe answer.", "The answer."),  # DeepSeek-R1's chat template
        ("The answer, no reasoning.\n", "The answer, no reasoning.\n"),
        ("print('<think> is just text here')", "print('<think> is just text here')"),
    ],
)
def test_strip_reasoning(reply, answer):
    assert strip_reasoning(reply) == answer


def test_ask_text_gives_the_answer_without_the_reasoning():
    reply = {"content": "<think>draft</think>\nThe answer.", "reasoning_content": "separate reasoning", "reasoning": "more reasoning"}
    with FakeLLMServer(lambda body: reply) as server:
        assert ask_text(make_settings(llm_base_url=server.base_url, llm_max_retries=0), "m", MESSAGES, "report")[0] == "The answer."


def test_reasoning_content_blocks_are_not_the_answer():
    content = [{"type": "reasoning", "reasoning": "a draft", "text": "a draft"}, {"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "answer"}]
    model = ScriptedChatModel(responses=[AIMessage(content=content)])
    assert ask_text(make_settings(model), "m", MESSAGES, "report")[0] == "answer"


def test_ask_reply_says_whether_the_output_limit_cut_the_reply():
    replies = iter([{"content": "A long answer that stops mid-", "finish_reason": "length"}, {"content": "A whole answer."}])
    with FakeLLMServer(lambda body: next(replies)) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0)
        cut, whole = ask_reply(settings, "m", MESSAGES, "codegen"), ask_reply(settings, "m", MESSAGES, "codegen")
    assert (cut.text, cut.cut_off) == ("A long answer that stops mid-", True)
    assert (whole.text, whole.cut_off) == ("A whole answer.", False)


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
    ("status", "kind", "says"),
    [
        (401, "fatal", r"rejected the API key \(401\): check LLM_API_KEY"),
        (402, "fatal", r"LLM_API_KEY is out of credits \(402\): add credits"),
        (403, "fatal", r"refuses model my/coder with this key \(403\): check LLM_API_KEY and CODE_MODEL"),
        (404, "fatal", r"model my/coder not found at the LLM server \(404\): check CODE_MODEL, or LLM_BASE_URL"),
        (422, "fatal", r"refused the request for model my/coder \(422\): check CODE_MODEL"),
        (429, "unavailable", r"keeps rate-limiting requests \(429\): try later"),
        (500, "unavailable", r"keeps failing \(500\): try later"),
        (503, "unavailable", r"keeps failing \(503\)"),
    ],
)
def test_provider_errors_become_one_line_llm_errors_of_a_kind(status, kind, says):
    with FakeLLMServer(lambda body: {"status": status, "error": "nope\nsecond line"}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, llm_api_key="k", code_model="my/coder")
        with pytest.raises(LLMError, match=says) as caught:
            ask_text(settings, "my/coder", MESSAGES, "codegen")
    assert (caught.value.kind, caught.value.status) == (kind, status)
    assert is_retryable(caught.value) == (kind == "unavailable")
    assert "\n" not in str(caught.value) and "nope second line" in str(caught.value)


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ({"status": 501, "html": "<html><body><h1>Error response</h1><p>Unsupported method ('POST')</p></body></html>"}, 501),
        ({"status": 405, "html": "<html><title>405 Method Not Allowed</title></html>"}, 405),
        ({"status": 404, "html": "<!DOCTYPE html><html><body>Page not found</body></html>"}, 404),
        ({"status": 501, "error": "Not Implemented"}, 501),
    ],
)
def test_a_server_that_is_no_openai_api_is_a_wrong_base_url(reply, status):
    with FakeLLMServer(lambda body: reply) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, code_model="my/coder")
        with pytest.raises(LLMError) as caught:
            ask_text(settings, "my/coder", MESSAGES, "codegen")
    says = f"{server.base_url} does not look like an OpenAI-compatible endpoint ({status}: "
    assert str(caught.value).startswith(says) and "check LLM_BASE_URL" in str(caught.value) and "<html" not in str(caught.value)
    assert (caught.value.kind, caught.value.status) == ("fatal", status) and not is_retryable(caught.value)


@pytest.mark.parametrize("body", [{"error": "model 'my/coder' not found, try pulling it first"}, {"message": "The model `my/coder` does not exist."}])
def test_a_404_with_an_api_error_body_of_any_shape_is_an_unknown_model_not_a_wrong_url(body):
    with FakeLLMServer(lambda request: {"status": 404, "body": body}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, code_model="my/coder")
        with pytest.raises(LLMError) as caught:
            ask_text(settings, "my/coder", MESSAGES, "codegen")
    assert str(caught.value).startswith("model my/coder not found at the LLM server (404)") and "my/coder" in str(caught.value)


def test_unreachable_server_is_unavailable():
    with pytest.raises(LLMError, match="cannot reach the LLM server at http://127.0.0.1:1/v1: check LLM_BASE_URL") as caught:
        ask_text(make_settings(llm_max_retries=0), "m", MESSAGES, "report")
    assert caught.value.kind == "unavailable" and is_retryable(caught.value)


def test_a_bad_key_names_the_variable_that_holds_it():
    with FakeLLMServer(lambda body: {"status": 401, "error": "bad key"}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, openrouter_api_key="or")
        with pytest.raises(LLMError, match=r"\(401\): check OPENROUTER_API_KEY"):
            ask_text(settings, "m", MESSAGES, "report")
        with pytest.raises(LLMError, match=r"\(401\): no API key is set: set LLM_API_KEY \(or OPENROUTER_API_KEY\)"):
            ask_text(make_settings(llm_base_url=server.base_url, llm_max_retries=0), "m", MESSAGES, "report")


def test_a_model_shared_by_two_stages_names_both_variables():
    with FakeLLMServer(lambda body: {"status": 404, "error": "No such model"}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, code_model="x/y", report_model="x/y")
        with pytest.raises(LLMError, match="check CODE_MODEL or REPORT_MODEL, or LLM_BASE_URL"):
            ask_text(settings, "x/y", MESSAGES, "report")


@pytest.mark.parametrize(
    "message",
    [
        "This endpoint's maximum context length is 8192 tokens. However, you requested about 9000 tokens",  # OpenRouter, vLLM
        "prompt is too long: 210000 tokens > 200000 maximum",  # Anthropic
        "the request exceeds the available context size, try increasing it",  # llama.cpp
        "Error code: context_length_exceeded",
    ],
)
def test_a_prompt_too_long_is_shrunk_once_then_fatal_and_says_so(message):
    with FakeLLMServer(lambda body: {"status": 400, "error": message}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=2, summarize_model="small/model")
        says = r"the prompt is too long for model small/model \(400\), even with each message cut to 50%: .*longer context in SUMMARIZE_MODEL"
        with pytest.raises(LLMError, match=says) as caught:
            ask_text(settings, "small/model", MESSAGES, "analyze")
        assert caught.value.kind == "fatal" and not is_retryable(caught.value)
        sent = [[m["content"] for m in request["messages"]] for request in server.requests]
        assert sent == [["system", "question"], ["system", "ques"]]  # the system prompt is never cut


def test_a_bare_413_counts_as_a_prompt_too_long():
    with FakeLLMServer(lambda body: {"status": 413, "error": "Payload Too Large"}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=2, summarize_model="small/model")
        with pytest.raises(LLMError, match=r"too long for model small/model \(413\), even with each message cut to 50%") as caught:
            ask_text(settings, "small/model", MESSAGES, "analyze")
        assert caught.value.too_long and len(server.requests) == 2


def test_a_400_for_an_unknown_model_names_the_variable():  # OpenRouter answers 400, not 404
    with FakeLLMServer(lambda body: {"status": 400, "error": "nobody/nothing is not a valid model ID"}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, report_model="nobody/nothing")
        with pytest.raises(LLMError, match=r"model nobody/nothing not found at the LLM server \(400\): check REPORT_MODEL") as caught:
            ask_text(settings, "nobody/nothing", MESSAGES, "report")
    assert caught.value.kind == "fatal"


def test_a_refused_tool_request_under_a_forced_method_suggests_auto():
    with FakeLLMServer(lambda body: {"status": 400, "error": "this model does not support tools"}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, structured_output="function_calling")
        with pytest.raises(LLMError, match=r"\(400\): check the \*_MODEL settings, or try STRUCTURED_OUTPUT=auto") as caught:
            ask_structured(settings, "m", ExperimentPlan, MESSAGES, "initialize")
        assert len(server.requests) == 1  # forced: no other method is tried
    assert caught.value.kind == "fatal" and caught.value.unsupported


def test_a_long_retry_after_is_kept_and_not_retried():
    reply = {"status": 429, "error": "slow down", "headers": {"Retry-After": "600"}}
    with FakeLLMServer(lambda body: reply) as server:
        with pytest.raises(LLMError, match=r"asks to wait 600 s \(429\)") as caught:
            ask_text(make_settings(llm_base_url=server.base_url, llm_max_retries=2), "m", MESSAGES, "report")
        assert len(server.requests) == 1  # the SDK does not wait 10 minutes either
    assert caught.value.kind == "unavailable" and caught.value.retry_after == 600
    assert not is_retryable(caught.value)


def test_retry_after_ms_is_read():
    reply = {"status": 503, "error": "busy", "headers": {"retry-after-ms": "1500"}}
    with FakeLLMServer(lambda body: reply) as server:
        with pytest.raises(LLMError) as caught:
            ask_text(make_settings(llm_base_url=server.base_url, llm_max_retries=0), "m", MESSAGES, "report")
    assert caught.value.retry_after == 1.5 and is_retryable(caught.value)


# is_retryable: what LangGraph's RetryPolicy may retry


def _status_error(status: int) -> openai.APIStatusError:
    response = httpx2.Response(status, request=httpx2.Request("POST", "http://x/v1/chat/completions"))
    return openai.APIStatusError("error", response=response, body=None)


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (400, False),
        (401, False),
        (402, False),
        (403, False),
        (404, False),
        (422, False),
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (529, True),
    ],
)
def test_is_retryable_for_raw_status_errors(status, retry):
    assert is_retryable(_status_error(status)) is retry


def test_is_retryable_for_transport_errors_and_others():
    request = httpx2.Request("POST", "http://x")
    assert is_retryable(openai.APIConnectionError(request=request))
    assert is_retryable(openai.APITimeoutError(request=request))
    assert not is_retryable(ValueError("a bug"))
    assert not is_retryable(OSError("disk full"))
    assert not is_retryable(LLMError("bad key", kind="fatal", status=401))
    assert not is_retryable(LLMError("twice malformed", kind="reply"))
    assert is_retryable(LLMError("busy", kind="unavailable", status=503))
    assert is_retryable(LLMError("busy", kind="unavailable", status=429, retry_after=120))
    assert not is_retryable(LLMError("busy", kind="unavailable", status=429, retry_after=121))


# model_variables


def test_model_variables_lists_every_model_setting():
    settings = make_settings(summarize_model="a", code_model="b", report_model="c")
    assert model_variables(settings) == {"SUMMARIZE_MODEL": "a", "CODE_MODEL": "b", "REPORT_MODEL": "c"}


def test_json_schema_mode_reads_the_json_after_a_reasoning_block():
    # With json_schema the openai SDK parses the reply itself and refuses text before the JSON: it is read here instead.
    reply = "<think>The plan could be {not json yet}.</think>\n" + json.dumps(GOOD_PLAN)
    with FakeLLMServer(lambda body: {"content": reply}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, structured_output="json_schema")
        plan, *_ = ask_structured(settings, "m", ExperimentPlan, MESSAGES, "initialize")
        assert len(server.requests) == 1  # no repair request needed
    assert plan == ExperimentPlan.model_validate(GOOD_PLAN)


# STRUCTURED_OUTPUT=auto: tools, then a response format, then the schema in the prompt


def refusing(tools: bool, formats: bool, answer: str = json.dumps(GOOD_PLAN)):
    """A server like Ollama or a bare llama.cpp: a 400 to the features it lacks, else `answer` as text or a tool call."""

    def respond(body: dict) -> dict:
        if body.get("tools"):
            return (
                {"status": 400, "error": "registry.ollama.ai/library/m does not support tools"}
                if tools
                else {"tool_call": {"name": "ExperimentPlan", "arguments": GOOD_PLAN}}
            )
        if body.get("response_format") and formats:
            return {"status": 400, "error": "response_format of type json_schema is not supported by this server"}
        return {"content": answer}

    return respond


def test_auto_moves_to_a_response_format_when_tools_are_refused():
    events: list[dict] = []
    with FakeLLMServer(refusing(tools=True, formats=False)) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0)
        reply = ask_structured(settings, "m", ExperimentPlan, MESSAGES, "initialize", learned={"other": "prompt"}, emit=events.append)
        assert [bool(r.get("tools")) for r in server.requests] == [True, False]
        assert server.requests[1]["response_format"]["type"] == "json_schema"
    assert reply.answer.goal == "accuracy >= 0.9" and reply.method == "json_schema"
    assert reply.learned == {"other": "prompt", "m": "json_schema"}
    refused = ["function_calling refused: 400 registry.ollama.ai/library/m does not support tools"]
    assert events == [{"event": "structured_output", "model": "m", "method": "json_schema", "refused": refused}]
    assert len(reply.usage) == 1  # the refused request cost nothing


def test_auto_puts_the_schema_in_the_prompt_when_formats_are_refused_too():
    answer = '<think>The plan should be {"goal": "draft"}.</think>\nHere it is:\n```json\n' + json.dumps(GOOD_PLAN)[:-1] + ",}\n```\nDone."
    events: list[dict] = []
    with FakeLLMServer(refusing(tools=True, formats=True, answer=answer)) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0)
        reply = ask_structured(settings, "m", ExperimentPlan, MESSAGES, "initialize", emit=events.append)
        last = server.requests[-1]
    assert reply.method == "prompt" and reply.answer.tasks[0].title == "t" and len(events[0]["refused"]) == 2
    assert len(server.requests) == 3 and "tools" not in last and "response_format" not in last
    system = last["messages"][0]["content"]
    assert system.startswith("system\n\nAnswer with a single JSON object") and '"ExperimentPlan"' in system  # the schema, after the rules


def test_a_known_method_is_used_without_probing_or_saying_it_again():
    events: list[dict] = []
    with FakeLLMServer(refusing(tools=True, formats=True)) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0)
        reply = ask_structured(settings, "m", ExperimentPlan, MESSAGES, "initialize", learned={"m": "prompt"}, emit=events.append)
        assert len(server.requests) == 1 and "tools" not in server.requests[0]
    assert reply.method == "prompt" and reply.learned == {"m": "prompt"} and events == []


def test_a_known_method_refused_later_moves_on():
    with FakeLLMServer(refusing(tools=True, formats=False)) as server:  # the server behind LLM_BASE_URL changed
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0)
        reply = ask_structured(settings, "m", ExperimentPlan, MESSAGES, "initialize", learned={"m": "function_calling"})
    assert reply.method == "json_schema" and reply.learned == {"m": "json_schema"}


def test_a_forced_method_is_not_learned():
    with FakeLLMServer(refusing(tools=True, formats=True)) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, structured_output="prompt")
        reply = ask_structured(settings, "m", ExperimentPlan, MESSAGES, "initialize", learned={"other": "json_schema"})
    assert reply.method == "prompt" and reply.learned == {"other": "json_schema"}  # auto, later, still probes m


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, "No endpoints found that support tool use. To learn more about provider routing, visit: https://openrouter.ai/docs/provider-routing"),
        (404, "No endpoints found that support the provided 'tool_choice' value."),
        (400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'),
        (400, "tools param requires --jinja flag"),
        (400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."),
    ],
)
def test_what_real_servers_say_to_tools_moves_auto_on(status: int, error: str):
    said = iter([{"status": status, "error": error}, {"content": json.dumps(GOOD_PLAN)}])
    with FakeLLMServer(lambda body: next(said)) as server:
        reply = ask_structured(make_settings(llm_base_url=server.base_url, llm_max_retries=0), "m", ExperimentPlan, MESSAGES, "initialize")
    assert reply.method == "json_schema"


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (400, "Failed to call a function. Please adjust your prompt.", r"refused the request for model m \(400\)"),  # the model failed
        (400, "Invalid schema for function 'ExperimentPlan': 'tasks' is not valid", r"refused the request for model m \(400\)"),  # our bug
        (404, "No endpoints found for nobody/nothing.", r"model m not found at the LLM server \(404\)"),  # OpenRouter: no such model
    ],
)
def test_other_400s_and_404s_are_not_taken_for_a_refusal_of_tools(status: int, error: str, message: str):
    with FakeLLMServer(lambda body: {"status": status, "error": error}) as server:
        with pytest.raises(LLMError, match=message) as caught:
            ask_structured(make_settings(llm_base_url=server.base_url, llm_max_retries=0), "m", ExperimentPlan, MESSAGES, "initialize")
        assert len(server.requests) == 1
    assert caught.value.kind == "fatal" and not caught.value.unsupported


def test_bad_replies_suggest_only_the_methods_not_refused():
    def respond(body: dict) -> dict:
        if body.get("tools") or body.get("response_format"):
            return {"status": 400, "error": "this server does not support tools or response_format"}
        return {"content": "No JSON from me."}

    with FakeLLMServer(respond) as server:
        with pytest.raises(LLMError, match=r"twice gave a reply that does not match ExperimentPlan: try another model in") as caught:
            ask_structured(make_settings(llm_base_url=server.base_url, llm_max_retries=0), "m", ExperimentPlan, MESSAGES, "initialize")
    assert "STRUCTURED_OUTPUT" not in str(caught.value) and len(caught.value.usage) == 2


def test_a_prompt_answer_that_misses_fields_gets_one_repair_naming_them():
    replies = iter([json.dumps({"goal": "g"}), "Sure: " + json.dumps(GOOD_PLAN)])
    with FakeLLMServer(lambda body: {"content": next(replies)}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, structured_output="prompt")
        reply = ask_structured(settings, "m", ExperimentPlan, MESSAGES, "initialize")
        repair = server.requests[1]["messages"][-1]["content"]
    assert reply.answer.plan == "p" and len(reply.usage) == 2
    assert "could not be used" in repair and "plan" in repair and "Field required" in repair


def test_a_prompt_answer_that_never_parses_names_the_other_methods():
    with FakeLLMServer(lambda body: {"content": "I cannot answer in JSON."}) as server:
        settings = make_settings(llm_base_url=server.base_url, llm_max_retries=0, structured_output="prompt")
        with pytest.raises(LLMError, match=r"try STRUCTURED_OUTPUT=function_calling or json_schema, or another model") as caught:
            ask_structured(settings, "m", ExperimentPlan, MESSAGES, "initialize")
    assert caught.value.kind == "reply" and len(caught.value.usage) == 2


def test_methods_to_try():
    assert methods_to_try(make_settings(), None) == STRUCTURED_METHODS
    assert methods_to_try(make_settings(), "json_schema") == ("json_schema", "prompt")
    assert methods_to_try(make_settings(), "unknown") == STRUCTURED_METHODS
    assert methods_to_try(make_settings(structured_output="prompt"), "function_calling") == ("prompt",)


# Prompts shaped for caching


def test_only_anthropic_models_mark_the_stable_prefix():
    prompt = Prompt("stable part\n", "", "volatile part")
    plain = prompt_messages("rules", prompt, "openai/gpt-4o-mini")
    assert [m.content for m in plain] == ["rules", "stable part\nvolatile part"]
    for model in ("anthropic/claude-sonnet-4.6", "claude-sonnet-4-5"):
        marked = prompt_messages("rules", prompt, model)
        assert marked[0].content == "rules"
        assert marked[1].content == [
            {"type": "text", "text": "stable part\n", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "volatile part"},
        ]


def test_a_recurring_part_sits_between_and_gets_a_mark_of_its_own():
    prompt = Prompt("brief\n", "parent code\n", "the run's facts")
    assert prompt.text == "brief\nparent code\nthe run's facts" == prompt_messages("rules", prompt, "openai/gpt-4.1")[1].content
    assert prompt_messages("rules", prompt, "anthropic/claude-sonnet-4.6")[1].content == [
        {"type": "text", "text": "brief\n", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "parent code\n", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "the run's facts"},
    ]


def test_cache_control_reaches_the_server_and_cached_tokens_come_back():
    usage = {"prompt_tokens": 2000, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 1500}}
    with FakeLLMServer(lambda body: {"content": "ok", "usage": usage}) as server:
        messages = prompt_messages("rules", Prompt("stable", "", "volatile"), "anthropic/claude-sonnet-4.6")
        reply = ask_reply(make_settings(llm_base_url=server.base_url), "anthropic/claude-sonnet-4.6", messages, "codegen")
        sent = server.requests[0]["messages"][1]["content"]
    assert sent == [{"type": "text", "text": "stable", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "volatile"}]
    assert reply.usage["input_tokens"] == 2000 and reply.usage["cached_tokens"] == 1500


def test_a_shrunk_prompt_keeps_its_blocks_and_mark():
    messages = prompt_messages("rules", Prompt("s" * 100, "", "v" * 100), "anthropic/claude-sonnet-4.6")
    shrunk = shrink(messages)[1].content
    assert [len(block["text"]) < 100 for block in shrunk] == [True, True]
    assert shrunk[0]["cache_control"] == {"type": "ephemeral"} and "cache_control" not in shrunk[1]
