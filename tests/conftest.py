"""Shared fixtures: a scratch experiment, and a local OpenAI-compatible server playing a scripted LLM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fake_llm import FakeLLMServer
from scripted import IDEA


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """An experiment folder holding only IDEA.md."""
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "IDEA.md").write_text(IDEA)
    return folder


@pytest.fixture
def hold(experiment: Path) -> Path:
    """While this file exists, HOLDING_TRAIN waits. It lies in the data cache: the sandbox shows train.py nothing else outside its run."""
    path = experiment / "data" / "hold"
    path.parent.mkdir()
    path.touch()
    return path


@pytest.fixture
def llm_server() -> Callable[..., FakeLLMServer]:
    """Start a FakeLLMServer for a responder; every server started is stopped after the test."""
    servers: list[FakeLLMServer] = []

    def start(responder: Callable[[dict], dict], **kwargs) -> FakeLLMServer:
        server = FakeLLMServer(responder, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
