"""The LLM client: ChatOpenAI against any OpenAI-compatible server, token accounting, one repair retry, failures sorted by kind."""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from typing import Generic, Literal, NamedTuple, TypeVar

import httpx
import openai
from langchain_core.exceptions import ContextOverflowError
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ValidationError

from adapters.audit import AuditLog
from adapters.logs import clip, one_line
from settings import Settings, env_name
from state import Usage

Schema = TypeVar("Schema", bound=BaseModel)

# OpenRouter app attribution (openrouter.ai/docs/app-attribution); X-Title is the older name of X-OpenRouter-Title.
ATTRIBUTION_HEADERS = {
    "HTTP-Referer": "https://github.com/auto-ml-runner/auto-ml-runner",
    "X-OpenRouter-Title": "Auto ML Runner",
    "X-Title": "Auto ML Runner",
}


LLMFailure = Literal["fatal", "unavailable", "reply"]
"""Why an LLM call failed, which decides what the runner does next:

- fatal: retrying cannot help (key, credits, unknown model, prompt too long, refused request); fix a setting, then resume.
- unavailable: rate limit, server error, timeout or no connection; worth retrying later, and resumable.
- reply: the model answered, but twice not in the shape asked for.
"""

MAX_RETRY_AFTER_SECONDS = 120
"""A server asking for a longer wait than this is not retried now (the openai SDK draws the same line)."""


class LLMError(RuntimeError):
    """An LLM call that failed; the one-line message says what to fix.

    `kind` says whether retrying can help, `status` is the HTTP status (if any) and `retry_after`
    the wait in seconds the server asked for (if it said).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: LLMFailure,
        status: int | None = None,
        retry_after: float | None = None,
        too_long: bool = False,
        unsupported: bool = False,
        detail: str = "",
        usage: list[Usage] | None = None,
    ):
        super().__init__(message)
        self.kind: LLMFailure = kind
        self.status = status
        self.retry_after = retry_after
        self.too_long = too_long
        """The prompt did not fit the model's context: one shrink of it may."""
        self.unsupported = unsupported
        """The server refused the tools or the response format of a structured request: another method may work."""
        self.detail = detail
        """What the server said, on one line."""
        self.usage: list[Usage] = list(usage or [])
        """What the calls that did answer before the failure spent: it counts towards the budgets all the same."""


def is_retryable(exc: BaseException) -> bool:
    """Whether another try later may succeed: rate limits, 5xx, timeouts, lost connections; never 400-404.

    What decides whether the graph tries an LLM node again (graph.experiment.stops_cleanly).
    """
    if isinstance(exc, LLMError):
        return exc.kind == "unavailable" and (exc.retry_after or 0) <= MAX_RETRY_AFTER_SECONDS
    if isinstance(exc, openai.APIStatusError):
        return _transient(exc.status_code)
    return isinstance(exc, openai.APIConnectionError)  # APITimeoutError is one too


def _transient(status: int) -> bool:
    # The statuses the openai SDK retries itself: request timeout, lock conflict, rate limit, server errors.
    return status in (408, 409, 429) or status >= 500


def model_variables(settings: Settings) -> dict[str, str]:
    """Every *_MODEL variable and the model it names, e.g. {"CODE_MODEL": "anthropic/claude-sonnet-4.6"}."""
    names = {f.name: env_name(f) for f in fields(settings)}
    return {env: getattr(settings, name) for name, env in names.items() if env and env.endswith("_MODEL")}


def variables_naming(settings: Settings, model: str) -> str:
    """The *_MODEL variable(s) set to `model`, e.g. "CODE_MODEL or REPORT_MODEL"."""
    return " or ".join(env for env, named in model_variables(settings).items() if named == model) or "the *_MODEL settings"


def key_variable(settings: Settings) -> str:
    """The variable whose key is sent (LLM_API_KEY wins over OPENROUTER_API_KEY)."""
    return "LLM_API_KEY" if settings.llm_api_key else "OPENROUTER_API_KEY"


