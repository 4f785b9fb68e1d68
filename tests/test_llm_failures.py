"""LLM failures through the compiled graph and a real ChatOpenAI: what is retried, how often, and how it ends."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from fake_llm import FakeLLMServer
from fakes import make_experiment
from langgraph.checkpoint.memory import InMemorySaver

from adapters import process
from adapters.llm import LLMError
from graph import build_graph
from graph import experiment as wiring
from graph.experiment import LLM_NODE_ATTEMPTS, backoff_seconds, resume_halted
from settings import ENV_SETTINGS, Settings

PLAN = {
    "tool_call": {
        "name": "ExperimentPlan",
        "arguments": {"goal": "accuracy >= 0.9", "plan": "Start small.", "tasks": [{"title": "Baseline", "notes": ""}]},
    }
}
CODE = {"content": "```python\nprint('accuracy=0.9')\n```"}


class Script:
    """A responder answering with `replies` in order; the last one repeats."""

    def __init__(self, *replies: dict):
        self.replies = list(replies)
        self.calls = 0

    def __call__(self, body: dict) -> dict:
        self.calls += 1
        return self.replies[min(self.calls, len(self.replies)) - 1]


def run_graph(tmp_path: Path, server: FakeLLMServer, monkeypatch, stop_after: str = "initialize", **overrides) -> dict:
    """Run the experiment graph against `server` until `stop_after` has finished (or it ends), and return its state; node retries do not wait."""
    app = build_graph().compile(checkpointer=InMemorySaver(), interrupt_after=[stop_after])
    overrides = {"llm_retry_backoff_seconds": 0, **overrides}
    settings = Settings.from_env({}, llm_base_url=server.base_url, llm_api_key="test-key", report_model="my/planner", **overrides)
    config = {"configurable": {"thread_id": "t"}}
    app.invoke({"experiment_dir": make_experiment(tmp_path / "exp"), "max_runs": 1}, config, context=settings)
    if app.get_state(config).values.get("halted"):
        app.invoke(None, config, context=settings)  # cut short: let report write its record
    return app.get_state(config).values


def assert_halted(state: dict, reason: str, stage: str, says: str, tmp_path: Path) -> None:
    """The experiment ended cut short in `stage`, recorded in the state and in REPORT.md."""
    assert state["stop_reason"] == reason
    assert re.search(says, state["stop_detail"]), state["stop_detail"]
    assert state["halted"] == {"stage": stage, "stop_reason": None, "stop_detail": ""}
    report = (tmp_path / "exp" / "REPORT.md").read_text()
    assert report.startswith("# Report (unfinished)") and f"**{reason}** during {stage}" in report


# the wiring


def test_no_node_has_a_langgraph_retry_policy():  # the tries are stops_cleanly's, which reads its backoff from the invocation's settings
    for name, node in build_graph().nodes.items():
        assert not node.retry_policy, name


def test_the_backoff_doubles_up_to_a_minute_unless_the_server_asks_for_longer():
    settings = Settings.from_env({}, llm_retry_backoff_seconds=20)
    busy = LLMError("busy", kind="unavailable", status=503)
    assert [backoff_seconds(settings, tried, busy) for tried in (1, 2, 3, 4)] == [20, 40, 60, 60]
    assert backoff_seconds(settings, 1, LLMError("busy", kind="unavailable", status=429, retry_after=90)) == 90
    assert backoff_seconds(Settings.from_env({}), 1, busy) == 2  # LLM_RETRY_BACKOFF_SECONDS's default


# fatal: one request, no retry at any level


@pytest.mark.parametrize("sdk_retries", [0, 2])
def test_a_rejected_key_stops_at_once(tmp_path, llm_server, monkeypatch, sdk_retries):
    server = llm_server(Script({"status": 401, "error": "No auth credentials found"}))
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=sdk_retries)
    assert_halted(state, "fatal", "initialize", r"rejected the API key \(401\): check LLM_API_KEY \(No auth credentials found\)", tmp_path)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ({"status": 402, "error": "Insufficient credits"}, r"out of credits \(402\): add credits"),
        ({"status": 404, "error": "No endpoints found for my/planner"}, r"model my/planner not found at the LLM server \(404\): check REPORT_MODEL"),
        ({"status": 403, "error": "Forbidden"}, r"refuses model my/planner with this key \(403\): check LLM_API_KEY and REPORT_MODEL"),
    ],
)
def test_fatal_errors_stop_at_once(tmp_path, llm_server, monkeypatch, reply, says):
    server = llm_server(Script(reply))
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=2)
    assert_halted(state, "fatal", "initialize", says, tmp_path)
    assert len(server.requests) == 1


def test_malformed_structured_replies_end_fatal_without_node_retries(tmp_path, llm_server, monkeypatch):
    malformed = {"tool_call": {"name": "ExperimentPlan", "arguments": {"goal": "accuracy >= 0.9"}}}
    server = llm_server(Script(malformed))
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=2)
    assert_halted(state, "fatal", "initialize", "twice gave a reply that does not match ExperimentPlan: try STRUCTURED_OUTPUT=json_schema", tmp_path)
    assert len(server.requests) == 2  # the question and its one repair request
    assert [(u["stage"], u["calls"]) for u in state["usage"]] == [("initialize", 2)]  # both were paid for: they count towards the budgets


# a prompt too long: shrunk once


TOO_LONG = {"status": 400, "error": "This endpoint's maximum context length is 8192 tokens."}


def test_a_prompt_too_long_is_shrunk_once_and_then_succeeds(tmp_path, llm_server, monkeypatch):
    server = llm_server(Script(TOO_LONG, PLAN))
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=2)
    assert state["goal"] == "accuracy >= 0.9" and not state.get("halted")
    first, second = ([m["content"] for m in r["messages"]] for r in server.requests)
    assert second[0] == first[0]  # the system prompt is kept whole
    assert len(second[1]) <= len(first[1]) // 2 and "characters cut" in second[1]


def test_a_prompt_still_too_long_after_its_shrink_is_fatal(tmp_path, llm_server, monkeypatch):
    server = llm_server(Script(TOO_LONG))
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=2)
    says = r"the prompt is too long for model my/planner \(400\), even with each message cut to 50%: choose a model with a longer context in REPORT_MODEL"
    assert_halted(state, "fatal", "initialize", says, tmp_path)
    assert len(server.requests) == 2


# unavailable: retried, bounded


def test_429_twice_then_success_is_retried_by_the_sdk_honouring_retry_after(tmp_path, llm_server, monkeypatch):
    busy = {"status": 429, "error": "Rate limit exceeded", "headers": {"Retry-After": "1"}}
    server = llm_server(Script(busy, busy, PLAN))
    started = time.monotonic()
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=2)
    assert state["goal"] == "accuracy >= 0.9"
    assert len(server.requests) == 3
    assert 1.9 <= time.monotonic() - started < 10  # two waits of the second the server asked for


def test_429_twice_then_success_is_retried_by_the_node(tmp_path, llm_server, monkeypatch):
    busy = {"status": 429, "error": "Rate limit exceeded"}
    server = llm_server(Script(busy, busy, PLAN))
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=0)
    assert state["goal"] == "accuracy >= 0.9"
    assert len(server.requests) == 3


def test_a_server_error_in_codegen_is_retried_too(tmp_path, llm_server, monkeypatch):
    server = llm_server(Script(PLAN, {"status": 503, "error": "overloaded"}, CODE))
    state = run_graph(tmp_path, server, monkeypatch, stop_after="codegen", llm_max_retries=0)
    assert state["code"] == "print('accuracy=0.9')\n"
    assert len(server.requests) == 3


def test_500_forever_ends_unavailable_after_a_bounded_number_of_requests(tmp_path, llm_server, monkeypatch):
    server = llm_server(Script({"status": 500, "error": "Internal Server Error"}))
    started = time.monotonic()
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=1)
    assert_halted(state, "llm_unavailable", "initialize", r"the LLM server keeps failing \(500\): try later", tmp_path)
    assert len(server.requests) == LLM_NODE_ATTEMPTS * (1 + 1)  # node tries x requests per try
    assert time.monotonic() - started < 10
    assert not (tmp_path / "exp" / "PLAN.md").exists()


def test_a_server_that_asks_for_a_long_wait_is_not_retried_now(tmp_path, llm_server, monkeypatch):
    server = llm_server(Script({"status": 429, "error": "quota", "headers": {"Retry-After": "3600"}}))
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=2)
    assert_halted(state, "llm_unavailable", "initialize", r"asks to wait 3600 s \(429\)", tmp_path)
    assert len(server.requests) == 1


def test_timeouts_end_unavailable_after_every_node_try(tmp_path, llm_server, monkeypatch):
    server = llm_server(Script({**PLAN, "delay": 1.5}))
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=0, llm_timeout_seconds=1)
    assert_halted(state, "llm_unavailable", "initialize", r"did not answer within LLM_TIMEOUT_SECONDS \(1 s\)", tmp_path)
    assert len(server.requests) == LLM_NODE_ATTEMPTS
    time.sleep(0.7)  # let the last late answer hit its closed connection while this test's output is captured


def test_a_wrong_base_url_ends_fatal_at_once_and_names_it(tmp_path, llm_server, monkeypatch):
    # `python -m http.server` at LLM_BASE_URL: a 404 page for GET /models, 501 for any POST.
    server = llm_server(Script({"status": 501, "html": "<html><body><h1>Error response</h1><p>Error code: 501</p></body></html>"}), html_404=True)
    started = time.monotonic()
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=0)
    says = rf"^{server.base_url} does not look like an OpenAI-compatible endpoint \(501: Not Implemented\): check LLM_BASE_URL"
    assert_halted(state, "fatal", "initialize", says, tmp_path)
    assert len(server.requests) == 1 and time.monotonic() - started < 5


# every node try counts its paid tokens, and waits as the invocation's settings say


BROKEN = {"content": "```python\ndef train(:\n```", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}
BUSY = {"status": 429, "error": "Rate limit exceeded"}


def test_the_tokens_of_a_failed_node_try_count_when_a_later_try_succeeds(tmp_path, llm_server, monkeypatch):
    # Try 1: a file that does not compile, then its repair is rate-limited through every SDK retry. Try 2: broken again, repaired.
    fixed = {**CODE, "usage": {"prompt_tokens": 3000, "completion_tokens": 300}}
    broken_again = {**BROKEN, "usage": {"prompt_tokens": 2000, "completion_tokens": 200}}
    server = llm_server(Script(PLAN, BROKEN, BUSY, BUSY, broken_again, fixed))
    state = run_graph(tmp_path, server, monkeypatch, stop_after="codegen", llm_max_retries=1)
    assert state["code"] == "print('accuracy=0.9')\n" and not state.get("halted")
    (codegen,) = [u for u in state["usage"] if u["stage"] == "codegen"]
    assert (codegen["input_tokens"], codegen["output_tokens"], codegen["calls"]) == (6000, 600, 3)


def test_the_tokens_of_every_failed_node_try_count_in_the_halt(tmp_path, llm_server, monkeypatch):
    server = llm_server(Script(PLAN, *[BROKEN, BUSY] * LLM_NODE_ATTEMPTS))  # every try: a file that does not compile, its repair rate-limited
    state = run_graph(tmp_path, server, monkeypatch, stop_after="codegen", llm_max_retries=0)
    assert state["stop_reason"] == "llm_unavailable" and state["halted"]["stage"] == "codegen"
    (codegen,) = [u for u in state["usage"] if u["stage"] == "codegen"]
    assert (codegen["input_tokens"], codegen["calls"]) == (1000 * LLM_NODE_ATTEMPTS, LLM_NODE_ATTEMPTS)
    assert len(server.requests) == 1 + 2 * LLM_NODE_ATTEMPTS


def record_waits(monkeypatch) -> list[float]:
    """The waits between node tries, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(wiring, "wait_unless_stopping", lambda seconds: waits.append(seconds) or True)
    return waits


