"""The audit trail: one JSON line per LLM request in <exp>/.runner/llm_calls.jsonl, to see what the model was asked and answered."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from langchain_core.messages import AIMessage, BaseMessage

from state import Usage


class AuditLog:
    """Appends a line per request: when, which stage and model, how long, tokens (cached ones too) and cost, and (with `content`) the messages and reply."""

    def __init__(self, path: Path, content: bool = True):
        self.path = path
        self.content = content

    def record(
        self,
        *,
        stage: str,
        model: str,
        started: float,
        latency_s: float,
        messages: list[BaseMessage],
        reply: BaseMessage | None,
        usage: Usage | None,
        error: str | None = None,
    ) -> None:
        line = {
            "time": datetime.fromtimestamp(started, UTC).isoformat(timespec="milliseconds"),
            "stage": stage,
            "model": model,
            "latency_s": round(latency_s, 3),
            "input_tokens": usage["input_tokens"] if usage else None,
            "cached_tokens": usage.get("cached_tokens", 0) if usage else None,
            "output_tokens": usage["output_tokens"] if usage else None,
            "cost_usd": usage["cost_usd"] if usage else None,
            "ok": error is None,
            "error": error,
        }
        if self.content:
            line["messages"] = [as_dict(m) for m in messages]
            line["reply"] = as_dict(reply) if reply is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:  # one writer: the runner holds the experiment's lock
            f.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")


def as_dict(message: BaseMessage) -> dict:
    """A message as the audit shows it: role, content, and the tool calls of a structured reply."""
    shown = {"role": message.type, "content": message.content}
    if isinstance(message, AIMessage) and message.tool_calls:
        shown["tool_calls"] = [{"name": c["name"], "args": c["args"]} for c in message.tool_calls]
    return shown


def read_audit(path: Path) -> list[dict]:
    """Every line of an audit log (for tests and tools)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