def bad_key_error(settings: Settings, status: int, detail: str) -> LLMError:
    """The server does not accept the key (401)."""
    if not settings.api_key:
        fix = "no API key is set: set LLM_API_KEY (or OPENROUTER_API_KEY)"
    else:
        fix = f"check {key_variable(settings)}"
    return LLMError(f"the LLM server rejected the API key ({status}): {fix} ({detail})", kind="fatal", status=status)


def no_credits_error(settings: Settings, status: int, detail: str) -> LLMError:
    """The account behind the key cannot pay (402, or an OpenRouter key whose credit limit is spent)."""
    where = "at https://openrouter.ai/settings/credits, or raise the key's credit limit" if settings.uses_openrouter else "to the provider account"
    return LLMError(f"the account behind {key_variable(settings)} is out of credits ({status}): add credits {where} ({detail})", kind="fatal", status=status)


def not_an_api(status: int, body: object) -> bool:
    """Whether an answer to a chat completion says LLM_BASE_URL points at something else than an OpenAI-compatible API.

    501 (Not Implemented) and 405 (Method Not Allowed) never come from one; a 404 does, for an unknown model,
    but then with an API's error body ({"error": ...} or {"message": ...}), not a web page or a framework's "Not Found".
    """
    api_error = isinstance(body, dict) and ("error" in body or "message" in body)
    return status in (405, 501) or (status == 404 and not api_error)


def response_json(response: httpx.Response) -> object:
    """An HTTP answer's body read as JSON, None when it is not (a web page, a plain-text error)."""
    try:
        return response.json()
    except ValueError:
        return None


def wrong_url_error(settings: Settings, status: int, detail: str) -> LLMError:
    """The server at LLM_BASE_URL answers, but not as an OpenAI-compatible API would (see not_an_api)."""
    return LLMError(
        f"{settings.llm_base_url} does not look like an OpenAI-compatible endpoint ({status}: {detail}): "
        "check LLM_BASE_URL, which usually ends in /v1 (e.g. http://localhost:11434/v1 for Ollama)",
        kind="fatal",
        status=status,
    )


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
    usage = Usage(
        stage=stage,
        model=model,
        input_tokens=int(tokens.get("input_tokens", 0)),
        output_tokens=int(tokens.get("output_tokens", 0)),
        cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
    )
    # langchain-openai reads prompt_tokens_details.cached_tokens into cache_read.
    if cached := int((tokens.get("input_token_details") or {}).get("cache_read") or 0):
        usage["cached_tokens"] = cached
    return usage


CACHE_MARK = {"type": "ephemeral"}
"""Anthropic's mark for the end of a prompt's cacheable prefix (also through OpenRouter); a tenth of the input price to read back."""


def marks_cache(model: str) -> bool:
    """Whether requests for `model` mark their stable prefix for caching: Anthropic's models, which cache only what is marked.

    OpenAI's and most other providers cache a long identical prefix by themselves; some servers refuse unknown fields.
    """
    return model.startswith(("anthropic/", "claude"))


class Prompt(NamedTuple):
    """A user message in three parts, from what every request of its stage repeats word for word to what changes each time."""

    stable: str
    """The same in every request of the stage: the experiment's brief."""
    recurring: str
    """What the stage's previous request may have held too (the parent's code, when the search builds on the same run
    again); empty when there is none."""
    volatile: str
    """What changes from request to request."""

    @property
    def text(self) -> str:
        return self.stable + self.recurring + self.volatile


