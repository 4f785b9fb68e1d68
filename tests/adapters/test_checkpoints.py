"""Tests for adapters/checkpoints.py: pruning a thread's older checkpoints on a real SqliteSaver, under tiny real graphs."""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from adapters.checkpoints import prune_checkpoints

THREAD = {"configurable": {"thread_id": "experiment"}}


class Counting(TypedDict):
    count: int
    blob: str
    """Replaced at each step, so that every checkpoint is the same size."""


class Trail(TypedDict):
    visited: Annotated[list[str], operator.add]
    answer: str


@pytest.fixture
def saver(tmp_path: Path) -> Iterator[SqliteSaver]:
    with SqliteSaver.from_conn_string(str(tmp_path / "checkpoints.sqlite")) as opened:
        yield opened


def counting_graph(saver: SqliteSaver, steps: int, blob_bytes: int = 100):
    """One node that counts up, `steps` times, each step a checkpoint."""

    def count(state: Counting) -> dict:
        return {"count": state["count"] + 1, "blob": f"{state['count']:08d}" * (blob_bytes // 8)}

    builder = StateGraph(Counting)
    builder.add_node("count", count)
    builder.add_edge(START, "count")
    builder.add_conditional_edges("count", lambda state: END if state["count"] >= steps else "count")
    return builder.compile(checkpointer=saver)


def stream_pruning(app, saver: SqliteSaver, stream_input, keep: int, config: dict = THREAD) -> int:
    """Stream `app` as runner.drive does, pruning after every step; how many checkpoints were deleted."""
    deleted = 0
    for _ in app.stream(stream_input, {**config, "recursion_limit": 10_000}, durability="sync"):
        deleted += prune_checkpoints(saver, config["configurable"]["thread_id"], keep)
    return deleted


def checkpoint_rows(saver: SqliteSaver, namespace: str | None = "") -> list[str]:
    """The thread's checkpoint ids, oldest first: in the root namespace, or in every other one with namespace=None."""
    where = "checkpoint_ns = ''" if namespace == "" else "checkpoint_ns != ''"
    return [row[0] for row in saver.conn.execute(f"SELECT checkpoint_id FROM checkpoints WHERE {where} ORDER BY rowid")]


def on_disk(saver: SqliteSaver) -> int:
    """The database's size in bytes, its write-ahead log merged into it first."""
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = Path(saver.conn.execute("PRAGMA database_list").fetchone()[2])
    return path.stat().st_size


def test_checkpoint_ids_sort_as_they_were_made(saver: SqliteSaver):
    stream_pruning(counting_graph(saver, 50), saver, {"count": 0, "blob": ""}, keep=0)

    ids = checkpoint_rows(saver)

    assert len(ids) == 52 and ids == sorted(ids)  # the input, 50 steps and the end; rowid is insertion order


def test_pruning_keeps_the_latest_checkpoints_and_the_state(saver: SqliteSaver):
    app = counting_graph(saver, 30)

    deleted = stream_pruning(app, saver, {"count": 0, "blob": ""}, keep=5)

    assert deleted == 32 - 5  # of the input's, the first step's and 30 steps' checkpoints
    assert len(checkpoint_rows(saver)) == 5
    assert app.get_state(THREAD).values["count"] == 30
    stale = saver.conn.execute("SELECT count(*) FROM writes WHERE checkpoint_id < ?", (checkpoint_rows(saver)[0],)).fetchone()[0]
    assert stale == 0


def test_keep_zero_keeps_everything_and_a_young_thread_loses_nothing(saver: SqliteSaver):
    app = counting_graph(saver, 3)
    app.invoke({"count": 0, "blob": ""}, THREAD)

    assert prune_checkpoints(saver, "experiment", 0) == 0
    assert prune_checkpoints(saver, "experiment", 50) == 0
    assert prune_checkpoints(saver, "another thread", 1) == 0
    assert len(checkpoint_rows(saver)) == 5


def test_other_threads_are_left_alone(saver: SqliteSaver):
    app = counting_graph(saver, 10)
    other = {"configurable": {"thread_id": "other"}}
    app.invoke({"count": 0, "blob": ""}, other)

    stream_pruning(app, saver, {"count": 0, "blob": ""}, keep=2)

    assert saver.conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = 'other'").fetchone()[0] == 12
    assert app.get_state(other).values["count"] == 10


def test_a_step_that_failed_beside_a_finished_one_resumes_exactly_after_pruning_to_one(saver: SqliteSaver):
    """A failed step keeps its finished sibling's result as a pending write of the latest checkpoint: a resume must not run it again."""
    calls: list[str] = []
    failing = [True]

    def node(name: str):
        def run(state: Trail) -> dict:
            calls.append(name)
            if name == "flaky" and failing[0]:
                raise RuntimeError("flaky failed")
            return {"visited": [name]}

        return run

    builder = StateGraph(Trail)
    for name in ("first", "steady", "flaky", "last"):
        builder.add_node(name, node(name))
    builder.add_edge(START, "first")
    builder.add_edge("first", "steady")
    builder.add_edge("first", "flaky")
    builder.add_edge(["steady", "flaky"], "last")
    builder.add_edge("last", END)
    app = builder.compile(checkpointer=saver)
    with pytest.raises(RuntimeError, match="flaky failed"):
        app.invoke({"visited": [], "answer": ""}, THREAD, durability="sync")
    assert sorted(calls) == ["first", "flaky", "steady"]

    assert prune_checkpoints(saver, "experiment", 1) > 0
    failing[0] = False
    final = app.invoke(None, THREAD, durability="sync")

    assert sorted(calls) == ["first", "flaky", "flaky", "last", "steady"]  # steady's result came from the pending write
    assert sorted(final["visited"]) == ["first", "flaky", "last", "steady"]


def test_an_interrupt_inside_a_subgraph_resumes_exactly_after_pruning_to_one(saver: SqliteSaver):
    """A subgraph's checkpoints live in namespaces of their own: the old ones go, those of the step in flight stay."""
    calls: list[str] = []

    def ask(state: Trail) -> dict:
        calls.append("ask")
        if len(state["visited"]) < 6:
            return {"visited": ["ask"]}
        return {"visited": ["ask"], "answer": interrupt("which one?")}

    def prepare(state: Trail) -> dict:
        calls.append("prepare")
        return {"visited": ["prepare"]}

    inner = StateGraph(Trail)
    inner.add_node("prepare", prepare)
    inner.add_node("ask", ask)
    inner.add_edge(START, "prepare")
    inner.add_edge("prepare", "ask")
    builder = StateGraph(Trail)
    builder.add_node("inner", inner.compile())
    builder.add_edge(START, "inner")
    builder.add_conditional_edges("inner", lambda state: END if state["answer"] else "inner")
    app = builder.compile(checkpointer=saver)
    stream_pruning(app, saver, {"visited": [], "answer": ""}, keep=0)
    assert app.get_state(THREAD).interrupts and len(set(saver.conn.execute("SELECT checkpoint_ns FROM checkpoints"))) == 4
    in_flight = checkpoint_rows(saver, namespace=None)[-3:]  # the subgraph's checkpoints since its last start

    prune_checkpoints(saver, "experiment", 1)

    assert checkpoint_rows(saver, namespace=None) == in_flight
    assert len(checkpoint_rows(saver)) == 1
    calls.clear()
    final = app.invoke(Command(resume="the second"), THREAD, durability="sync")
    assert calls == ["ask"] and final["answer"] == "the second"


def test_the_file_stops_growing_once_pruned(saver: SqliteSaver):
    app = counting_graph(saver, 600, blob_bytes=8_000)
    sizes = {}

    for _ in app.stream({"count": 0, "blob": ""}, {**THREAD, "recursion_limit": 10_000}, durability="sync", stream_mode="values"):
        prune_checkpoints(saver, "experiment", 10)
        count = app.get_state(THREAD).values["count"]
        if count in (200, 600):
            sizes[count] = on_disk(saver)

    assert sizes[600] <= sizes[200] * 1.05, sizes  # freed pages are used again: 400 more checkpoints of 8 kB add nothing
    assert sizes[600] < 20 * 8_000 * 4, sizes  # about ten checkpoints' worth, not 600


def test_a_failure_while_pruning_deletes_nothing(saver: SqliteSaver):
    app = counting_graph(saver, 10)
    app.invoke({"count": 0, "blob": ""}, THREAD)
    saver.conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON checkpoints BEGIN SELECT RAISE(ABORT, 'refused'); END")

    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        prune_checkpoints(saver, "experiment", 2)

    assert len(checkpoint_rows(saver)) == 12
    assert saver.conn.execute("SELECT count(*) FROM writes").fetchone()[0] > 10  # the writes, deleted first, came back