def test_the_backoff_comes_from_the_invocations_settings(tmp_path, llm_server, monkeypatch):
    monkeypatch.setenv("LLM_RETRY_BACKOFF_SECONDS", "0")  # the environment of the process that built the graph: not this invocation's setting
    waits = record_waits(monkeypatch)
    server = llm_server(Script(BUSY, BUSY, PLAN))
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=0, llm_retry_backoff_seconds=7)
    assert state["goal"] == "accuracy >= 0.9"
    assert waits == [7, 14]


def test_without_context_the_experiments_env_file_sets_the_backoff(tmp_path, llm_server, monkeypatch):
    for name in ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    waits = record_waits(monkeypatch)
    server = llm_server(Script(BUSY, PLAN))
    folder = make_experiment(tmp_path / "exp")
    env = f"LLM_BASE_URL={server.base_url}\nLLM_API_KEY=test-key\nLLM_MAX_RETRIES=0\nLLM_RETRY_BACKOFF_SECONDS=45\n"
    (tmp_path / "exp" / ".env").write_text(env)
    app = build_graph().compile(checkpointer=InMemorySaver(), interrupt_after=["initialize"])

    app.invoke({"experiment_dir": folder, "max_runs": 1}, {"configurable": {"thread_id": "t"}})  # no context

    assert app.get_state({"configurable": {"thread_id": "t"}}).values["goal"] == "accuracy >= 0.9"
    assert waits == [45]