def prompt_messages(system: str, prompt: Prompt, model: str) -> list[BaseMessage]:
    """A request whose stable part comes first: the system rules, then the prompt's parts in order.

    Consecutive requests of a stage then share a byte-identical prefix that providers can cache. For an Anthropic model
    (marks_cache), which caches only up to a mark, the user message is content blocks and cache_control marks the end of
    the stable part, and the end of the recurring part when there is one: a request that repeats its predecessor's
    recurring part reads it from the cache too, one that does not pays a cache write (1.25x) for it.
    """
    if not marks_cache(model):
        return [SystemMessage(system), HumanMessage(prompt.text)]
    marked = [{"type": "text", "text": part, "cache_control": CACHE_MARK} for part in (prompt.stable, prompt.recurring) if part]
    return [SystemMessage(system), HumanMessage([*marked, {"type": "text", "text": prompt.volatile}])]


SHRINK_TO = 0.5
"""A prompt too long for the model is sent once more with each message cut to this share of its length."""


def _invoke(runnable, messages: list[BaseMessage], settings: Settings, model: str, stage: str, audit: AuditLog | None):
    """Call the model, shrinking a prompt too long for it once; a failure becomes the LLMError whose kind decides what happens next.

    Each request goes to the audit log, failed ones included (the openai SDK's own retries are not seen here).
    """
    for shrunk in (False, True):
        sent = shrink(messages) if shrunk else messages
        started, clock = time.time(), time.monotonic()
        try:
            result = runnable.invoke(sent)
        except openai.APIError as exc:
            error = classify(exc, settings, model, shrunk=shrunk)
            if audit:
                audit.record(
                    stage=stage, model=model, started=started, latency_s=time.monotonic() - clock, messages=sent, reply=None, usage=None, error=str(error)
                )
            if not (error.too_long and not shrunk):
                raise error from exc
            continue
        if audit:
            reply = result.get("raw") if isinstance(result, dict) else result
            reply = reply if isinstance(reply, BaseMessage) else None
            usage = usage_of(reply, stage, model) if reply is not None else None
            audit.record(stage=stage, model=model, started=started, latency_s=time.monotonic() - clock, messages=sent, reply=reply, usage=usage)
        return result


def shrink(messages: list[BaseMessage]) -> list[BaseMessage]:
    """`messages` with every non-system text cut to SHRINK_TO of its length, keeping each one's head and tail."""
    shorter = []
    for message in messages:
        if message.type == "system":
            shorter.append(message)
        elif isinstance(message.content, str):
            shorter.append(message.model_copy(update={"content": _shrunk(message.content)}))
        else:  # content blocks (a prompt marked for caching): each text cut alike
            blocks = [{**block, "text": _shrunk(block["text"])} if isinstance(block, dict) and "text" in block else block for block in message.content]
            shorter.append(message.model_copy(update={"content": blocks}))
    return shorter


def _shrunk(text: str) -> str:
    return clip(text, int(len(text) * SHRINK_TO))


PROMPT_TOO_LONG = re.compile(
    r"context[ _](length|window|size)|maximum context|too many tokens|prompt is too long|input tokens exceed|reduce the length", re.IGNORECASE
)
UNKNOWN_MODEL = re.compile(r"not a valid model|unknown model|invalid model|model\b.*\b(does not exist|not found)", re.IGNORECASE)


