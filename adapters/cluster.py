"""Runs as Ray tasks (EXECUTOR=ray): the runner stays the driver, and each run goes to the cluster as a task with its
GPUs (num_gpus = GPUS_PER_RUN) and CPUs (num_cpus = CPUS_PER_RUN). Ray places the tasks; the runner keeps the search,
the checkpoint and the files.

The executor (adapters.executor) runs a Ray job like a local one: its thread submits the task, writes the output
that streams back into run_N/output.log as it comes (the live view, the metrics and LOG_MAX_MB work as locally), and
records the run when it ends. What the worker does is adapters.remote.

Nothing runs on after the runner: a timeout is the worker's own (run_script there), a cancel (a stop rule, Ctrl-C)
reaches the task as a KeyboardInterrupt that kills train.py's tree there, and when the driver dies Ray ends the job's
tasks, whose trains die with their worker (see adapters.remote). A Ray instance of the experiment's own (no
RAY_ADDRESS) is the driver's child and shares its fate.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import adapters
from adapters.errors import SettingsError
from adapters.executor import Job
from adapters.files import ExperimentFiles, write_atomic
from adapters.logs import summarize_log
from adapters.machine import gpu_devices
from adapters.process import KILL_GRACE_S, ProcessResult, RunCancelled, cancel_requested
from adapters.sandbox import SECRET_NAME
from adapters.training import MAX_TASKS, Ended, _stop_reason, prepare_run, write_record
from settings import Settings
from state import InFlight

RAY_HINT = "pip install -e '.[ray]'"
PROBE_TIMEOUT_S = 120.0
"""How long the check at start waits for every node to answer (a busy cluster schedules the probes late)."""
POLL_S = 0.2
CANCEL_GRACE_S = KILL_GRACE_S + 10.0
"""How long a cancelled task has to kill its train.py and end before it is force-cancelled."""
LOST_AFTER_S = 120.0
"""Silence past the run's timeout (and the kill's grace) after which the worker counts as lost."""


def import_ray():
    """Ray, or SettingsError with the install command."""
    try:
        import ray
    except ImportError:
        raise SettingsError(f"EXECUTOR=ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


class Cluster:
    """This process's connection to Ray, and what it shipped for each experiment."""

    def __init__(self, address: str, local: bool):
        self.address = address
        self.local = local
        """Whether the Ray instance is the runner's own (started for the experiment, stopped with it)."""
        self.data: dict[Path, tuple[str, object | None]] = {}
        """Experiment folder → the digest of its shipped data/ and its ObjectRef (None: nothing to ship, or SHARED_DATA)."""
        self.nodes: list[dict] = []
        """What each node answered to the probe at start."""


_CLUSTER: Cluster | None = None
_LOCK = threading.Lock()


def connect(settings: Settings) -> Cluster:
    """Join the cluster at RAY_ADDRESS, or start a Ray instance of the runner's own; once per process."""
    global _CLUSTER
    ray = import_ray()
    with _LOCK:
        if _CLUSTER is not None and ray.is_initialized():
            return _CLUSTER
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # a cancelled run's task error is the runner's to tell, not Ray's
        common = {
            "runtime_env": {"py_modules": [str(Path(adapters.__file__).parent)]},  # the worker's half, adapters.remote
            "log_to_driver": False,
            "logging_level": "ERROR",
            "configure_logging": True,
        }
        if settings.ray_address:
            try:
                ray.init(address=settings.ray_address, **common)
            except Exception as exc:
                raise SettingsError(f"cannot join the Ray cluster at RAY_ADDRESS={settings.ray_address}: {_first_line(exc)}") from None
            _CLUSTER = Cluster(settings.ray_address, local=False)
        else:
            devices = gpu_devices(settings.gpus)
            # The instance is this process's child: its processes (and so the workers) must not inherit an LLM key.
            hidden = {name: os.environ.pop(name) for name in list(os.environ) if SECRET_NAME.search(name) and name not in settings.sandbox_env}
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)  # Ray's GPU ids are these, and each task gets its own
            try:
                ray.init(address="local", num_cpus=os.cpu_count() or 1, num_gpus=len(devices), include_dashboard=False, **common)
            except Exception as exc:
                raise SettingsError(f"cannot start a local Ray instance: {_first_line(exc)}") from None
            finally:
                os.environ.update(hidden)
                if visible is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = visible
            _CLUSTER = Cluster("local", local=True)
        return _CLUSTER


def disconnect() -> None:
    """Leave the cluster (a local instance stops)."""
    global _CLUSTER
    with _LOCK:
        if _CLUSTER is None:
            return
        _CLUSTER = None
        import ray

        ray.shutdown()


