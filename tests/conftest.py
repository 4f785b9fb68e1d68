"""Shared fixtures: a scratch experiment, and a local OpenAI-compatible server playing a scripted LLM."""

from __future__ import annotations

import tempfile
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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> str:
    """A real local Ray cluster for the whole suite, one head with 2 CPUs and 2 fake GPUs (so that Ray's scheduling and its
    CUDA_VISIBLE_DEVICES are exercised), started once by the first test that asks; its address (RAY_ADDRESS).

    It lives in a temporary folder of its own, and only its own processes are stopped at the end (by that folder in their
    command lines, and their descendants): `ray stop` would stop every Ray process on the machine."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    from ray_cluster import start_cluster, stop_cluster

    temp_dir = Path(tempfile.mkdtemp(prefix="amr-ray-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    address = start_cluster(temp_dir)
    yield address
    stop_cluster(temp_dir)
