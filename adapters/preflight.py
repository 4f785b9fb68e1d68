"""Preflight: before anything is spent, check the API key and every *_MODEL against the provider's model list."""

from __future__ import annotations

import difflib
from collections import defaultdict

import httpx

from adapters.llm import LLMError, bad_key_error, error_message, model_variables, no_credits_error, not_an_api, response_json, wrong_url_error
from settings import Settings

PREFLIGHT_TIMEOUT_SECONDS = 10.0
"""Limit of each preflight request: the check is a courtesy, not worth a long wait."""

NO_MODEL_LIST = (404, 405, 501)
"""Answers of a server that has no model list: skipped quietly."""


def preflight(settings: Settings, transport: httpx.BaseTransport | None = None) -> list[str]:
    """Check the key and the configured models; return warnings about what could not be checked.

    Raises LLMError(kind="fatal") for a rejected key, a spent OpenRouter credit limit or a model the
    server does not list, naming the variable to fix; LLMError(kind="unavailable") when the server
    cannot be reached; LLMError(kind="fatal") too when neither its model list nor its chat path answers as an
    OpenAI-compatible API does (a wrong LLM_BASE_URL). A server without a model list is otherwise skipped
    quietly, an injected chat model entirely.
    `transport` replaces the network (tests).
    """
    if settings.chat_model is not None:
        return []
    base = settings.llm_base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    with httpx.Client(timeout=min(PREFLIGHT_TIMEOUT_SECONDS, settings.llm_timeout_seconds), transport=transport) as client:
        if settings.uses_openrouter:
            _check_openrouter_key(client, base, headers, settings)
        return _check_models(client, base, headers, settings)


def _get(client: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response | str:
    """The response, or why there is none (a timeout, a broken reply); refused connections raise."""
    try:
        return client.get(url, headers=headers)
    except httpx.ConnectError as exc:  # refused, or a host name that does not resolve
        raise LLMError(f"cannot reach the LLM server at {url}: check LLM_BASE_URL, or start the server ({exc})", kind="unavailable") from exc
    except httpx.HTTPError as exc:
        return f"GET {url} failed ({type(exc).__name__})"


def _detail(response: httpx.Response) -> str:
    return error_message(response_json(response), response.reason_phrase or str(response.status_code))


def _check_openrouter_key(client: httpx.Client, base: str, headers: dict[str, str], settings: Settings) -> None:
    """OpenRouter says at GET /key whether a key is valid and how much of its credit limit is left."""
    response = _get(client, f"{base}/key", headers)
    if isinstance(response, str):
        return  # the model list below meets the same trouble and says so
    if response.status_code == 401:
        raise bad_key_error(settings, 401, _detail(response))
    data = response_json(response)
    data = data.get("data") if isinstance(data, dict) else None
    remaining = data.get("limit_remaining") if isinstance(data, dict) else None
    if response.status_code == 200 and isinstance(remaining, (int, float)) and remaining <= 0:
        raise no_credits_error(settings, 402, f"the key's credit limit of {data.get('limit')} is used up")


def _check_models(client: httpx.Client, base: str, headers: dict[str, str], settings: Settings) -> list[str]:
    url = f"{base}/models"
    response = _get(client, url, headers)
    if isinstance(response, str):
        return [f"could not check the models: {response}"]
    if response.status_code == 401:
        raise bad_key_error(settings, 401, _detail(response))
    if response.status_code in NO_MODEL_LIST:
        if not_an_api(response.status_code, response_json(response)):  # a web page, or no API at all: is LLM_BASE_URL right?
            _check_chat_path(client, base, headers, settings)
        return []
    if response.status_code != 200:
        return [f"could not check the models: GET {url} answered {response.status_code} ({_detail(response)})"]
    listed = _listed_models(response_json(response))
    if listed is None:  # not a model list after all, or llama.cpp, which serves its one model under any name
        return []
    if not listed:
        return [f"GET {url} lists no models: the configured ones were not checked"]

    unknown: dict[str, list[str]] = defaultdict(list)
    for variable, model in model_variables(settings).items():
        if not _offers(listed, model, settings.uses_openrouter):
            unknown[model].append(variable)
    if unknown:
        problems = [f"{' and '.join(variables)}={model} is not offered by {base} ({_suggest(model, listed)})" for model, variables in unknown.items()]
        raise LLMError("unknown model: " + "; ".join(problems), kind="fatal")
    return []


def _check_chat_path(client: httpx.Client, base: str, headers: dict[str, str], settings: Settings) -> None:
    """Raise LLMError (fatal) when POST chat/completions, too, answers as no OpenAI-compatible API does.

    The request is empty, so an API refuses it (400, 422) without generating anything: it costs nothing.
    """
    try:
        response = client.post(f"{base}/chat/completions", headers=headers, json={})
    except httpx.HTTPError:
        return  # the first LLM call meets the same trouble and says so
    if not_an_api(response.status_code, response_json(response)):
        raise wrong_url_error(settings, response.status_code, _detail(response))


def _listed_models(body: object) -> list[str] | None:
    """The model ids of an OpenAI-style list ({"data": [{"id": ...}]}), or None when the names do not matter."""
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in entries):
        return None
    if entries and all(e.get("owned_by") == "llamacpp" for e in entries):
        return None
    return [e["id"] for e in entries]


def _offers(listed: list[str], model: str, openrouter: bool) -> bool:
    """Whether `model` is served: listed as is, or as Ollama's name:latest, or as the base of a variant (name:nitro)."""
    if openrouter and model.startswith(("openrouter/", "@")):  # routers and presets are not in the list
        return True
    return model in listed or f"{model}:latest" in listed or model.split(":", 1)[0] in listed


def _suggest(model: str, listed: list[str]) -> str:
    if close := difflib.get_close_matches(model, listed, n=3, cutoff=0.6):
        return "closest: " + ", ".join(close)
    if len(listed) <= 8:
        return "it offers: " + ", ".join(listed)
    return f"none of its {len(listed)} models is close"
