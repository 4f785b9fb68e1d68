"""The compiled graph inside other graphs: as a node, streamed with subgraphs, and resumed under a parent's own checkpointer after a kill;
and a bare parent, without a context schema, whose experiment reads its settings from its folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from scripted import GOOD_TRAIN, HOLDING_TRAIN, REPO, ScriptedBrain, wait_until
from typing_extensions import TypedDict

from adapters.files import ExperimentFiles
from graph import experiment as wiring
from graph import graph
from settings import ENV_SETTINGS, Settings, SettingsError


class Parent(TypedDict, total=False):
    """A parent agent's state: it shares the experiment's input and output keys, and has its own."""

    experiment_dir: str
    max_runs: int
    stop_reason: str
    report_path: str
    run_count: int
    best_run: dict | None
    verdict: str


def judge(state: Parent) -> dict:
    return {"verdict": f"{state['stop_reason']} after {state['run_count']} runs"}


def parent_graph(context_schema: type | None = Settings):
    builder = StateGraph(Parent, context_schema=context_schema)
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
    assert result["run_count"] == 2 and [r["number"] for r in ExperimentFiles(experiment).read_runs(result["run_count"])] == [1, 2]
    assert result["best_run"]["number"] == 1 and result["best_run"]["metrics"]["accuracy"] == 0.85  # both reached 0.85: the first is the best
    assert "plan" not in result and "usage" not in result  # only the experiment's output keys reach the parent


def test_a_parent_streaming_with_subgraphs_sees_the_experiments_events(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    app = parent_graph().compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "parent"}}

    seen = list(app.stream({"experiment_dir": str(experiment), "max_runs": 1}, config, context=settings_for(server), stream_mode="custom", subgraphs=True))

    namespaces = {namespace[0].split(":")[0] for namespace, _ in seen if namespace}
    events = [event for namespace, event in seen if namespace]
    assert namespaces == {"experiment"}
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["initialize", "summarize", "codegen", "execute", "wait", "analyze", "report"]
    assert any(e["event"] == "output" and any("epoch=1" in line for line in e["lines"]) for e in events)
    assert [e["status"] for e in events if e["event"] == "run_done"] == ["ok"]


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from langgraph.checkpoint.sqlite import SqliteSaver
    from settings import Settings
    from test_embedding import parent_graph

    bare = "bare" in sys.argv  # no context schema, no context: the experiment reads its folder's settings
    context = {{}} if bare else {{"context": Settings.from_env()}}
    with SqliteSaver.from_conn_string({database!r}) as saver:
        app = parent_graph(None if bare else Settings).compile(checkpointer=saver)
        config = {{"configurable": {{"thread_id": "parent"}}}}
        resume = "resume" in sys.argv
        result = app.invoke(None if resume else {{"experiment_dir": {experiment!r}, "max_runs": 2}}, config, durability="sync", **context)
        print("VERDICT", result["verdict"])
    """
)


def settings_in_folder(experiment: Path, base_url: str) -> dict[str, str]:
    """Write the experiment's .env for the local server; the environment without any setting of its own, so the folder's count."""
    lines = [f"LLM_BASE_URL={base_url}", "LLM_API_KEY=test-key", "LLM_MAX_RETRIES=0", "LLM_RETRY_BACKOFF_SECONDS=0", "SANDBOX=none", "SANDBOX_ENV=HOLD_FILE"]
    (experiment / ".env").write_text("\n".join(lines) + "\n")
    return {name: value for name, value in os.environ.items() if name not in ENV_SETTINGS}


def kill_in_run_2_then_resume(experiment: Path, script: Path, hold: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Start the parent, SIGKILL it while run 2 executes, and resume it to its end."""
    parent = subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run_2 = experiment / "run_2" / "output.log"
    wait_until(lambda: run_2.exists() and "starting" in run_2.read_text())
    os.killpg(parent.pid, signal.SIGKILL)  # the parent agent dies in the middle of run 2
    parent.communicate()
    hold.unlink()
    return subprocess.run([sys.executable, str(script), *args, "resume"], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("bare", [False, True], ids=["with-context", "bare"])
def test_a_parent_with_its_own_sqlite_checkpointer_resumes_after_a_kill(experiment: Path, llm_server, hold: Path, tmp_path: Path, bare: bool):
    brain = ScriptedBrain(codes=[GOOD_TRAIN, HOLDING_TRAIN])
    env = {**settings_in_folder(experiment, llm_server(brain).base_url), "HOLD_FILE": str(hold), "PYTHONPATH": str(REPO)}
    if not bare:  # the settings come from the parent's own environment, passed as context
        env.update(dict(line.split("=", 1) for line in (experiment / ".env").read_text().splitlines()))
        (experiment / ".env").unlink()
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), database=str(tmp_path / "parent.sqlite"), experiment=str(experiment)))

    resumed = kill_in_run_2_then_resume(experiment, script, hold, env, *(["bare"] if bare else []))

    assert resumed.returncode == 0, resumed.stderr
    assert "VERDICT max_runs after 2 runs" in resumed.stdout
    assert brain.stages.count("codegen") == 2  # run 1 was not redone, nor was run 2's code written again
    assert (experiment / "run_1" / "output.log").read_text().count("epoch=1") == 1
    assert (experiment / "run_2" / "output.interrupted-1.log").is_file()  # the killed attempt's log is kept


# a bare parent: no context schema, no context


def test_a_bare_parent_runs_the_experiment_on_its_folders_settings(experiment: Path, llm_server, monkeypatch):
    server = llm_server(ScriptedBrain())
    settings_in_folder(experiment, server.base_url)
    (experiment / ".env").write_text((experiment / ".env").read_text() + "CODE_MODEL=folder/coder\n")
    for name in ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    reads: list[Path] = []
    read = wiring.settings_env
    monkeypatch.setattr(wiring, "settings_env", lambda folder: reads.append(folder) or read(folder))
    app = parent_graph(context_schema=None).compile(checkpointer=InMemorySaver())

    result = app.invoke({"experiment_dir": str(experiment), "max_runs": 1}, {"configurable": {"thread_id": "bare"}})

    assert result["verdict"] == "max_runs after 1 runs" and (experiment / "REPORT.md").is_file()
    assert {request["model"] for request in server.requests if "You write train.py" in request["messages"][0]["content"]} == {"folder/coder"}
    assert reads == [experiment.resolve()]  # once for the whole invocation, not at every node
    app.invoke({"experiment_dir": str(experiment), "max_runs": 1}, {"configurable": {"thread_id": "again"}})
    assert len(reads) == 2  # a new invocation reads the folder again


def test_a_bare_parent_whose_folder_settings_cannot_work_says_which(experiment: Path, monkeypatch):
    for name in ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    app = parent_graph(context_schema=None).compile()
    says = rf"OPENROUTER_API_KEY is not set: .*no context was passed to the graph, so the settings were read for {experiment.resolve()}"
    with pytest.raises(SettingsError, match=says):
        app.invoke({"experiment_dir": str(experiment), "max_runs": 1})
    assert not (experiment / "PLAN.md").exists()
