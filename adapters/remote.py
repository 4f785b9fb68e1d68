"""What a Ray worker does for a run (EXECUTOR=ray): train.py in the node's own sandbox, within the limits, its output
streamed back to the driver as it grows.

This module runs on the cluster's nodes, shipped there by Ray (runtime_env py_modules: the `adapters` package), so it
needs nothing but the standard library and this package; Ray itself is imported only inside a task. On a node an
experiment has a folder in the temporary folder, `auto-ml-runner/<experiment>-<digest>/`, and each attempt at a run
a folder of its own in it, `.runner/<N>-<attempt>/` (what the sandbox shows as the experiment: `run_N/` and `data/`),
removed when the attempt ends: output.log has reached the driver by then, with metrics.json and the run's other
small files. The shipped data/ is unpacked once per node, in `.runner/data-<digest>/`.

Nothing outlives the run on the node: on a timeout, a limit or a cancel from the driver (a KeyboardInterrupt Ray
raises in the task; a SystemExit when its driver died) run_script kills train.py's whole tree. When the worker
process itself is killed, the kernel kills train.py (setpriv --pdeathsig), bwrap's PID namespace takes every
descendant with it, and without bwrap the guard (adapters.guard) kills what is left.
"""

from __future__ import annotations

import ctypes
import fcntl
import io
import os
import queue
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from adapters.grader import GRADE_LOG
from adapters.guard import kill_in_folder
from adapters.process import KILL_GRACE_S, KILL_WITHIN_S, PR_SET_CHILD_SUBREAPER, Limits, ProcessResult, check_limit_tools, kill_leftover, run_script
from adapters.sandbox import (
    SANDBOX_GID,
    SANDBOX_UID,
    SandboxError,
    child_environment,
    chown_tree,
    python_installation,
    resolve_mode,
    sandbox_command,
    share_environment,
    workspace,
)

STREAM_EVERY_S = 0.25
"""How often new output goes to the driver."""
HEARTBEAT_S = 10.0
"""The longest the driver goes without a message while the run is silent: how it tells a quiet run from a lost worker."""
CHUNK_BYTES = 4 * 2**20
"""The most log bytes in one message to the driver."""
FILE_BACK_MAX_BYTES = 8 * 2**20
"""A file the run wrote comes back to the driver up to this size (metrics.json, a confusion matrix); bigger ones stay behind."""
FILES_BACK_MAX_BYTES = 64 * 2**20
"""All the files that come back together, at most."""
DRIVER_FILES = ("train.py", "output.log", "result.json", "worker.json", GRADE_LOG)
"""Files of the run folder that are the driver's own: what the run wrote under these names never comes back."""


def node_base(experiment: str) -> Path:
    """The node's folder for an experiment's runs and data."""
    return Path(tempfile.gettempdir()) / "auto-ml-runner" / experiment


def probe(asked: dict) -> dict:
    """What this node can do for the runs (a task pinned to each node at start): the sandbox, the limits' tools,
    TRAIN_PYTHON, SHARED_DATA; `problems` says, one line each, what stops it."""
    problems = []
    try:
        check_limit_tools()
    except Exception as exc:
        problems.append(str(exc))
    python = asked["python"] or sys.executable
    if not shutil.which(python):
        problems.append(f"the Python that runs train.py ({python}) is not there (TRAIN_PYTHON must name it on every node)")
    if asked["shared_data"] and not Path(asked["shared_data"]).is_dir():
        problems.append(f"SHARED_DATA={asked['shared_data']} is not a folder there (every node must mount it at that path)")
    try:
        mode, _ = resolve_mode(asked["sandbox"], no_network=asked["no_network"])
        if mode == "bwrap" and shutil.which(python):
            python_installation(shutil.which(python))
    except SandboxError as exc:
        mode = "none"
        problems.append(str(exc))
    return {"hostname": socket.gethostname(), "python": sys.version.split()[0], "sandbox": mode, "problems": problems}


def run_on_worker(spec: dict, files: dict[str, bytes], data: list) -> Iterator[dict]:
    """Run one train.py (a Ray generator task): yields `started` (where it runs), `output` (new log bytes and lines)
    while it runs, `alive` when it has been silent a while, then `ended` (how it ended, the small files it wrote).
    `data` holds the shipped data/ archive's ObjectRef, or nothing. A node that cannot run it raises SettingsError."""
    attempt = _Attempt(spec)
    try:
        yield from attempt.run(files, data)
    finally:
        attempt.clean_up()


