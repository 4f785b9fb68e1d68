"""A small OpenAI-compatible chat server on 127.0.0.1 for offline tests.

Standard library only. A test supplies a *responder*: a callable that gets the
parsed JSON body of each ``POST /v1/chat/completions`` request and returns a
reply dict in one of these forms:

    {"content": "text"}                                   # assistant message
    {"tool_call": {"name": "Fn", "arguments": {...}}}     # one tool call
    {"status": 500, "error": "msg", "headers": {...}}     # HTTP error (headers optional)
    {"status": 404, "body": {...}}                        # HTTP error with a body of its own

Optional keys on a successful reply: ``"usage": {"prompt_tokens": int,
"completion_tokens": int}`` (default: rough word counts), ``"cost": float``
(added inside the usage block, as OpenRouter does), ``"finish_reason": str``
(default "stop", or "tool_calls"; "length" says the output limit cut it),
``"reasoning_content"`` / ``"reasoning"``: str (reasoning sent beside the
content, as vLLM, DeepSeek and OpenRouter do) and ``"delay": seconds`` (sleep
before answering; honoured for error replies too). An error reply with
``"html": "<html>…"`` sends that page instead of an OpenAI-style error body,
as a web server that is not an LLM server does.

Requests with ``"stream": true`` are answered as server-sent events. ``GET
/v1/models`` lists ``models`` when given (else 404); other paths give 404,
as an HTML page with ``html_404=True`` (a web server, not an LLM server).

    with FakeLLMServer(lambda body: {"content": "hi"}) as server:
        llm = ChatOpenAI(base_url=server.base_url, api_key="test", model="m")
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def _words(value: Any) -> int:
    """Rough token count: whitespace-separated words in a string or content-part list."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(part.get("text", "")) if isinstance(part, dict) else _words(part) for part in value)
    return 0


def message_text(message: dict) -> str:
    """A request message's text, whether its content is a string or a list of content blocks (a prompt marked for caching)."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return content or ""


class FakeLLMServer:
    def __init__(self, responder: Callable[[dict], dict], *, models: list[str] | None = None, html_404: bool = False):
        self.responder = responder
        self.models = models
        self.html_404 = html_404
        self.requests: list[dict] = []
        self.base_url = ""
        self._lock = threading.Lock()
        self._call_ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            server_ref = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True, name="FakeLLMServer")
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        return self.base_url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, body: dict) -> None:
        with self._lock:
            self.requests.append(body)

    def _completion(self, body: dict, reply: dict) -> dict:
        """Build a non-streaming chat.completion object from a reply dict."""
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if "tool_call" in reply:
            call = reply["tool_call"]
            message["tool_calls"] = [
                {
                    "id": f"call_{next(self._call_ids)}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))},
                }
            ]
            finish, out_text = "tool_calls", message["tool_calls"][0]["function"]["arguments"]
        elif "content" in reply:
            message["content"] = out_text = reply["content"]
            finish = "stop"
        else:
            raise ValueError(f"reply needs 'content', 'tool_call' or 'status': {reply!r}")
        finish = reply.get("finish_reason", finish)
        for field in ("reasoning_content", "reasoning"):
            if field in reply:
                message[field] = reply[field]
        usage = dict(reply.get("usage") or {})
        usage.setdefault("prompt_tokens", sum(_words(m.get("content")) for m in body.get("messages", [])))
        usage.setdefault("completion_tokens", _words(out_text))
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if "cost" in reply:
            usage["cost"] = reply["cost"]
        return {
            "id": f"chatcmpl-fake{next(self._call_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage,
        }


class _Handler(BaseHTTPRequestHandler):
    server_ref: FakeLLMServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, headers: dict | None = None) -> None:
        error = {"message": message, "type": _ERROR_TYPES.get(status, "api_error"), "code": status}
        self._send_json(status, {"error": error}, headers)

    def _send_html(self, status: int, page: str) -> None:
        data = page.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _no_route(self) -> None:
        if self.server_ref.html_404:
            self._send_html(404, f"<html><body><h1>404 Not Found</h1><p>{self.path}</p></body></html>")
        else:
            self._send_error(404, f"no route for {self.command} {self.path}")

    def do_GET(self) -> None:
        fake = self.server_ref
        if self.path.split("?")[0].rstrip("/") == "/v1/models" and fake.models is not None:
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in fake.models]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._no_route()

    def do_POST(self) -> None:
        fake = self.server_ref
        body_bytes = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            return self._no_route()
        try:
            body = json.loads(body_bytes or b"{}")
        except json.JSONDecodeError as exc:
            return self._send_error(400, f"invalid JSON body: {exc}")
        fake._record(body)
        try:
            reply = fake.responder(body)
            time.sleep(reply.get("delay", 0))
            if "html" in reply:
                return self._send_html(reply.get("status", 500), reply["html"])
            if "status" in reply and "body" in reply:  # an error body of another shape than OpenAI's
                return self._send_json(reply["status"], reply["body"], reply.get("headers"))
            if "status" in reply:
                return self._send_error(reply["status"], reply.get("error", "error"), reply.get("headers"))
            completion = fake._completion(body, reply)
        except Exception as exc:  # make responder bugs visible to the test
            return self._send_error(500, f"FakeLLMServer responder failed: {type(exc).__name__}: {exc}")
        if body.get("stream"):
            self._send_stream(completion)
        else:
            self._send_json(200, completion)

    def _send_stream(self, completion: dict) -> None:
        """Replay a finished completion as SSE chunks: role, content/tool call, finish, usage."""
        message = completion["choices"][0]["message"]
        base = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

        def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> bytes:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
            return f"data: {json.dumps(base | {'choices': choices, 'usage': usage})}\n\n".encode()

        if message.get("tool_calls"):
            parts = [{"role": "assistant", "content": None, "tool_calls": [dict(tc, index=i) for i, tc in enumerate(message["tool_calls"])]}]
        else:
            parts = [{"role": "assistant", "content": ""}, {"content": message["content"]}]
        events = [chunk(d) for d in parts]
        events.append(chunk({}, completion["choices"][0]["finish_reason"]))
        events.append(chunk(None, usage=completion["usage"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for event in events:
            self.wfile.write(event)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