def classify(exc: openai.APIError, settings: Settings, model: str, shrunk: bool = False) -> LLMError:
    """The LLMError for an openai error left after the SDK's own retries: transient ones are "unavailable", the rest "fatal".

    `shrunk` says the request was already the shrunk version of a prompt that was too long.
    """
    detail = _detail(exc)
    models = variables_naming(settings, model)
    status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
    if isinstance(exc, openai.APITimeoutError):
        limit = f"LLM_TIMEOUT_SECONDS ({settings.llm_timeout_seconds} s)"
        return LLMError(f"the LLM server did not answer within {limit}: try later, or raise it", kind="unavailable")
    if isinstance(exc, openai.APIConnectionError):
        return LLMError(f"cannot reach the LLM server at {settings.llm_base_url}: check LLM_BASE_URL, or try later ({detail})", kind="unavailable")
    if isinstance(exc, ContextOverflowError) or status == 413 or (status in (400, 422) and PROMPT_TOO_LONG.search(detail)):
        what = f"the prompt is too long for model {model} ({status or 'context overflow'})"
        what += f", even with each message cut to {SHRINK_TO:.0%}" if shrunk else ""
        return LLMError(f"{what}: choose a model with a longer context in {models} ({detail})", kind="fatal", status=status, too_long=True)
    if status is None:  # a 2xx whose body is not a chat completion
        return LLMError(f"the LLM server at {settings.llm_base_url} sent a reply that is not a chat completion ({detail})", kind="unavailable")
    if status == 401:
        return bad_key_error(settings, status, detail)
    if status == 402:
        return no_credits_error(settings, status, detail)
    if status == 403:
        fix = f"check {key_variable(settings)} and {models}"
        return LLMError(f"the LLM server refuses model {model} with this key (403): {fix} ({detail})", kind="fatal", status=status)
    body = response_json(exc.response)  # the whole body: the SDK's exc.body is only what its "error" holds
    if not_an_api(status, body):  # of a web page, only its status line says anything
        return wrong_url_error(settings, status, detail if isinstance(body, dict) else exc.response.reason_phrase or detail)
    if refuses_structured_output(status, detail):  # before an unknown model: OpenRouter says it with a 404
        fix = f"check {models}" + (", or try STRUCTURED_OUTPUT=auto" if settings.structured_output != "auto" else "")
        return LLMError(
            f"the LLM server refused the request for model {model} ({status}): {fix} ({detail})",
            kind="fatal",
            status=status,
            unsupported=True,
            detail=detail,
        )
    if status == 404 or (status == 400 and UNKNOWN_MODEL.search(detail)):
        fix = f"check {models}, or LLM_BASE_URL"
        return LLMError(f"model {model} not found at the LLM server ({status}): {fix} ({detail})", kind="fatal", status=status)
    if _transient(status):
        wait = _retry_after(exc)
        if wait is not None and wait > MAX_RETRY_AFTER_SECONDS:
            problem = f"asks to wait {wait:.0f} s"
        else:
            problem = "keeps rate-limiting requests" if status == 429 else "keeps failing"
        return LLMError(f"the LLM server {problem} ({status}): try later ({detail})", kind="unavailable", status=status, retry_after=wait)
    return LLMError(f"the LLM server refused the request for model {model} ({status}): check {models} ({detail})", kind="fatal", status=status)


def refuses_structured_output(status: int, detail: str) -> bool:
    """Whether an error says the server cannot take a structured request's tools or response format: Ollama's 400 "…
    does not support tools", vLLM's 400 "auto" tool choice requires --enable-auto-tool-choice, llama.cpp's 400 tools
    param requires --jinja flag, OpenRouter's 404 No endpoints found that support tool use, OpenAI's 400 response_format
    … is not supported with this model. A model that failed to call a tool, or a schema the server finds wrong, is not."""
    return status in (400, 404, 422) and bool(STRUCTURED_FEATURE.search(detail)) and bool(REFUSAL.search(detail))


STRUCTURED_FEATURE = re.compile(r"tool|function|response[_ ]format|schema|structured output|grammar", re.IGNORECASE)
REFUSAL = re.compile(
    r"not supported|unsupported|(does not|doesn't|not) support|no endpoints found|requires|not enabled|not permitted|not allowed", re.IGNORECASE
)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """The wait the server asked for, in seconds (Retry-After or OpenAI's retry-after-ms; dates are ignored)."""
    for header, per_second in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            return float(exc.response.headers[header]) / per_second
        except (KeyError, ValueError):
            continue
    return None


def _detail(exc: openai.APIError) -> str:
    return error_message(exc.body, exc.message if hasattr(exc, "message") else str(exc))


def error_message(body: object, fallback: str) -> str:
    """The `error.message` of an OpenAI-style error body (else `fallback`), on one line, at most 300 characters."""
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return one_line(str(message or fallback), 300)


