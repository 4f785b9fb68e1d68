"""The experiment as a LangGraph state machine: `build_graph()` and the compiled `graph`."""

from graph.experiment import build_graph, graph

__all__ = ["build_graph", "graph"]