def test_ctrl_c_during_the_backoff_stops_at_once(tmp_path, llm_server, monkeypatch):
    monkeypatch.setattr(process, "_cancelled", threading.Event())  # cancelling is for good: keep it to this test
    server = llm_server(Script(BUSY, PLAN))
    threading.Timer(0.5, process.cancel_running_scripts).start()  # what main.py does on Ctrl-C
    started = time.monotonic()
    state = run_graph(tmp_path, server, monkeypatch, llm_max_retries=0, llm_retry_backoff_seconds=60)
    assert time.monotonic() - started < 5
    assert_halted(state, "interrupted", "initialize", "stopped by the user while initialize waited to try again", tmp_path)
    assert len(server.requests) == 1


def test_an_unreachable_server_ends_unavailable(tmp_path, monkeypatch):
    nowhere = FakeLLMServer(Script(PLAN))
    nowhere.base_url = "http://127.0.0.1:1/v1"
    state = run_graph(tmp_path, nowhere, monkeypatch, llm_max_retries=0)
    assert_halted(state, "llm_unavailable", "initialize", r"cannot reach the LLM server at http://127.0.0.1:1/v1", tmp_path)


# a halt is resumable: the step cut short runs again


def halted_in_codegen(tmp_path, llm_server, monkeypatch):
    """A graph (paused before execute) whose codegen was cut short by a 402 and succeeds when entered again; with its server."""
    server = llm_server(Script(PLAN, {"status": 402, "error": "Insufficient credits"}, CODE))
    app = build_graph().compile(checkpointer=InMemorySaver(), interrupt_before=["execute"])
    settings = Settings.from_env({}, llm_base_url=server.base_url, llm_api_key="test-key", llm_retry_backoff_seconds=0)
    config = {"configurable": {"thread_id": "t"}}
    app.invoke({"experiment_dir": make_experiment(tmp_path / "exp"), "max_runs": 1}, config, context=settings)
    return app, config, settings, server