def check(settings: Settings, root: Path) -> Cluster:
    """At start, before any LLM call: connect, ask every node whether it can run train.py as the settings say (the
    sandbox, the limits' tools, TRAIN_PYTHON, SHARED_DATA), check that a node has the GPUs a run asks for, and ship
    data/. SettingsError, one line, for what cannot work."""
    ray = import_ray()
    cluster = connect(settings)
    from adapters import remote

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if not nodes:
        raise SettingsError(f"the Ray cluster at {cluster.address} has no live node")
    gpus = max(int(node.get("Resources", {}).get("GPU", 0)) for node in nodes)
    if _gpus_per_run(settings) > gpus:
        raise SettingsError(f"GPUS_PER_RUN={settings.gpus_per_run} but no node of the Ray cluster has more than {gpus} GPUs: no run could start")
    spec = _probe_spec(settings)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(remote.probe)
    pending = {
        probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False), name="probe").remote(spec): node
        for node in nodes
    }
    try:
        answers = ray.get(list(pending), timeout=PROBE_TIMEOUT_S)
    except Exception as exc:
        raise SettingsError(f"the Ray cluster's nodes did not answer the runner's check: {_first_line(exc)}") from None
    for answer, node in zip(answers, pending.values(), strict=True):
        answer["node_ip"] = node.get("NodeManagerAddress", "")
        if answer["problems"]:
            raise SettingsError(f"Ray node {answer['hostname']} ({answer['node_ip']}) cannot run train.py: {answer['problems'][0]}")
    cluster.nodes = answers
    ship_data(settings, root, cluster)
    return cluster


