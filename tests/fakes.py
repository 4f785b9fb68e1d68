"""Fakes shared by the node and graph tests: a scripted chat model, settings, a runtime that records events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fake_llm import message_text
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.runtime import Runtime
from pydantic import Field

from adapters.files import ExperimentFiles
from settings import Settings
from state import NextRun, RunRecord, Task

UNREACHABLE_LLM = "http://127.0.0.1:1/v1"
"""A base URL nothing listens on: a test that reaches the network by mistake fails fast."""


class ScriptedChatModel(FakeMessagesListChatModel):
    """Answers with `responses` in order, once each; an exception in the list is raised instead.

    `calls` keeps the messages of every call, so tests can read the prompts. Tool binding is a
    no-op, which is all `with_structured_output(method="function_calling")` needs: the scripted
    AIMessage's tool_calls are what the parser reads.
    """

    responses: list[Any]
    calls: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.calls.append(list(messages))
        if self.i >= len(self.responses):
            raise AssertionError(f"the fake model was called {self.i + 1} times but only {len(self.responses)} replies were scripted")
        reply = self.responses[self.i]
        self.i += 1
        if isinstance(reply, BaseException):
            raise reply
        return ChatResult(generations=[ChatGeneration(message=reply.model_copy(deep=True))])

    def prompt(self, call: int = -1) -> str:
        """The text of every message of one call, joined."""
        return "\n".join(self.text(call, index) for index in range(len(self.calls[call])))

    def text(self, call: int, message: int) -> str:
        """The text of one message of one call, whether its content is a string or content blocks (a prompt marked for caching)."""
        return message_text({"content": self.calls[call][message].content})


def text_reply(text: str, input_tokens: int = 100, output_tokens: int = 20, cost: float | None = None) -> AIMessage:
    """A plain assistant reply with token usage (and a provider-reported cost, as OpenRouter gives)."""
    return AIMessage(
        content=text,
        usage_metadata={"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens},
        response_metadata={"token_usage": {"cost": cost}} if cost is not None else {},
    )


def tool_reply(name: str, args: dict, input_tokens: int = 100, output_tokens: int = 20) -> AIMessage:
    """A reply holding one tool call, as a function-calling structured answer arrives."""
    return AIMessage(
        content="",
        tool_calls=[{"name": name, "args": args, "id": "c1"}],
        usage_metadata={"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens},
    )


def plan_reply(goal: str = "accuracy >= 0.9", tasks: tuple[str, ...] = ("Baseline", "Tune")) -> AIMessage:
    """The planner's ExperimentPlan."""
    return tool_reply("ExperimentPlan", {"goal": goal, "plan": "Train a small model.", "tasks": [{"title": t, "notes": f"why {t}"} for t in tasks]})


def analysis_reply(summary: str = "It ran.", goal_achieved: bool = False, **fields: Any) -> AIMessage:
    """The analyst's RunAnalysis; `fields` adds findings, task_updates, new_tasks, goal_evidence."""
    return tool_reply("RunAnalysis", {"summary": summary, "goal_achieved": goal_achieved, **fields})


def code_reply(code: str) -> AIMessage:
    """A codegen reply with the file in a python fence, as the prompt asks."""
    return text_reply(f"Here is the file.\n\n```python\n{code}\n```\n")


def make_settings(model: Any = None, **overrides: Any) -> Settings:
    """Settings that ignore the real environment and use `model` for every stage."""
    return Settings.from_env({}, chat_model=model, llm_base_url=overrides.pop("llm_base_url", UNREACHABLE_LLM), **overrides)


def make_runtime(model: Any = None, **overrides: Any) -> tuple[Runtime[Settings], list[dict]]:
    """A runtime for calling a node outside a graph, and the list its emitted events land in."""
    events: list[dict] = []
    return Runtime(context=make_settings(model, **overrides), stream_writer=events.append), events


def make_experiment(root: Path, idea: str = "Classify iris flowers; reach accuracy >= 0.9.") -> str:
    """A scratch experiment folder with IDEA.md; returns its path as state holds it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "IDEA.md").write_text(idea, encoding="utf-8")
    return str(root)


def make_run(
    number: int, status: str = "ok", metrics: dict[str, float] | None = None, error: str = "", operator: str | None = None, parent: int | None = -1
) -> RunRecord:
    """A finished run's record; by default it builds on the run before it, as in the linear loop."""
    parent = (number - 1 or None) if parent == -1 else parent
    return RunRecord(
        number=number,
        status=status,
        exit_code=0 if status == "ok" else None if status == "timeout" else 1,
        duration_s=1.5,
        metrics=metrics or {},
        error=error,
        operator=operator or ("draft" if parent is None else "improve"),
        parent=parent,
    )


def make_task(id: int, title: str = "", status: str = "todo", notes: str = "", runs: list[int] | None = None) -> Task:
    return Task(id=id, title=title or f"task {id}", status=status, notes=notes, runs=runs or [])


def events_of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e.get("event") == kind]


def make_next_run(number: int, operator: str | None = None, parent: int | None = -1, reason: str = "the test's choice") -> NextRun:
    """The search's choice for the coming run, as summarize leaves it in the state; by default it builds on the run before it."""
    parent = (number - 1 or None) if parent == -1 else parent
    return NextRun(number=number, operator=operator or ("draft" if parent is None else "improve"), parent=parent, reason=reason)


def run_code(number: int) -> str:
    """The train.py seed_runs writes for run `number` (with code=True): a file that says whose it is."""
    return f"print('the code of run {number}')\n"


def seed_runs(root: str | Path, runs: list[RunRecord], code: bool = False) -> dict:
    """Finished runs as execute leaves them: each record in run_N/result.json (and, with `code`, run_code(N) in
    run_N/train.py); returns the state's part, {"run_count": N}, to merge into a node's state."""
    files = ExperimentFiles(root)
    for run in runs:
        files.write_result(run)
        if code:
            (files.run_dir(run["number"]) / "train.py").write_text(run_code(run["number"]), encoding="utf-8")
    return {"run_count": len(runs)}


def execute(state: dict, runtime: Runtime[Settings]) -> dict:
    """One run as the graph makes it: the execute node submits it, the wait node takes it once it ends; wait's update."""
    from nodes.execute import execute as submit
    from nodes.execute import wait

    submitted = submit(state, runtime)
    assert [flight["number"] for flight in submitted["in_flight"]] == [state.get("run_count", 0) + 1]
    return wait({**state, **submitted}, runtime)
