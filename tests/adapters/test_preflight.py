"""adapters/preflight: the key and every *_MODEL checked against the provider's model list before anything is spent."""

from __future__ import annotations

import json

import httpx
import pytest
from fake_llm import FakeLLMServer
from fakes import UNREACHABLE_LLM, ScriptedChatModel, make_settings

from adapters.llm import LLMError
from adapters.preflight import preflight
from settings import OPENROUTER_URL

OFFERED = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4.6", "anthropic/claude-sonnet-4.5", "anthropic/claude-opus-4.6"]
MODELS = {"summarize_model": "openai/gpt-4o-mini", "code_model": "anthropic/claude-sonnet-4.6", "report_model": "anthropic/claude-sonnet-4.6"}


def no_chat(body: dict) -> dict:
    raise AssertionError("preflight must not ask for a completion")


def fake_provider(routes: dict[str, tuple[int, object]], seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    """A transport answering GET <path> with (status, JSON body or raw text) from `routes`, else 404."""

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        status, body = routes.get(request.url.path, (404, {"error": {"message": "no route"}}))
        return httpx.Response(status, text=body) if isinstance(body, str) else httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


def model_list(*ids: str, owned_by: str = "test") -> dict:
    return {"object": "list", "data": [{"id": i, "object": "model", "owned_by": owned_by} for i in ids]}


# against the local server


def test_every_configured_model_offered_passes():
    with FakeLLMServer(no_chat, models=OFFERED) as server:
        assert preflight(make_settings(llm_base_url=server.base_url, **MODELS)) == []
    assert server.requests == []


def test_an_unknown_model_fails_at_once_with_the_closest_names():
    with FakeLLMServer(no_chat, models=OFFERED) as server:
        settings = make_settings(llm_base_url=server.base_url, **{**MODELS, "code_model": "anthropic/claude-sonet-4.6"})
        with pytest.raises(LLMError) as caught:
            preflight(settings)
    assert caught.value.kind == "fatal"
    message = str(caught.value)
    assert message.startswith(f"unknown model: CODE_MODEL=anthropic/claude-sonet-4.6 is not offered by {server.base_url} (closest: ")
    assert "anthropic/claude-sonnet-4.6" in message.split("closest: ")[1]
    assert "REPORT_MODEL" not in message and "\n" not in message


def test_an_unknown_model_shared_by_two_variables_names_both():
    with FakeLLMServer(no_chat, models=["llama3.1:8b", "qwen2.5-coder:7b"]) as server:
        settings = make_settings(llm_base_url=server.base_url, summarize_model="llama3.1:8b", code_model="gpt-4o", report_model="gpt-4o")
        with pytest.raises(LLMError, match=r"CODE_MODEL and REPORT_MODEL=gpt-4o is not offered by .* \(it offers: llama3.1:8b, qwen2.5-coder:7b\)"):
            preflight(settings)


def test_no_model_list_is_skipped_quietly():
    with FakeLLMServer(no_chat) as server:  # GET /v1/models answers 404
        assert preflight(make_settings(llm_base_url=server.base_url, code_model="anything")) == []


def test_an_unreachable_server_is_unavailable_and_named():
    with pytest.raises(LLMError, match=f"cannot reach the LLM server at {UNREACHABLE_LLM}/models: check LLM_BASE_URL") as caught:
        preflight(make_settings(llm_base_url=UNREACHABLE_LLM))
    assert caught.value.kind == "unavailable"


def test_an_injected_chat_model_skips_preflight():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    assert preflight(make_settings(ScriptedChatModel(responses=[])), transport=httpx.MockTransport(refuse)) == []


# against scripted answers


def local(**overrides):
    return make_settings(llm_base_url="http://llm.test/v1", **{"llm_api_key": "local-key", **MODELS, **overrides})


def test_the_key_is_sent():
    seen: list[httpx.Request] = []
    preflight(local(), transport=fake_provider({"/v1/models": (200, model_list(*OFFERED))}, seen))
    assert [str(r.url) for r in seen] == ["http://llm.test/v1/models"]
    assert seen[0].headers["Authorization"] == "Bearer local-key"


@pytest.mark.parametrize(
    ("answer", "key", "says"),
    [
        ((401, {"error": {"message": "Incorrect API key provided"}}), "local-key", r"rejected the API key \(401\): check LLM_API_KEY \(Incorrect API key"),
        ((401, {"error": "unauthorized"}), "", r"rejected the API key \(401\): no API key is set"),
    ],
)
def test_a_rejected_key_is_fatal(answer, key, says):
    with pytest.raises(LLMError, match=says) as caught:
        preflight(local(llm_api_key=key), transport=fake_provider({"/v1/models": answer}))
    assert caught.value.kind == "fatal" and caught.value.status == 401


@pytest.mark.parametrize(
    "answer",
    [(404, {"error": "not found"}), (405, "Method Not Allowed"), (501, "Not Implemented"), (200, "<html>a web page</html>"), (200, {"models": ["a"]})],
)
def test_no_usable_model_list_is_skipped_quietly(answer):
    assert preflight(local(code_model="not/listed"), transport=fake_provider({"/v1/models": answer})) == []


def test_llama_cpp_serves_its_model_under_any_name():
    answer = (200, model_list("/models/qwen2.5-7b-q4.gguf", owned_by="llamacpp"))
    assert preflight(local(code_model="whatever"), transport=fake_provider({"/v1/models": answer})) == []


def test_ollama_latest_tag_is_implied():
    answer = (200, model_list("llama3.1:latest", "qwen2.5-coder:7b"))
    assert (
        preflight(
            local(summarize_model="llama3.1", code_model="qwen2.5-coder:7b", report_model="llama3.1:latest"), transport=fake_provider({"/v1/models": answer})
        )
        == []
    )


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ((503, {"error": {"message": "upstream down"}}), "could not check the models: GET http://llm.test/v1/models answered 503 (upstream down)"),
        ((403, {"error": {"message": "Missing scopes: api.model.read"}}), "answered 403 (Missing scopes: api.model.read)"),
        ((200, model_list()), "lists no models"),
    ],
)
def test_a_list_that_cannot_be_read_is_a_warning(answer, says):
    warnings = preflight(local(), transport=fake_provider({"/v1/models": answer}))
    assert len(warnings) == 1 and says in warnings[0]


