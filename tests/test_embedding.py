"""The compiled graph inside other graphs: as a node, streamed with subgraphs, and resumed under a parent's own checkpointer after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from scripted import GOOD_TRAIN, HOLDING_TRAIN, REPO, ScriptedBrain, runner_env, wait_until
from typing_extensions import TypedDict

from graph import graph
from settings import Settings


class Parent(TypedDict, total=False):
    """A parent agent's state: it shares the experiment's input and output keys, and has its own."""

    experiment_dir: str
    max_runs: int
    stop_reason: str
    report_path: str
    runs: list
    verdict: str


def judge(state: Parent) -> dict:
    return {"verdict": f"{state['stop_reason']} after {len(state['runs'])} runs"}


def parent_graph():
    builder = StateGraph(Parent, context_schema=Settings)
    builder.add_node("experiment", graph)
    builder.add_node("judge", judge)
    builder.add_edge(START, "experiment")
    builder.add_edge("experiment", "judge")
    builder.add_edge("judge", END)
    return builder


def settings_for(server, **overrides) -> Settings:
    return Settings.from_env({}, llm_base_url=server.base_url, llm_api_key="test-key", llm_max_retries=0, sandbox="none", **overrides)


def test_a_parent_graph_runs_the_experiment_as_a_node(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    app = parent_graph().compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "parent"}}

    result = app.invoke({"experiment_dir": str(experiment), "max_runs": 2}, config, context=settings_for(server))

    assert result["verdict"] == "max_runs after 2 runs"
    assert result["report_path"] == str(experiment / "REPORT.md") and (experiment / "REPORT.md").is_file()
    assert [r["number"] for r in result["runs"]] == [1, 2]
    assert "plan" not in result and "usage" not in result  # only the experiment's output keys reach the parent


def test_a_parent_streaming_with_subgraphs_sees_the_experiments_events(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    app = parent_graph().compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "parent"}}

    seen = list(app.stream({"experiment_dir": str(experiment), "max_runs": 1}, config, context=settings_for(server), stream_mode="custom", subgraphs=True))

    namespaces = {namespace[0].split(":")[0] for namespace, _ in seen if namespace}
    events = [event for namespace, event in seen if namespace]
    assert namespaces == {"experiment"}
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["initialize", "summarize", "codegen", "execute", "analyze", "report"]
    assert any(e["event"] == "output" and any("epoch=1" in line for line in e["lines"]) for e in events)
    assert [e["status"] for e in events if e["event"] == "run_done"] == ["ok"]


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from langgraph.checkpoint.sqlite import SqliteSaver
    from settings import Settings
    from test_embedding import parent_graph

    settings = Settings.from_env()
    with SqliteSaver.from_conn_string({database!r}) as saver:
        app = parent_graph().compile(checkpointer=saver)
        config = {{"configurable": {{"thread_id": "parent"}}}}
        resume = sys.argv[1:] == ["resume"]
        result = app.invoke(None if resume else {{"experiment_dir": {experiment!r}, "max_runs": 2}}, config, context=settings, durability="sync")
        print("VERDICT", result["verdict"])
    """
)


def test_a_parent_with_its_own_sqlite_checkpointer_resumes_after_a_kill(experiment: Path, llm_server, hold: Path, tmp_path: Path):
    brain = ScriptedBrain(codes=[GOOD_TRAIN, HOLDING_TRAIN])
    env = runner_env(llm_server(brain).base_url, HOLD_FILE=str(hold))
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), database=str(tmp_path / "parent.sqlite"), experiment=str(experiment)))

    parent = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run_2 = experiment / "run_2" / "output.log"
    wait_until(lambda: run_2.exists() and "starting" in run_2.read_text())
    os.killpg(parent.pid, signal.SIGKILL)  # the parent agent dies in the middle of run 2
    parent.communicate()
    hold.unlink()

    resumed = subprocess.run([sys.executable, str(script), "resume"], env=env, capture_output=True, text=True, timeout=120)

    assert resumed.returncode == 0, resumed.stderr
    assert "VERDICT max_runs after 2 runs" in resumed.stdout
    assert brain.stages.count("codegen") == 2  # run 1 was not redone, nor was run 2's code written again
    assert (experiment / "run_1" / "output.log").read_text().count("epoch=1") == 1
    assert (experiment / "run_2" / "output.interrupted-1.log").is_file()  # the killed attempt's log is kept