class TextReply(NamedTuple):
    """A plain-text answer: its text (reasoning stripped), what it cost, and whether it stopped at the output limit."""

    text: str
    usage: Usage
    cut_off: bool
    """The model ran out of output tokens (finish_reason "length"): the text stops mid-way."""


def ask_reply(settings: Settings, model: str, messages: list[BaseMessage], stage: str, audit: AuditLog | None = None) -> TextReply:
    """A plain-text reply, its usage and whether it was cut off; the request goes to `audit` when given."""
    reply = _invoke(chat_model(settings, model), messages, settings, model, stage, audit)
    finish = (getattr(reply, "response_metadata", None) or {}).get("finish_reason")
    return TextReply(answer_text(reply), usage_of(reply, stage, model), cut_off=finish == "length")


def ask_text(settings: Settings, model: str, messages: list[BaseMessage], stage: str, audit: AuditLog | None = None) -> tuple[str, Usage]:
    """A plain-text reply (reasoning stripped) and its usage; the request goes to `audit` when given."""
    text, usage, _ = ask_reply(settings, model, messages, stage, audit)
    return text, usage


def answer_text(message: BaseMessage) -> str:
    """The answer a reply holds: its text parts, without the reasoning a model wrote before it.

    Reasoning that a server sends apart (`reasoning_content`, `reasoning`, thinking or reasoning content
    blocks) is never part of it; reasoning left in the text as <think> blocks is stripped (strip_reasoning).
    """
    content = message.content
    if isinstance(content, str):
        return strip_reasoning(content)
    parts = (part if isinstance(part, str) else part.get("text", "") for part in content if isinstance(part, str) or part.get("type", "text") == "text")
    return strip_reasoning("".join(parts))


LEADING_REASONING = re.compile(r"\s*<(think|thinking)>.*?</\1>", re.DOTALL | re.IGNORECASE)
UNCLOSED_REASONING = re.compile(r"\s*<(?:think|thinking)>", re.IGNORECASE)
OPENING_TAG = re.compile(r"<(?:think|thinking)>", re.IGNORECASE)
CLOSING_LINE = re.compile(r"^[ \t]*</(?:think|thinking)>[ \t]*$", re.MULTILINE | re.IGNORECASE)


def strip_reasoning(text: str) -> str:
    """`text` without the reasoning local reasoning models (DeepSeek-R1, Qwen3 without a reasoning parser) write before their answer.

    Removed: the <think> or <thinking> blocks the reply starts with; an unclosed one at the start, which is all reasoning
    (the reply stopped while thinking); and, where the chat template wrote the opening tag, everything up to the first
    closing tag alone on its line. The reasoning often holds drafts of the answer: none of it may be taken for the answer.
    Tags further on are left alone: they may be the answer's own text (a script that handles a reasoning model's output).
    """
    answer = text
    while leading := LEADING_REASONING.match(answer):
        answer = answer[leading.end() :]
    if UNCLOSED_REASONING.match(answer):
        return ""
    if answer is text and (closing := CLOSING_LINE.search(answer)) and not OPENING_TAG.search(answer, 0, closing.start()):
        answer = answer[closing.end() :]
    return answer.lstrip() if answer is not text else text


# langchain-openai warns, on OpenAI's refusal of a json_schema response format, to use function_calling: with
# STRUCTURED_OUTPUT=auto the runner moves on by itself, and says so once.
warnings.filterwarnings("ignore", message="This model does not support OpenAI's structured output feature", category=UserWarning)

STRUCTURED_METHODS = ("function_calling", "json_schema", "prompt")
"""How a structured reply can be asked for, in the order STRUCTURED_OUTPUT=auto tries them: as a tool call, as a response
format, or with the JSON schema in the prompt and the JSON read from the reply's text (every server can do that)."""

JSON_IN_PROMPT = """

Answer with a single JSON object that follows this JSON schema, and nothing else: no tool call, no text around it.
{schema}"""


