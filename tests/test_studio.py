"""The graph as LangGraph Studio serves it: `langgraph dev` with langgraph.json, driven over the SDK."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripted import REPO, ScriptedBrain

langgraph_sdk = pytest.importorskip("langgraph_sdk", reason="the dev extra installs langgraph-cli[inmem]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dev_server(llm_server, tmp_path: Path):
    """`langgraph dev` on a free port, its models pointed at the local LLM server."""
    server = llm_server(ScriptedBrain())
    port = _free_port()
    env = dict(
        os.environ,
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="true",
        LANGSMITH_TRACING="false",
        LLM_BASE_URL=server.base_url,
        LLM_API_KEY="test-key",
    )
    log = tmp_path / "langgraph-dev.log"
    cli = Path(sys.executable).with_name("langgraph")
    with open(log, "w") as out:
        command = [str(cli), "dev", "--no-reload", "--no-browser", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        # langgraph-api says "Application started"; older ones only uvicorn's "Application startup complete".
        while not any(ready in log.read_text() for ready in ("Application started", "Application startup complete")) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        assert re.search(rf"127\.0\.0\.1:{port}\b", log.read_text()), "langgraph dev did not take the port it was given"
        yield langgraph_sdk.get_sync_client(url=f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_studio_serves_and_runs_the_experiment_graph(dev_server, experiment: Path):
    assistant = dev_server.assistants.search(graph_id="experiment")[0]
    schemas = dev_server.assistants.get_schemas(assistant["assistant_id"])
    assert schemas["input_schema"]["required"] == ["experiment_dir"]
    assert {"stop_reason", "report_path", "run_count", "best_run"} <= set(schemas["output_schema"]["properties"])
    assert "code_model" in schemas["context_schema"]["properties"]

    thread = dev_server.threads.create()
    parts = list(
        dev_server.runs.stream(thread["thread_id"], assistant["assistant_id"], input={"experiment_dir": str(experiment), "max_runs": 1}, stream_mode="custom")
    )

    events = [part.data for part in parts if part.event == "custom"]
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["initialize", "summarize", "codegen", "execute", "wait", "analyze", "report"]
    assert [e["status"] for e in events if e["event"] == "run_done"] == ["ok"]
    assert any(e["event"] == "output" for e in events)
    state = dev_server.threads.get_state(thread["thread_id"])
    result = state["values"]
    assert state["next"] == [] and result["stop_reason"] == "max_runs" and result["run_count"] == 1 and "runs" not in result
    assert result["latest_run"]["number"] == 1 and result["latest_run"]["operator"] == "draft"
    assert result["report_path"] == str(experiment / "REPORT.md")
    assert (experiment / "run_1" / "output.log").is_file() and (experiment / "REPORT.md").is_file()
    assert len((experiment / ".runner" / "llm_calls.jsonl").read_text().splitlines()) == 4  # the audit trail works under Studio too


def test_studio_shows_the_review_interrupt_and_resumes_it_over_the_sdk(dev_server, experiment: Path):
    assistant = dev_server.assistants.search(graph_id="experiment")[0]
    thread = dev_server.threads.create()
    context = {"review": True}
    dev_server.runs.wait(thread["thread_id"], assistant["assistant_id"], input={"experiment_dir": str(experiment), "max_runs": 1}, context=context)

    [interrupt] = dev_server.threads.get(thread["thread_id"])["interrupts"].values()
    request = interrupt[0]["value"]
    assert request["kind"] == "review" and request["run"] == 1 and "json.dump" in request["code"]
    assert not (experiment / "run_1" / "output.log").exists()

    result = dev_server.runs.wait(thread["thread_id"], assistant["assistant_id"], command={"resume": {"action": "approve"}}, context=context)
    assert result["stop_reason"] == "max_runs"
    assert (experiment / "run_1" / "output.log").is_file()