def test_a_slow_model_list_is_a_warning():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    assert preflight(local(), transport=httpx.MockTransport(slow)) == ["could not check the models: GET http://llm.test/v1/models failed (ReadTimeout)"]


# OpenRouter: GET /key says whether the key is valid


def openrouter(**overrides):
    return make_settings(llm_base_url=OPENROUTER_URL, **{"openrouter_api_key": "sk-or-test", **MODELS, **overrides})


KEY_OK = (200, {"data": {"label": "sk-or-v1-abc...", "limit": None, "limit_remaining": None, "usage": 1.5, "is_free_tier": False}})


def test_openrouter_key_and_models_checked():
    seen: list[httpx.Request] = []
    routes = {"/api/v1/key": KEY_OK, "/api/v1/models": (200, model_list(*OFFERED))}
    assert preflight(openrouter(), transport=fake_provider(routes, seen)) == []
    assert [r.url.path for r in seen] == ["/api/v1/key", "/api/v1/models"]
    assert all(r.headers["Authorization"] == "Bearer sk-or-test" for r in seen)


def test_openrouter_rejected_key_names_openrouter_api_key():
    routes = {"/api/v1/key": (401, {"error": {"message": "User not found.", "code": 401}}), "/api/v1/models": (200, model_list(*OFFERED))}
    with pytest.raises(LLMError, match=r"rejected the API key \(401\): check OPENROUTER_API_KEY \(User not found.\)") as caught:
        preflight(openrouter(), transport=fake_provider(routes))
    assert caught.value.kind == "fatal"


