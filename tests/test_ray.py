"""Runs as Ray tasks on a real local cluster (EXECUTOR=ray): 2 CPUs and 2 fake GPUs, one cluster for the suite.

Each train.py notes what it was given and when (span.json), and may wait while a file in its DATA_DIR exists: the
tests share data through SHARED_DATA, a folder every "node" (here: this machine) mounts, so they can hold a run
and let it go. Processes a run leaves are found by a marker in their command lines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from fake_llm import message_text
from scripted import ScriptedBrain, run_main, runner_env, start_main, wait_until
from test_parallel import overlap, span, tree

from adapters import remote, sandbox
from runner import run_experiment

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
from ray.util.state import list_tasks  # noqa: E402

from adapters.cluster import task_name  # noqa: E402


def train(name: str, accuracy: float, seconds: float = 0.0, hold: bool = False, children: str = "", forever: bool = False) -> str:
    """A train.py that notes its span and variables, prints a line at once, waits while $DATA_DIR/hold-<name> exists
    if `hold`, sleeps `seconds` (or for ever), then reports `accuracy`. With `children` (a marker) it first starts two
    sleepers whose command lines hold the marker, one of them in a session of its own."""
    lines = [
        f"# {name}",
        "import json, os, subprocess, sys, time",
        "span = {'start': time.time(), 'CUDA_VISIBLE_DEVICES': os.environ.get('CUDA_VISIBLE_DEVICES'), 'env': sorted(os.environ)}",
        'json.dump(span, open("span.json", "w"))',
    ]
    if children:
        sleeper = f"import time; time.sleep(600)  # {children}"
        lines += [
            f"subprocess.Popen([sys.executable, '-c', {sleeper!r}])",
            f"subprocess.Popen([sys.executable, '-c', {sleeper!r}], start_new_session=True)",
        ]
    lines.append(f'print("{name} starting", flush=True)')
    if hold:
        lines += [f'while os.path.exists(os.path.join(os.environ["DATA_DIR"], "hold-{name}")):', "    time.sleep(0.05)"]
    lines.append("while True: time.sleep(1)" if forever else f"time.sleep({seconds})")
    lines += [
        'span["end"] = time.time()',
        'json.dump(span, open("span.json", "w"))',
        f'print("accuracy={accuracy}")',
        f'json.dump({{"accuracy": {accuracy}}}, open("metrics.json", "w"))',
    ]
    return "\n".join(lines) + "\n"


def llm(server, cluster: str, shared: Path, **settings) -> dict:
    return {
        "llm_base_url": server.base_url,
        "llm_api_key": "test-key",
        "llm_max_retries": 0,
        "llm_retry_backoff_seconds": 0,
        "executor": "ray",
        "ray_address": cluster,
        "shared_data": str(shared),
        **settings,
    }


def with_marker(marker: str) -> list[str]:
    """Live processes whose command line holds `marker`, as 'pid cmdline' (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(os.getpid()):
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and marker in cmdline and "pytest" not in cmdline:
            found.append(f"{entry.name} {cmdline}")
    return found


def gone(marker: str, timeout: float = 20.0) -> list[str]:
    """Wait up to `timeout` for every process holding `marker` to end; those still alive (killed, for the next test)."""
    deadline = time.monotonic() + timeout
    while (left := with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for line in left:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except OSError:
            pass
    return left


def tasks_of(cluster: str, experiment: Path, number: int) -> list:
    """What Ray's state API knows of run `number`'s task (by its name), once it has been told."""
    return list_tasks(address=cluster, filters=[("name", "=", task_name(experiment, number))], detail=True, raise_on_missing_output=False)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """SHARED_DATA: a folder every node of the test cluster (this machine) sees at the same path."""
    folder = tmp_path / "shared"
    folder.mkdir()
    return folder


def test_four_runs_on_two_workers_are_ray_tasks_on_their_own_gpus_and_stream_their_logs(experiment: Path, llm_server, ray_cluster: str, shared: Path):
    codes = [train("run 1", 0.61, hold=True), train("run 2", 0.62, seconds=2), train("run 3", 0.63, seconds=1), train("run 4", 0.64, seconds=1)]
    (shared / "hold-run 1").touch()
    server = llm_server(ScriptedBrain(codes=codes))
    events: list[dict] = []
    seen: dict = {}
    log = experiment / "run_1" / "output.log"

    def let_go() -> None:  # once run 1's first line is on the driver, while run 1 is still held
        try:
            wait_until(lambda: log.exists() and "run 1 starting" in log.read_text(), timeout=90)
            seen["streamed"] = not (experiment / "run_1" / "result.json").exists()
            seen["live"] = [line for event in list(events) if event.get("event") == "output" and event.get("run") == 1 for line in event["lines"]]
        finally:
            (shared / "hold-run 1").unlink()

    releaser = threading.Thread(target=let_go)
    releaser.start()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        final = run_experiment(experiment, max_runs=4, on_event=events.append, **llm(server, ray_cluster, shared, workers=2))
    finally:
        releaser.join()

    assert signal.getsignal(signal.SIGTERM) is handler  # Ray's own handler gave way to the runner's again
    assert seen["streamed"] and "run 1 starting" in seen["live"]
    assert final["run_count"] == 4 and final["stop_reason"] == "max_runs"
    assert [status for *_, status in tree(experiment)] == ["ok"] * 4
    spans = {n: span(experiment, n) for n in (1, 2, 3, 4)}
    assert overlap(spans[1], spans[2])  # two workers: runs 1 and 2 trained at once...
    assert {spans[1]["CUDA_VISIBLE_DEVICES"], spans[2]["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}  # ...each on a GPU Ray gave it
    for number in (1, 2, 3, 4):
        record = json.loads((experiment / f"run_{number}" / "result.json").read_text())
        assert record["gpus"] == [spans[number]["CUDA_VISIBLE_DEVICES"]] and record["node"]
        assert json.loads((experiment / f"run_{number}" / "metrics.json").read_text()) == {"accuracy": 0.6 + number / 100}  # came back
        assert f"accuracy=0.6{number}" in (experiment / f"run_{number}" / "output.log").read_text()
        worker = json.loads((experiment / f"run_{number}" / "worker.json").read_text())
        assert worker["gpus"] == record["gpus"] and worker["node_id"]
    wait_until(lambda: all(len(tasks_of(ray_cluster, experiment, n)) == 1 for n in (1, 2, 3, 4)), timeout=30)
    for number in (1, 2, 3, 4):
        (task,) = tasks_of(ray_cluster, experiment, number)
        assert task.state == "FINISHED" and task.required_resources.get("GPU") == 1.0 and task.required_resources.get("CPU") == 1.0
    asked = [message_text(request["messages"][1]) for request in server.requests if "You write train.py" in request["messages"][0]["content"]]
    told = "Each run is a Ray task on a node of a cluster: it gets 1 CPU thread (OMP_NUM_THREADS) and 1 GPU of its own"
    assert len(asked) == 4 and all(told in prompt for prompt in asked)  # the code model knows what a run gets there
    report = (experiment / "REPORT.md").read_text()
    assert "| Where |" in report and f"{record['node']} · GPU {spans[4]['CUDA_VISIBLE_DEVICES']}" in report


@pytest.mark.parametrize("mode", ["none", "bwrap"])
def test_a_hanging_run_is_killed_on_timeout_with_nothing_left_on_the_node(experiment: Path, llm_server, ray_cluster: str, shared: Path, mode: str):
    if mode == "bwrap" and sandbox.bwrap_problem():
        pytest.skip("needs bubblewrap")
    marker = f"hang-{uuid.uuid4().hex}"
    server = llm_server(ScriptedBrain(codes=[train("hangs", 0.5, children=marker, forever=True)]))

    run_experiment(experiment, max_runs=1, **llm(server, ray_cluster, shared, timeout_seconds=3, sandbox=mode))

    record = json.loads((experiment / "run_1" / "result.json").read_text())
    assert record["status"] == "timeout" and record["error"] == "timed out after 3 s"
    assert "hangs starting" in (experiment / "run_1" / "output.log").read_text()
    assert gone(marker, timeout=5) == []  # the sleepers, the setsid()'d one too, went with train.py


def test_a_stop_rule_cancels_the_run_in_flight_on_the_cluster_and_records_it(experiment: Path, llm_server, ray_cluster: str, shared: Path):
    marker = f"goal-{uuid.uuid4().hex}"
    codes = [train("run 1", 0.95, seconds=3), train("run 2", 0.4, children=marker, forever=True)]
    server = llm_server(ScriptedBrain(codes=codes, goal_met_on=1))

    final = run_experiment(experiment, max_runs=4, **llm(server, ray_cluster, shared, workers=2, sandbox="none"))

    assert final["stop_reason"] == "goal_met"
    assert tree(experiment) == [(1, "draft", None, "ok"), (2, "draft", None, "cancelled")]
    assert "run 2 starting" in (experiment / "run_2" / "output.log").read_text()  # its partial log, streamed while it ran
    assert gone(marker, timeout=5) == []
    # Ray lists the task as ended: FAILED, or FINISHED (Ray 2.60 lists so a generator task its cancel interrupted: the
    # KeyboardInterrupt reached the task, which killed train.py's tree and raised it again).
    wait_until(lambda: [task.state for task in tasks_of(ray_cluster, experiment, 2)] in (["FAILED"], ["FINISHED"]), timeout=30)


def test_ctrl_c_cancels_the_runs_in_flight_on_the_cluster(experiment: Path, llm_server, ray_cluster: str, shared: Path):
    marker = f"ctrlc-{uuid.uuid4().hex}"
    server = llm_server(ScriptedBrain(codes=[train(f"run {n}", 0.5, children=marker, forever=True) for n in (1, 2)]))
    env = runner_env(server.base_url, EXECUTOR="ray", RAY_ADDRESS=ray_cluster, SHARED_DATA=str(shared), SANDBOX="none")
    runner = start_main(["-d", str(experiment), "-r", "2", "--workers", "2"], env)
    logs = [experiment / f"run_{n}" / "output.log" for n in (1, 2)]
    try:
        wait_until(lambda: all(log.exists() and "starting" in log.read_text() for log in logs), timeout=90)
        assert len(with_marker(marker)) == 4  # each run's two sleepers
    finally:
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=60)

    assert gone(marker) == []
    assert runner.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    states = {}

    def ended() -> bool:
        states.update({n: [task.state for task in tasks_of(ray_cluster, experiment, n)] for n in (1, 2)})
        return all(states[n] and states[n][0] not in ("RUNNING", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER") for n in (1, 2))

    try:
        wait_until(ended, timeout=30)
    except AssertionError:
        raise AssertionError(f"the runs' tasks: {states}") from None
    assert not any((experiment / f"run_{n}" / "result.json").exists() for n in (1, 2))  # in flight still: a resume runs them again


def test_sigkill_of_the_runner_leaves_nothing_on_the_cluster_and_resume_finishes(experiment: Path, llm_server, ray_cluster: str, shared: Path):
    marker = f"killed-{uuid.uuid4().hex}"
    codes = [train(f"run {n}", 0.6 + n / 100, hold=True, children=marker) for n in (1, 2)] + [train("run 3", 0.63)]
    for n in (1, 2):
        (shared / f"hold-run {n}").touch()
    server = llm_server(ScriptedBrain(codes=codes))
    env = runner_env(server.base_url, EXECUTOR="ray", RAY_ADDRESS=ray_cluster, SHARED_DATA=str(shared), SANDBOX="none")
    runner = start_main(["-d", str(experiment), "-r", "3", "--workers", "2"], env)
    logs = [experiment / f"run_{n}" / "output.log" for n in (1, 2)]
    try:
        wait_until(lambda: all(log.exists() and "starting" in log.read_text() for log in logs), timeout=90)
        assert len(with_marker(marker)) == 4
        watched = run_main(["status", "-d", str(experiment)], env)
    finally:
        runner.kill()
        runner.communicate()
    for n in (1, 2):  # `status` says where each run in flight trains
        gpu = json.loads((experiment / f"run_{n}" / "worker.json").read_text())["gpus"][0]
        assert f"run {n} · draft · {socket.gethostname()} · GPU {gpu}" in watched.stdout, watched.stdout

    assert gone(marker) == []  # Ray ended the dead driver's tasks, and train.py's trees with them
    for n in (1, 2):
        (shared / f"hold-run {n}").unlink()
    resumed = run_main(["-d", str(experiment), "--resume"], env, timeout=180)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [status for *_, status in tree(experiment)] == ["ok"] * 3
    for n in (1, 2):
        assert (experiment / f"run_{n}" / "output.interrupted-1.log").read_text().startswith(f"run {n} starting")
        assert f"accuracy=0.6{n}" in (experiment / f"run_{n}" / "output.log").read_text()
    assert gone(marker, timeout=5) == []


def test_a_worker_killed_under_a_run_takes_the_run_with_it_and_the_run_fails(experiment: Path, llm_server, ray_cluster: str, shared: Path):
    """Without bwrap's PID namespace, the guard started beside the run kills train.py's tree when its worker dies."""
    marker = f"worker-{uuid.uuid4().hex}"
    (shared / "hold-doomed").touch()
    server = llm_server(ScriptedBrain(codes=[train("doomed", 0.5, hold=True, children=marker)]))
    where = experiment / "run_1" / "worker.json"

    def kill_the_worker() -> None:
        wait_until(lambda: where.exists() and len(with_marker(marker)) == 2, timeout=90)
        time.sleep(1.5)  # the pid file has caught up with the sleepers
        os.kill(json.loads(where.read_text())["worker_pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    try:
        run_experiment(experiment, max_runs=1, **llm(server, ray_cluster, shared, sandbox="none"))
    finally:
        killer.join()

    record = json.loads((experiment / "run_1" / "result.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("the Ray task failed"), record
    assert gone(marker, timeout=10) == []


# Before the test of a local instance: Ray 2.60 does not join another cluster well from a process whose own local instance
# it has shut down (the task never reaches the cluster).
def test_a_graded_run_on_the_cluster_is_graded_on_the_driver_on_the_submission_that_came_back(experiment: Path, llm_server, ray_cluster: str, shared: Path):
    if sandbox.bwrap_problem():
        pytest.skip("needs bubblewrap: a graded experiment runs train.py in it")
    (experiment / "grade.py").write_text(
        "import json, sys\nfrom pathlib import Path\n"
        "score = json.loads((Path(sys.argv[1]) / 'submission.json').read_text())['score']\n"
        "print(json.dumps({'accuracy': score, 'key_lines': len(Path('private/key.txt').read_text().splitlines())}))\n"
    )
    (experiment / "private").mkdir()
    (experiment / "private" / "key.txt").write_text("the answer key\n")
    key = experiment / "private" / "key.txt"
    code = train("graded", 0.99) + (
        f"try:\n    open({str(key)!r}).read()\n    print('READ the key')\nexcept OSError as exc:\n    print('no key:', type(exc).__name__)\n"
        "json.dump({'score': 0.7}, open('submission.json', 'w'))\n"
    )
    server = llm_server(ScriptedBrain(codes=[code]))

    run_experiment(experiment, max_runs=1, **llm(server, ray_cluster, shared))  # SANDBOX=auto: bwrap on every node, for a graded experiment

    record = json.loads((experiment / "run_1" / "result.json").read_text())
    assert record["status"] == "ok" and record["node"]
    assert record["metrics"] == {"accuracy": 0.7, "key_lines": 1} and record["reported"] == {"accuracy": 0.99}
    assert record["flags"] == ["self-reported accuracy 0.99, graded 0.7"]
    assert (experiment / "run_1" / "submission.json").exists()  # came back from the node
    assert "no key: FileNotFoundError" in (experiment / "run_1" / "output.log").read_text()


def test_without_ray_address_a_local_instance_runs_the_experiment_without_the_llm_key(experiment: Path, llm_server, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-reach-a-worker")
    monkeypatch.setenv("HF_TOKEN", "hf-must-not-reach-a-worker")
    (experiment / "data").mkdir()
    (experiment / "data" / "table.csv").write_text("x,y\n1,2\n")
    code = train("local", 0.7) + 'open("seen.txt", "w").write(open(os.path.join(os.environ["DATA_DIR"], "table.csv")).read())\n'
    server = llm_server(ScriptedBrain(codes=[code]))
    settings = {key: value for key, value in llm(server, "", Path()).items() if key not in ("ray_address", "shared_data")}

    def ray_processes() -> set[int]:  # this process's children (it is a subreaper, so a `ray start` cluster's too)
        return {pid for pid in _children(os.getpid()) if _name(pid) in ("gcs_server", "raylet")}

    before = ray_processes()
    final = run_experiment(experiment, max_runs=1, **settings, sandbox="none")

    assert final["run_count"] == 1 and tree(experiment) == [(1, "draft", None, "ok")]
    seen = span(experiment, 1)["env"]
    assert not [name for name in seen if "KEY" in name or "TOKEN" in name]  # neither the LLM key nor another secret went along
    assert (experiment / "run_1" / "seen.txt").read_text() == "x,y\n1,2\n"  # data/ was shipped
    assert not ray.is_initialized()
    wait_until(lambda: ray_processes() <= before, timeout=20)  # the instance stopped with the experiment


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def _name(pid: int) -> str:
    """The process's name, or "" once it is gone (a zombie included)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return ""
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, IndexError):
        return ""


def test_without_the_ray_extra_executor_ray_exits_2_with_the_install_command(experiment: Path, tmp_path: Path):
    shim = tmp_path / "no_ray"
    (shim / "ray").mkdir(parents=True)
    (shim / "ray" / "__init__.py").write_text('raise ImportError("No module named ray")\n')
    env = runner_env("http://127.0.0.1:9/v1", PYTHONPATH=f"{shim}{os.pathsep}{Path(__file__).parent.parent}")

    done = run_main(["-d", str(experiment), "--executor", "ray"], env)

    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "EXECUTOR=ray needs Ray, which is not installed: pip install -e '.[ray]'" in done.stderr


def test_bad_cluster_settings_exit_2_before_any_llm_call(experiment: Path, ray_cluster: str, tmp_path: Path):
    base = runner_env("http://127.0.0.1:9/v1", EXECUTOR="ray", RAY_ADDRESS=ray_cluster)
    missing = run_main(["-d", str(experiment), "--shared-data", str(tmp_path / "nowhere")], base)
    (experiment / "data").mkdir()
    (experiment / "data" / "big.bin").write_bytes(b"\0" * 3 * 2**20)
    too_big = run_main(["-d", str(experiment)], {**base, "SHIP_DATA_MAX_MB": "2"})
    too_many_gpus = run_main(["-d", str(experiment), "--gpus-per-run", "3"], base)
    too_many_cpus = run_main(["-d", str(experiment), "--cpus-per-run", "3"], base)
    relative = run_main(["-d", str(experiment), "--shared-data", "data"], base)

    assert missing.returncode == 2 and f"SHARED_DATA={tmp_path / 'nowhere'} is not a folder there" in missing.stderr
    assert too_big.returncode == 2 and "holds 3 MiB, over SHIP_DATA_MAX_MB=2" in too_big.stderr and "SHARED_DATA" in too_big.stderr
    assert too_many_gpus.returncode == 2 and "has 1 CPU and 3 GPUs for a run (CPUS_PER_RUN, GPUS_PER_RUN)" in too_many_gpus.stderr
    assert too_many_cpus.returncode == 2 and "has 3 CPUs and 1 GPU for a run" in too_many_cpus.stderr
    assert relative.returncode == 2 and "SHARED_DATA must be an absolute path" in relative.stderr
    for done in (missing, too_big, too_many_gpus, too_many_cpus, relative):
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (experiment / "run_1").exists()


def test_a_node_without_bwrap_is_refused_when_the_sandbox_is_asked_for(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    asked = {"python": sys.executable, "sandbox": "bwrap", "no_network": False, "shared_data": ""}

    refused = remote.probe(asked)
    auto = remote.probe({**asked, "sandbox": "auto"})

    assert len(refused["problems"]) == 1 and refused["problems"][0].startswith("SANDBOX=bwrap but bubblewrap (bwrap) is not installed")
    assert auto["problems"] == [] and auto["sandbox"] == "none"  # auto runs without it there, as it would here


def test_files_the_run_wrote_come_back_within_their_limits(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(remote, "FILE_BACK_MAX_BYTES", 100)
    monkeypatch.setattr(remote, "FILES_BACK_MAX_BYTES", 150)
    (tmp_path / "train.py").write_text("print(1)")
    (tmp_path / "output.log").write_text("1\n")
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.9}')
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.txt").write_bytes(b"a" * 90)
    (tmp_path / "model.bin").write_bytes(b"m" * 101)
    (tmp_path / "z.txt").write_bytes(b"z" * 60)

    back, left = remote._files_back(tmp_path)

    assert back == {"metrics.json": b'{"accuracy": 0.9}', "plots/a.txt": b"a" * 90}
    assert left == ["model.bin (0.0 MiB)", "z.txt (0.0 MiB)"]
