"""The LLM client: ChatOpenAI against any OpenAI-compatible server, token accounting, one repair retry."""

from __future__ import annotations

import json
from typing import TypeVar

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from settings import Settings
from state import Usage

Schema = TypeVar("Schema", bound=BaseModel)

# OpenRouter app attribution (openrouter.ai/docs/app-attribution); X-Title is the older name of X-OpenRouter-Title.
ATTRIBUTION_HEADERS = {
    "HTTP-Referer": "https://github.com/auto-ml-runner/auto-ml-runner",
    "X-OpenRouter-Title": "Auto ML Runner",
    "X-Title": "Auto ML Runner",
}


class LLMError(RuntimeError):
    """An LLM call that failed; the message says what to fix. `status` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def chat_model(settings: Settings, model: str) -> BaseChatModel:
    """The chat model for one stage: the injected one, or ChatOpenAI at LLM_BASE_URL."""
    if settings.chat_model is not None:
        return settings.chat_model
    openrouter = settings.uses_openrouter
    return ChatOpenAI(
        model=model,
        base_url=settings.llm_base_url,
        api_key=settings.api_key or "not-needed",
        timeout=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
        default_headers=ATTRIBUTION_HEADERS if openrouter else None,
        # OpenRouter reports each call's cost in its usage block when asked.
        extra_body={"usage": {"include": True}} if openrouter else None,
    )


def usage_of(message: BaseMessage, stage: str, model: str) -> Usage:
    """Tokens (and cost, where the provider reports it) of one reply."""
    tokens = getattr(message, "usage_metadata", None) or {}
    raw = (getattr(message, "response_metadata", None) or {}).get("token_usage") or {}
    cost = raw.get("cost") if isinstance(raw, dict) else None
    return Usage(
        stage=stage,
        model=model,
        input_tokens=int(tokens.get("input_tokens", 0)),
        output_tokens=int(tokens.get("output_tokens", 0)),
        cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
    )


def _invoke(runnable, messages: list[BaseMessage], model: str):
    """Call the model, turning transport and provider errors into one-line LLMErrors."""
    try:
        return runnable.invoke(messages)
    except openai.AuthenticationError as exc:
        raise LLMError(f"the LLM server rejected the API key (401): check OPENROUTER_API_KEY or LLM_API_KEY ({_detail(exc)})", 401) from exc
    except openai.PermissionDeniedError as exc:
        raise LLMError(f"the API key may not use model {model} (403): {_detail(exc)}", 403) from exc
    except openai.NotFoundError as exc:
        raise LLMError(f"model {model} not found at the LLM server (404): check the *_MODEL settings ({_detail(exc)})", 404) from exc
    except openai.APIStatusError as exc:
        hint = ": add credits to the account" if exc.status_code == 402 else ""
        raise LLMError(f"the LLM server answered {exc.status_code}{hint} ({_detail(exc)})", exc.status_code) from exc
    except openai.APITimeoutError as exc:
        raise LLMError("the LLM server did not answer in time: raise LLM_TIMEOUT_SECONDS or try later") from exc
    except openai.APIConnectionError as exc:
        raise LLMError(f"cannot reach the LLM server at its base URL: check LLM_BASE_URL ({_detail(exc)})") from exc


def _detail(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(exc.message if hasattr(exc, "message") else exc)[:300]


def ask_text(settings: Settings, model: str, messages: list[BaseMessage], stage: str) -> tuple[str, Usage]:
    """A plain-text reply and its usage."""
    reply = _invoke(chat_model(settings, model), messages, model)
    return _text_of(reply), usage_of(reply, stage, model)


def _text_of(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)


def ask_structured(settings: Settings, model: str, schema: type[Schema], messages: list[BaseMessage], stage: str) -> tuple[Schema, list[Usage]]:
    """A reply parsed into `schema`; a reply that does not parse gets one repair request, then LLMError."""
    runnable = chat_model(settings, model).with_structured_output(schema, method=settings.structured_output, include_raw=True)
    usages: list[Usage] = []
    for attempt in range(2):
        result = _invoke(runnable, messages, model)
        raw = result.get("raw")
        if isinstance(raw, BaseMessage):
            usages.append(usage_of(raw, stage, model))
        parsed = result.get("parsed")
        if isinstance(parsed, schema):
            return parsed, usages
        problem = result.get("parsing_error") or "the reply held no structured answer"
        if attempt == 0:
            messages = [*messages, HumanMessage(_repair_request(raw, problem, schema))]
    raise LLMError(f"{stage}: model {model} twice gave a reply that does not match {schema.__name__} ({str(problem)[:200]})")


def _repair_request(raw: object, problem: object, schema: type[BaseModel]) -> str:
    said = ""
    if isinstance(raw, AIMessage):
        said = json.dumps([c.get("args") for c in raw.tool_calls]) if raw.tool_calls else _text_of(raw)
    return (
        f"Your previous reply could not be used: {str(problem)[:500]}\n"
        f"It was: {said[:2000]}\n"
        f"Answer again, as {schema.__name__} with every required field filled and valid."
    )