def test_openrouter_key_with_its_credit_limit_spent_is_fatal():
    spent = (200, {"data": {"label": "k", "limit": 5, "limit_remaining": 0, "usage": 5.0}})
    routes = {"/api/v1/key": spent, "/api/v1/models": (200, model_list(*OFFERED))}
    with pytest.raises(LLMError, match=r"OPENROUTER_API_KEY is out of credits \(402\): add credits at https://openrouter.ai/settings/credits") as caught:
        preflight(openrouter(), transport=fake_provider(routes))
    assert caught.value.kind == "fatal" and "limit of 5 is used up" in str(caught.value)


def test_openrouter_routers_presets_and_variants_pass():
    routes = {"/api/v1/key": KEY_OK, "/api/v1/models": (200, model_list(*OFFERED))}
    settings = openrouter(summarize_model="openrouter/auto", code_model="anthropic/claude-sonnet-4.6:nitro", report_model="@preset/writer")
    assert preflight(settings, transport=fake_provider(routes)) == []


def test_openrouter_unknown_model_among_hundreds_says_none_is_close():
    many = [f"vendor/model-{i}" for i in range(300)]
    routes = {"/api/v1/key": KEY_OK, "/api/v1/models": (200, model_list(*many, *OFFERED))}
    with pytest.raises(LLMError, match=r"SUMMARIZE_MODEL=zzz is not offered by https://openrouter.ai/api/v1 \(none of its 304 models is close\)"):
        preflight(openrouter(summarize_model="zzz"), transport=fake_provider(routes))


def test_a_key_answer_that_is_not_json_is_ignored():
    routes = {"/api/v1/key": (200, "ok"), "/api/v1/models": (200, json.dumps(model_list(*OFFERED)))}
    assert preflight(openrouter(), transport=fake_provider(routes)) == []


# a wrong LLM_BASE_URL


def test_a_web_server_at_llm_base_url_fails_at_once_and_names_the_setting():
    # What `python -m http.server` answers: 404 pages for GET, 501 for POST. The empty probe costs no completion.
    page = "<html><body><h1>Error response</h1><p>Error code: 501</p><p>Message: Unsupported method ('POST').</p></body></html>"
    with FakeLLMServer(lambda body: {"status": 501, "html": page}, html_404=True) as server:
        with pytest.raises(LLMError) as caught:
            preflight(make_settings(llm_base_url=server.base_url, **MODELS))
    assert str(caught.value).startswith(f"{server.base_url} does not look like an OpenAI-compatible endpoint (501: Not Implemented): check LLM_BASE_URL")
    assert caught.value.kind == "fatal"
    assert server.requests == [{}]


@pytest.mark.parametrize("chat_answer", [(400, {"error": {"message": "messages is required"}}), (422, {"detail": [{"msg": "Field required"}]})])
def test_a_server_without_a_model_list_whose_chat_path_is_an_api_passes(chat_answer):
    seen: list[httpx.Request] = []
    routes = {"/v1/models": (404, "<html>404 Not Found</html>"), "/v1/chat/completions": chat_answer}
    assert preflight(local(), transport=fake_provider(routes, seen)) == []
    assert [(r.method, r.url.path, r.content) for r in seen] == [("GET", "/v1/models", b""), ("POST", "/v1/chat/completions", b"{}")]


@pytest.mark.parametrize("chat_answer", [(405, "Method Not Allowed"), (404, {"detail": "Not Found"}), (404, "")])
def test_a_base_url_missing_its_v1_is_fatal(chat_answer):  # e.g. http://localhost:8000 for vLLM, whose routes are under /v1
    routes = {"/models": (404, {"detail": "Not Found"}), "/chat/completions": chat_answer}
    settings = make_settings(llm_base_url="http://llm.test", llm_api_key="k", **MODELS)
    with pytest.raises(LLMError, match=r"^http://llm.test does not look like an OpenAI-compatible endpoint \(\d+: .*\): check LLM_BASE_URL"):
        preflight(settings, transport=fake_provider(routes))