class Structured(NamedTuple, Generic[Schema]):
    """A structured answer, what it cost, how it was asked for, and what is known now of how each model answers."""

    answer: Schema
    usage: list[Usage]
    method: str
    """The method of STRUCTURED_METHODS that gave it."""
    learned: dict[str, str]
    """The method found to work for each model under STRUCTURED_OUTPUT=auto, this one's included: for the state to
    keep, so that neither a later request nor a resume probes the server again."""


def methods_to_try(settings: Settings, known: str | None) -> tuple[str, ...]:
    """The methods a structured request may use, in order: the one STRUCTURED_OUTPUT forces, else from the one
    known to work for the model (or the first) onwards."""
    if settings.structured_output != "auto":
        return (settings.structured_output,)
    return STRUCTURED_METHODS[STRUCTURED_METHODS.index(known) :] if known in STRUCTURED_METHODS else STRUCTURED_METHODS


def ask_structured(
    settings: Settings,
    model: str,
    schema: type[Schema],
    messages: list[BaseMessage],
    stage: str,
    audit: AuditLog | None = None,
    *,
    learned: Mapping[str, str] | None = None,
    emit: Callable[[dict], None] | None = None,
) -> Structured[Schema]:
    """A reply parsed into `schema`, asked for by the first method the server takes (methods_to_try; `learned` holds the
    method that worked for each model before). A server that refuses a method's tools or response format
    (LLMError.unsupported) moves it on to the next one, and a method found anew is said once through `emit`. A reply that
    does not parse gets one repair request, then LLMError. Requests go to `audit` when given.

    A node that fails after a probe loses what the probe found with its update: its retry probes again, at the cost
    of one refused request."""
    learned = dict(learned or {})
    spent: list[Usage] = []
    refusals: dict[str, str] = {}  # what the server said to each method it refused
    methods = methods_to_try(settings, learned.get(model))
    for method in methods:
        others = [other for other in STRUCTURED_METHODS if other != method and other not in refusals]
        try:
            answer, usage = _ask_by(method, others, settings, model, schema, messages, stage, audit)
        except LLMError as exc:
            exc.usage = [*spent, *exc.usage]
            if not (exc.unsupported and method != methods[-1]):
                raise
            refusals[method], spent = f"{exc.status} {exc.detail}", exc.usage
            continue
        if settings.structured_output == "auto" and learned.get(model) != method:
            learned[model] = method
            if emit:
                refused = [f"{tried} refused: {said}" for tried, said in refusals.items()]
                emit({"event": "structured_output", "model": model, "method": method, "refused": refused})
        return Structured(answer, [*spent, *usage], method, learned)
    raise AssertionError("methods_to_try gives at least one method")


def _ask_by(
    method: str,
    others: list[str],
    settings: Settings,
    model: str,
    schema: type[Schema],
    messages: list[BaseMessage],
    stage: str,
    audit: AuditLog | None,
) -> tuple[Schema, list[Usage]]:
    """One method's try: the request and, for a reply that does not parse, one repair request; the answer and their usage.
    Twice no answer is an LLMError that suggests the `others` methods."""
    if method == "prompt":
        runnable = chat_model(settings, model)
        messages = with_json_schema(messages, schema)
    else:
        runnable = chat_model(settings, model).with_structured_output(schema, method=method, include_raw=True)
    usage: list[Usage] = []
    for attempt in range(2):
        try:
            result = _invoke(runnable, messages, settings, model, stage, audit)
        except ValidationError as exc:  # json_schema: the SDK parses the reply itself, and refuses one with reasoning before its JSON
            said = next((error["input"] for error in exc.errors() if isinstance(error.get("input"), str)), "")
            result = {"raw": AIMessage(said), "parsed": None, "parsing_error": exc}  # what the reply cost is lost with it
        except LLMError as exc:
            exc.usage = [*usage, *exc.usage]  # the first answer was paid for
            raise
        if isinstance(result, BaseMessage):  # prompt: the plain reply
            result = {"raw": result, "parsed": None, "parsing_error": None}
        raw = result.get("raw")
        if isinstance(raw, BaseMessage):
            usage.append(usage_of(raw, stage, model))
        parsed = result.get("parsed")
        problem = result.get("parsing_error")
        if not isinstance(parsed, schema):
            parsed, invalid = _json_answer(raw, schema)
            problem = problem or invalid
        if isinstance(parsed, schema):
            return parsed, usage
        problem = problem or "the reply held no structured answer"
        if attempt == 0:
            messages = [*messages, HumanMessage(_repair_request(raw, problem, schema))]
    fix = f"try STRUCTURED_OUTPUT={' or '.join(others)}, or another model" if others else "try another model"
    raise LLMError(
        f"{stage}: model {model} twice gave a reply that does not match {schema.__name__}: {fix} in {variables_naming(settings, model)} ({str(problem)[:200]})",
        kind="reply",
        usage=usage,
    )


