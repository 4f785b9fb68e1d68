"""What a Ray worker does for a run (EXECUTOR=ray): train.py in the worker's own sandbox, within the limits, its output
streamed back to the driver as it grows.

This module runs on the cluster's nodes, shipped there by Ray (runtime_env py_modules: the `adapters` package), so it
needs nothing but the standard library and this package; Ray itself is imported only inside the task. The run folder
lives in the node's temporary folder while the run goes, under `auto-ml-runner/<experiment>/run_N/`, beside the
experiment's data (`data/`: shipped once per node, or a link to SHARED_DATA), and is removed when the run ends:
output.log has reached the driver by then, with metrics.json and the run's other small files.

Nothing outlives the run on the node: on a timeout, a limit or a cancel from the driver (a KeyboardInterrupt Ray
raises in the task) run_script kills train.py's whole tree; when the worker process itself is killed (Ray kills a
job's workers when its driver dies, SIGKILL included) the kernel kills the child (setpriv --pdeathsig), bwrap's PID
namespace takes every descendant with it, and without bwrap a guard process started beside the run kills what the
pid file names.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from adapters.process import KILL_GRACE_S, KILL_WITHIN_S, PR_SET_CHILD_SUBREAPER, Limits, ProcessResult, check_limit_tools, kill_leftover, run_script
from adapters.sandbox import bwrap_problem, child_environment, resolve_mode, sandbox_command, share_environment, workspace

STREAM_EVERY_S = 0.25
"""How often new output goes to the driver."""
CHUNK_BYTES = 4 * 2**20
"""The most log bytes in one message to the driver."""
FILE_BACK_MAX_BYTES = 8 * 2**20
"""A file the run wrote comes back to the driver up to this size (metrics.json, a confusion matrix); bigger ones stay behind."""
FILES_BACK_MAX_BYTES = 64 * 2**20
"""All the files that come back together, at most."""
NOT_BROUGHT_BACK = ("output.log", "train.py")
"""Files of the run folder the driver has already."""
GUARD_POLL_S = 0.5
GUARD = """
import os, shutil, sys, time
from pathlib import Path
from adapters.process import kill_leftover
from adapters.remote import kill_in_folder
worker, pid_file, done, run_dir = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
while not done.exists():
    try:
        os.kill(worker, 0)
    except ProcessLookupError:
        kill_leftover(pid_file)
        kill_in_folder(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        break
    time.sleep(float(sys.argv[5]))
done.unlink(missing_ok=True)
"""
"""Watches the worker process for a run without bwrap: when the worker dies before the run ends (Ray kills a dead
driver's workers, and their children), it kills what is left of train.py's tree: what the pid file names, and
whatever still works in the run folder (a setsid()'d descendant the parent-death signal does not reach)."""


def node_base(experiment: str) -> Path:
    """The node's folder for an experiment's runs and data."""
    return Path(tempfile.gettempdir()) / "auto-ml-runner" / experiment


def where() -> dict:
    """Which node and GPUs this task has (inside a Ray task)."""
    import ray

    context = ray.get_runtime_context()
    return {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "gpus": [str(gpu) for gpu in ray.get_gpu_ids()],
        "worker_pid": os.getpid(),
    }


def probe(spec: dict) -> dict:
    """What a node can do for the runs (a task pinned to each node at start): its sandbox, the limits' tools, the data."""
    problems = []
    try:
        check_limit_tools()
    except Exception as exc:
        problems.append(str(exc))
    python = spec["python"] or sys.executable
    if not shutil.which(python):
        problems.append(f"the Python that runs train.py ({python}) is not there (TRAIN_PYTHON must name it on every node)")
    if spec["shared_data"] and not Path(spec["shared_data"]).is_dir():
        problems.append(f"SHARED_DATA={spec['shared_data']} is not a folder there (every node must mount it at that path)")
    bwrap = None if spec["sandbox"] == "none" else bwrap_problem()
    if spec["sandbox"] == "bwrap" and bwrap:
        problems.append(f"SANDBOX=bwrap but {bwrap}")
    if spec["no_network"] and bwrap:
        problems.append(f"--no-network needs the bwrap sandbox, but {bwrap}")
    return {
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "sandbox": "none" if spec["sandbox"] == "none" or bwrap else "bwrap",
        "problems": problems,
    }


def run_on_worker(spec: dict, files: dict[str, bytes], data: list) -> Iterator[dict]:
    """Run one train.py (a Ray generator task): yields `started` (where), `output` (log bytes and lines) while it runs,
    then `ended` (how it ended, the small files it wrote). `data` holds the shipped data/ archive's ObjectRef, or nothing."""
    number = spec["number"]
    base = node_base(spec["experiment"])
    run_dir = base / f"run_{number}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    for name, content in files.items():
        (run_dir / name).write_bytes(content)
    data_dir = _node_data(base, spec, data)
    mode, _ = resolve_mode(spec["sandbox"], no_network=spec["no_network"])  # SandboxError: this node cannot do what was asked
    place = where()
    yield {"event": "started", **place, "sandbox": mode}

    python = shutil.which(spec["python"] or sys.executable) or spec["python"]
    log_path = run_dir / "output.log"
    pid_file = base / f".child-{number}.json"
    done = base / f".done-{number}-{os.getpid()}-{time.monotonic_ns()}"  # this attempt's: the guard removes it once it has seen it
    limits = Limits(**spec["limits"])
    cancel = threading.Event()
    said: queue.SimpleQueue = queue.SimpleQueue()
    ended: list[ProcessResult | BaseException] = []

    def train() -> None:
        try:
            with workspace(mode, run_dir, data_dir, data_is_shared=True) as home:
                env = child_environment(
                    os.environ, home=home, data_dir=str(base / "data"), extra_names=spec["sandbox_env"], tmpdir="/tmp" if mode == "bwrap" else None
                )
                gpus = "" if spec["hide_gpus"] else os.environ.get("CUDA_VISIBLE_DEVICES", "")
                env.update(spec["env"])
                env.update(share_environment(gpus.split(",") if gpus else [], spec["threads"], keep=spec["sandbox_env"]))
                argv = sandbox_command(
                    [python, "train.py"],
                    mode=mode,
                    run_dir=run_dir,
                    experiment_dir=base,
                    data_dir=base / "data",
                    home=home,
                    network=not spec["no_network"],
                    python=python,
                )
                ended.append(
                    run_script(
                        argv,
                        cwd=run_dir,
                        log_path=log_path,
                        limits=limits,
                        env=env,
                        on_output=lambda lines: said.put(("lines", lines)),
                        on_redraw=lambda line: said.put(("redraw", line)),
                        pid_file=pid_file,
                        cancel=cancel,
                        pid_note={"run": number},
                    )
                )
        except BaseException as exc:  # the generator raises it to the driver
            ended.append(exc)

    if mode != "bwrap":  # bwrap's PID namespace dies with the worker; without it, a guard does what the kernel does not
        _start_guard(pid_file, done, run_dir)
    trainer = threading.Thread(target=train, name=f"run-{number}", daemon=True)
    sent = 0
    try:
        trainer.start()
        while trainer.is_alive():
            trainer.join(STREAM_EVERY_S)
            message, sent = _news(log_path, sent, said)
            if message:
                yield message
        while True:  # the rest of the log: its tail, the dropped-bytes line of a capped one
            message, sent = _news(log_path, sent, said)
            if not message:
                break
            yield message
    except BaseException:  # cancelled by the driver (KeyboardInterrupt), or its driver died (SystemExit: the worker exits)
        cancel.set()
        trainer.join(KILL_GRACE_S + KILL_WITHIN_S)
        # What run_script has not killed yet (Ray's exit may have cut its thread short): the pid file's tree, and
        # whatever still works in the run folder.
        kill_leftover(pid_file)
        kill_in_folder(run_dir)
        raise
    finally:
        done.touch()
    outcome = ended[0] if ended else RuntimeError("train.py's thread ended without a result")
    try:
        if isinstance(outcome, BaseException):
            raise outcome
        back, left = _files_back(run_dir)
        yield {
            "event": "ended",
            "exit_code": outcome.exit_code,
            "duration_s": outcome.duration_s,
            "timed_out": outcome.timed_out,
            "stopped": outcome.stopped,
            "peak_memory_mb": outcome.peak_memory_mb,
            "log_bytes_dropped": outcome.log_bytes_dropped,
            "files": back,
            "left_behind": left,
        }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        kill_leftover(pid_file)


def _start_guard(pid_file: Path, done: Path, run_dir: Path) -> None:
    """Start GUARD as init's child, not the worker's: Ray kills a killed worker's children, and the guard must outlive
    it. It is started through a shell that exits at once, while the worker is for that moment no subreaper (run_script
    makes it one, and an orphan would come back to it)."""
    command = [sys.executable, "-c", GUARD, str(os.getpid()), str(pid_file), str(done), str(run_dir), str(GUARD_POLL_S)]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    try:
        subprocess.run(
            ["/bin/sh", "-c", '"$@" </dev/null >/dev/null 2>&1 &', "guard", *command],
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            start_new_session=True,
            check=False,
        )
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def kill_in_folder(folder: Path) -> None:
    """SIGKILL every process whose working folder lies in `folder` (the guard's last resort)."""
    root = str(folder.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + "/"):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def _news(log_path: Path, sent: int, said: queue.SimpleQueue) -> tuple[dict | None, int]:
    """What the run said since the last message: output.log's new bytes (it only grows) and its lines for the live view."""
    chunk = b""
    try:
        with open(log_path, "rb") as log:
            log.seek(sent)
            chunk = log.read(CHUNK_BYTES)
    except FileNotFoundError:
        pass
    lines: list[str] = []
    redraw = None
    while True:
        try:
            kind, value = said.get_nowait()
        except queue.Empty:
            break
        if kind == "lines":
            lines += value
            redraw = None
        else:
            redraw = value
    if not chunk and not lines and redraw is None:
        return None, sent
    return {"event": "output", "log": chunk, "lines": lines, "redraw": redraw}, sent + len(chunk)


def _node_data(base: Path, spec: dict, data: list) -> Path:
    """The experiment's data/ on this node: a link to SHARED_DATA, the shipped archive unpacked once per node, or empty."""
    base.mkdir(parents=True, exist_ok=True)
    link = base / "data"
    if spec["shared_data"]:
        target = Path(spec["shared_data"])
        if not target.is_dir():
            raise FileNotFoundError(f"SHARED_DATA={target} is not a folder on node {socket.gethostname()}")
    elif data:
        target = base / f"data-{spec['data_digest']}"
        with open(base / ".data.lock", "a") as lock:  # runs starting at once on one node unpack it once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.is_dir():
                import ray

                partial = Path(tempfile.mkdtemp(prefix=".data-", dir=base))
                with tarfile.open(fileobj=io.BytesIO(ray.get(data[0])), mode="r:") as archive:
                    archive.extractall(partial, filter="data")
                partial.rename(target)
    else:
        target = base / "data-empty"
        target.mkdir(exist_ok=True)
    with open(base / ".data.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (link.is_symlink() and os.readlink(link) == str(target)):
            temporary = base / f".data-link-{os.getpid()}-{time.monotonic_ns()}"
            temporary.symlink_to(target)
            temporary.replace(link)
    return target


def _files_back(run_dir: Path) -> tuple[dict[str, bytes], list[str]]:
    """The files the run wrote that go back to the driver (relative path → bytes), and those left behind as too big."""
    back: dict[str, bytes] = {}
    left: list[str] = []
    total = 0
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        name = path.relative_to(run_dir).as_posix()
        if name in NOT_BROUGHT_BACK or name.startswith(".output.log."):
            continue
        size = path.stat().st_size
        if size > FILE_BACK_MAX_BYTES or total + size > FILES_BACK_MAX_BYTES:
            left.append(f"{name} ({size / 2**20:.1f} MiB)")
            continue
        back[name] = path.read_bytes()
        total += size
    return back, left