class _Attempt:
    """One attempt at a run on this node: its folders, its train.py in a thread, what goes back to the driver."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.number = spec["number"]
        self.base = node_base(spec["experiment"])
        token = f"{self.number}-{os.getpid()}-{time.monotonic_ns()}"
        self.private = self.base / ".runner"
        self.folder = self.private / token
        """What the sandbox shows as the experiment: this attempt's run folder and the data."""
        self.run_dir = self.folder / f"run_{self.number}"
        self.pid_file = self.private / f"child-{token}.json"
        self.done = self.private / f"done-{token}"
        self.log_path = self.run_dir / "output.log"
        self.cancel = threading.Event()
        self.said: queue.SimpleQueue = queue.SimpleQueue()
        """What run_script echoes for the live view: ("lines", [...]) and ("redraw", line)."""
        self.ended: list[ProcessResult | BaseException] = []
        self.guarded = False

    def run(self, files: dict[str, bytes], data: list) -> Iterator[dict]:
        self.run_dir.mkdir(parents=True)
        for name, content in files.items():
            (self.run_dir / name).write_bytes(content)
        (self.folder / "data").symlink_to(_node_data(self.base, self.private, self.spec, data))
        mode, _ = resolve_mode(self.spec["sandbox"], no_network=self.spec["no_network"])  # SandboxError: not on this node
        yield {"event": "started", **_where(), "sandbox": mode}
        if mode != "bwrap":  # bwrap's PID namespace dies with the worker; without it, a guard does what the kernel does not
            self._start_guard()
            self.guarded = True
        trainer = threading.Thread(target=self._train, args=(mode,), name=f"run-{self.number}", daemon=True)
        sent, heard = 0, time.monotonic()
        try:
            trainer.start()
            while trainer.is_alive():
                trainer.join(STREAM_EVERY_S)
                message, sent = self._news(sent)
                if message is None and time.monotonic() - heard > HEARTBEAT_S:
                    message = {"event": "alive"}
                if message is not None:
                    heard = time.monotonic()
                    yield message
            while (news := self._news(sent))[0] is not None:  # the rest: its tail, the dropped-bytes line of a capped log
                message, sent = news
                yield message
        except BaseException:  # cancelled by the driver (KeyboardInterrupt), or its driver died (SystemExit: the worker exits)
            self.cancel.set()
            trainer.join(KILL_GRACE_S + KILL_WITHIN_S)
            raise
        outcome = self.ended[0] if self.ended else RuntimeError("train.py's thread ended without a result")
        if isinstance(outcome, BaseException):
            raise outcome
        back, left = _files_back(self.run_dir)
        yield {"event": "ended", **asdict(outcome), "files": back, "left_behind": left}

    def clean_up(self) -> None:
        """Whatever run_script has not killed (Ray's exit may have cut its thread short): the pid file's tree, and
        whatever still works in the attempt's folder; then the folder goes, and the guard is told."""
        kill_leftover(self.pid_file)
        kill_in_folder(self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.guarded:
            self.done.touch()

    def _train(self, mode: str) -> None:
        spec = self.spec
        data_dir = self.folder / "data"
        python = shutil.which(spec["python"] or sys.executable) or spec["python"]
        try:
            with workspace(mode, self.run_dir, data_dir, data_is_shared=True) as home:
                env = child_environment(
                    os.environ, home=home, data_dir=str(data_dir), extra_names=spec["sandbox_env"], tmpdir="/tmp" if mode == "bwrap" else None
                )
                env.update(spec["env"])
                gpus = "" if spec["hide_gpus"] else os.environ.get("CUDA_VISIBLE_DEVICES", "")  # Ray's, for this task
                env.update(share_environment(gpus.split(",") if gpus else [], spec["threads"], keep=spec["sandbox_env"]))
                argv = sandbox_command(
                    [python, "train.py"],
                    mode=mode,
                    run_dir=self.run_dir,
                    experiment_dir=self.folder,
                    data_dir=data_dir,
                    home=home,
                    network=not spec["no_network"],
                    python=python,
                )
                result = run_script(
                    argv,
                    cwd=self.run_dir,
                    log_path=self.log_path,
                    limits=Limits(**spec["limits"]),
                    env=env,
                    on_output=lambda lines: self.said.put(("lines", lines)),
                    on_redraw=lambda line: self.said.put(("redraw", line)),
                    pid_file=self.pid_file,
                    cancel=self.cancel,
                    pid_note={"run": self.number},
                )
            self.ended.append(result)
        except BaseException as exc:  # the generator raises it to the driver
            self.ended.append(exc)

    def _news(self, sent: int) -> tuple[dict | None, int]:
        """What the run said since `sent` bytes: output.log's new bytes (it only grows) and its lines for the live view."""
        chunk = b""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(sent)
                chunk = log.read(CHUNK_BYTES)
        except FileNotFoundError:
            pass
        lines: list[str] = []
        redraw = None
        while True:
            try:
                kind, value = self.said.get_nowait()
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

    def _start_guard(self) -> None:
        """Start the guard as init's child, not the worker's: Ray kills a killed worker's children, and the guard must
        outlive it. It goes through a shell that exits at once, while the worker is for that moment no subreaper
        (run_script makes it one, and an orphan would come back to it)."""
        command = [sys.executable, "-m", "adapters.guard", str(os.getpid()), str(self.pid_file), str(self.done), str(self.folder)]
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


def _where() -> dict:
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


def _node_data(base: Path, private: Path, spec: dict, data: list) -> Path:
    """The experiment's data on this node: SHARED_DATA as it is, the shipped archive unpacked once per node (handed to
    the sandbox's user, as the runs on the node share it), or an empty folder."""
    if spec["shared_data"]:
        shared = Path(spec["shared_data"])
        if not shared.is_dir():
            raise SandboxError(f"SHARED_DATA={shared} is not a folder on node {socket.gethostname()}")
        return shared
    private.mkdir(parents=True, exist_ok=True)
    target = private / (f"data-{spec['data_digest']}" if data else "data-empty")
    with open(private / "data.lock", "a") as lock:  # runs starting at once on one node unpack it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            partial = Path(tempfile.mkdtemp(prefix="data-partial-", dir=private))
            if data:
                import ray

                with tarfile.open(fileobj=io.BytesIO(ray.get(data[0])), mode="r:") as archive:
                    archive.extractall(partial, filter="data")
            if os.geteuid() == 0:
                chown_tree(partial, SANDBOX_UID, SANDBOX_GID)
            partial.rename(target)
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
        if name in DRIVER_FILES or name.startswith((".output.log.", "output.interrupted-")):
            continue
        size = path.stat().st_size
        if size > FILE_BACK_MAX_BYTES or total + size > FILES_BACK_MAX_BYTES:
            left.append(f"{name} ({size / 2**20:.1f} MiB)")
            continue
        back[name] = path.read_bytes()
        total += size
    return back, left