def ship_data(settings: Settings, root: Path, cluster: Cluster) -> None:
    """data/ into Ray's object store once per experiment (each node unpacks it once), unless SHARED_DATA is used;
    SettingsError when it is over SHIP_DATA_MAX_MB."""
    if root in cluster.data:
        return
    data = root / "data"
    if settings.shared_data or not data.is_dir() or not any(data.iterdir()):
        cluster.data[root] = ("", None)
        return
    size = sum(path.stat().st_size for path in data.rglob("*") if path.is_file() and not path.is_symlink())
    if size > settings.ship_data_max_mb * 2**20:
        raise SettingsError(
            f"{data} holds {size / 2**20:.0f} MiB, over SHIP_DATA_MAX_MB={settings.ship_data_max_mb}: put it on a filesystem every node mounts and"
            " set SHARED_DATA (--shared-data) to its path, or raise SHIP_DATA_MAX_MB"
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        archive.add(data, arcname=".", filter=lambda info: None if info.issym() or info.islnk() else info)
    packed = buffer.getvalue()
    import ray

    cluster.data[root] = (hashlib.sha256(packed).hexdigest()[:16], ray.put(packed))


def ray_job(files: ExperimentFiles, settings: Settings, flight: InFlight, mode: str) -> Job:
    """The job that runs `flight`'s train.py as a Ray task: its output streams into run_N/output.log, and its record
    (with the node and GPUs it ran on) is written when it ends, as a local job's."""
    ray = import_ray()
    from adapters import remote

    number = flight["number"]
    run_dir = files.run_dir(number)
    log_path = run_dir / "output.log"
    prepare_run(files, number)
    cluster = check(settings, files.root) if _CLUSTER is None else _CLUSTER
    if files.root not in cluster.data:
        ship_data(settings, files.root, cluster)
    digest, data = cluster.data[files.root]
    spec = {
        **_probe_spec(settings),
        "number": number,
        "experiment": _experiment_key(files.root),
        "data_digest": digest,
        "sandbox_env": list(settings.sandbox_env),
        "env": {name: os.environ[name] for name in settings.sandbox_env if name in os.environ},  # named on purpose: their values go along
        "hide_gpus": settings.gpus == "none",
        "threads": settings.cpus_per_run,
        "limits": {
            "timeout_s": settings.timeout_seconds,
            "memory_mb": settings.memory_limit_mb,
            "file_size_mb": settings.file_size_limit_mb,
            "max_processes": MAX_TASKS,
            "log_max_bytes": settings.log_max_mb * 2**20,
        },
    }
    shipped = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file() and path.name == "train.py"}
    task_options = {
        "name": task_name(files.root, number),
        "num_gpus": _gpus_per_run(settings),
        "num_cpus": settings.cpus_per_run,
        "max_retries": 0,
        "retry_exceptions": False,
    }

    def start(devices: list[str], cancel: threading.Event, emit: Callable[[dict], None]) -> Ended:
        task = ray.remote(remote.run_on_worker).options(**task_options).remote(spec, shipped, [data] if data is not None else [])
        place: dict = {}
        end: dict | None = None
        failure = ""
        cancelled_at = None
        began = time.monotonic()
        with open(log_path, "wb") as log:
            while True:
                if cancelled_at is None and (cancel.is_set() or cancel_requested()):
                    ray.cancel(task)
                    cancelled_at = time.monotonic()
                elif cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                    ray.cancel(task, force=True)
                    break
                if place and cancelled_at is None and time.monotonic() - began > settings.timeout_seconds + KILL_GRACE_S + LOST_AFTER_S:
                    failure = f"no word from the Ray worker on {place.get('hostname')} for {LOST_AFTER_S:.0f} s past the run's timeout: cancelled"
                    ray.cancel(task, force=True)
                    break
                ready, _ = ray.wait([task], timeout=POLL_S)
                if not ready:
                    continue
                try:
                    message = ray.get(next(task))
                except StopIteration:
                    break
                except Exception as exc:  # the task failed, was cancelled, or its node or worker was lost
                    if cancelled_at is None:
                        failure = f"the Ray task failed: {_first_line(getattr(exc, 'cause', None) or exc)}"
                    break
                if message["event"] == "started":
                    place = message
                    began = time.monotonic()
                    emit(
                        {
                            "event": "run_started",
                            "run": number,
                            "operator": flight["operator"],
                            "parent": flight["parent"],
                            "gpus": place["gpus"],
                            "node": place["hostname"],
                            "started": round(time.time(), 3),
                        }
                    )
                    write_atomic(run_dir / "worker.json", _json(_where(place)))
                elif message["event"] == "output":
                    log.write(message["log"])
                    log.flush()
                    if message["lines"]:
                        emit({"event": "output", "run": number, "lines": message["lines"]})
                    if message["redraw"] is not None:
                        emit({"event": "output_redraw", "run": number, "line": message["redraw"]})
                elif message["event"] == "ended":
                    end = message
        if cancelled_at is not None:
            if cancel_requested():
                raise RunCancelled(f"run {number} interrupted on the Ray cluster")
            return Ended(ProcessResult(None, time.monotonic() - began, False, "cancelled"), None, None)
        gpus, node = place.get("gpus", []), place.get("hostname", "")
        if end is None:
            log = summarize_log(log_path, run_dir / "metrics.json")
            record = write_record(
                files,
                flight,
                "failed",
                None,
                time.monotonic() - began,
                log.metrics,
                failure or "the Ray task ended without a result",
                emit,
                gpus=gpus,
                node=node,
            )
            return Ended(ProcessResult(None, time.monotonic() - began, False), record, log)
        for name, content in end["files"].items():
            target = (run_dir / name).resolve()
            if run_dir.resolve() in target.parents:  # never outside the run folder, whatever name came back
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        if end["left_behind"]:
            write_atomic(run_dir / "worker.json", _json({**_where(place), "left_behind": end["left_behind"]}))
        result = ProcessResult(end["exit_code"], end["duration_s"], end["timed_out"], end["stopped"], end["peak_memory_mb"], end["log_bytes_dropped"])
        log = summarize_log(log_path, run_dir / "metrics.json")
        status = "timeout" if result.stopped == "timeout" else "ok" if result.exit_code == 0 and not result.stopped else "failed"
        error = _stop_reason(result, settings) or log.error
        record = write_record(files, flight, status, result.exit_code, result.duration_s, log.metrics, error, emit, gpus=gpus, node=node)
        return Ended(result, record, log)

    return Job(number=number, start=start, devices=0)


def task_name(root: Path, number: int) -> str:
    """Run `number`'s Ray task name, `<experiment>-<digest>/run-N`: `ray list tasks --filter "name=..."` finds it."""
    return f"{_experiment_key(root)}/run-{number}"


def _where(place: dict) -> dict:
    """run_N/worker.json: where the run went (node, GPUs, worker process, the sandbox there)."""
    return {name: value for name, value in place.items() if name != "event"}


def _probe_spec(settings: Settings) -> dict:
    return {"python": settings.train_python, "sandbox": settings.sandbox, "no_network": settings.no_network, "shared_data": settings.shared_data}


def _gpus_per_run(settings: Settings) -> int:
    return 0 if settings.gpus == "none" else settings.gpus_per_run if _cluster_gpus() else 0


def _cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def _experiment_key(root: Path) -> str:
    """The experiment's folder name on the nodes: this machine and folder, so that two runners never share one."""
    digest = hashlib.sha256(f"{socket.gethostname()}:{root.resolve()}".encode()).hexdigest()[:12]
    return f"{root.name}-{digest}"


def _json(value: dict) -> str:
    import json

    return json.dumps(value, indent=2) + "\n"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1] if "Traceback" in text else text.splitlines()[0]