def test_a_halted_experiment_resumes_in_the_step_that_failed(tmp_path, llm_server, monkeypatch):
    app, config, settings, server = halted_in_codegen(tmp_path, llm_server, monkeypatch)
    halted = app.get_state(config).values
    assert (halted["stop_reason"], halted["halted"]["stage"]) == ("fatal", "codegen")
    assert not app.get_state(config).next  # the graph ended, with its report written

    app.invoke(resume_halted(halted["halted"]), config, context=settings)

    state = app.get_state(config)
    assert state.next == ("execute",)  # codegen ran again and the experiment goes on
    assert state.values["code"] == "print('accuracy=0.9')\n"
    assert state.values["stop_reason"] is None and state.values["halted"] is None
    assert len(server.requests) == 3


def test_a_runner_killed_while_the_failed_step_runs_again_keeps_the_halt(tmp_path, llm_server, monkeypatch):
    app, config, settings, _ = halted_in_codegen(tmp_path, llm_server, monkeypatch)
    halted = app.get_state(config).values["halted"]

    for chunk in app.stream(resume_halted(halted), config, context=settings, stream_mode="custom"):
        if chunk.get("stage") == "codegen":
            break  # the runner dies while codegen runs again

    assert app.get_state(config).values["halted"] == halted  # still cut short: the next resume enters codegen once more
    app.invoke(resume_halted(halted), config, context=settings)
    assert app.get_state(config).next == ("execute",) and app.get_state(config).values["halted"] is None


def test_a_stopping_runner_halts_before_the_next_step(tmp_path, llm_server, monkeypatch):
    monkeypatch.setattr(process, "_cancelled", threading.Event())  # cancelling is for good: keep it to this test
    server = llm_server(Script(PLAN))
    app = build_graph().compile(checkpointer=InMemorySaver(), interrupt_after=["initialize"])
    settings = Settings.from_env({}, llm_base_url=server.base_url, llm_api_key="test-key", llm_retry_backoff_seconds=0)
    config = {"configurable": {"thread_id": "t"}}
    app.invoke({"experiment_dir": make_experiment(tmp_path / "exp"), "max_runs": 1}, config, context=settings)

    process.cancel_running_scripts()  # what main.py does on Ctrl-C
    app.invoke(None, config, context=settings)

    state = app.get_state(config).values
    assert (state["stop_reason"], state["halted"]["stage"]) == ("interrupted", "summarize")
    assert "**interrupted** during summarize" in (tmp_path / "exp" / "REPORT.md").read_text()
    assert len(server.requests) == 1