def with_json_schema(messages: list[BaseMessage], schema: type[BaseModel]) -> list[BaseMessage]:
    """`messages` asking for a JSON answer that follows `schema`, said at the end of the system message: the same text on
    every request for the schema, so the prompt's cacheable prefix stays whole."""
    asked = JSON_IN_PROMPT.format(schema=json.dumps(schema.model_json_schema(), ensure_ascii=False))
    if messages and isinstance(messages[0], SystemMessage) and isinstance(messages[0].content, str):
        return [SystemMessage(messages[0].content + asked), *messages[1:]]
    return [SystemMessage(asked.strip()), *messages]


JSON_FENCE = re.compile(r"```(?:json)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def _json_answer(raw: object, schema: type[Schema]) -> tuple[Schema | None, ValidationError | None]:
    """The answer in a reply's text read as JSON for `schema`, its reasoning stripped first, or None and why the JSON that
    was there did not fit (None when there was none).

    A model asked for a JSON answer may think aloud before it (which the client's own parsing refuses), fence it,
    put it among prose, or leave trailing commas: the first candidate that validates wins (json_candidates).
    """
    if not isinstance(raw, AIMessage) or raw.tool_calls:
        return None, None
    misfit = None
    for candidate in json_candidates(answer_text(raw).strip()):
        for text in (candidate, without_trailing_commas(candidate)):
            try:
                return schema.model_validate_json(text), None
            except ValidationError as exc:
                if not any(error["type"] == "json_invalid" for error in exc.errors()):
                    misfit = misfit or exc  # JSON, but not the schema's: what the repair request should say
    return None, misfit


def json_candidates(text: str) -> Iterator[str]:
    """Where a JSON answer may be in `text`, likeliest first: each ```json (or bare) fenced block, the whole text, then
    each top-level {...} object among other text, in order."""
    yield from JSON_FENCE.findall(text)
    yield text
    depth, start, in_string, escaped = 0, 0, False, False
    for at, char in enumerate(text):
        if in_string:  # only inside an object: a quote in the prose around it starts no string
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"' and depth:
            in_string = True
        elif char == "{":
            start = at if depth == 0 else start
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                yield text[start : at + 1]


def without_trailing_commas(text: str) -> str:
    """`text` without the commas that close no item (`[1, 2,]`, `{"a": 1,}`), which JSON refuses; strings left alone."""
    kept, in_string, escaped = [], False, False
    for at, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char == "," and text[at + 1 :].lstrip()[:1] in ("}", "]"):
            continue
        kept.append(char)
    return "".join(kept)


def _repair_request(raw: object, problem: object, schema: type[BaseModel]) -> str:
    said = ""
    if isinstance(raw, AIMessage):
        said = json.dumps([c.get("args") for c in raw.tool_calls]) if raw.tool_calls else answer_text(raw)
    return (
        f"Your previous reply could not be used: {str(problem)[:500]}\n"
        f"It was: {said[:2000]}\n"
        f"Answer again, as {schema.__name__} with every required field filled and valid."
    )
