"""The Ray backend of the executor (EXECUTOR=ray): the runner stays the driver, and each run goes to the cluster as a
Ray task with its GPUs (num_gpus = GPUS_PER_RUN) and CPUs (num_cpus = CPUS_PER_RUN). Ray places the tasks; the runner
keeps the search, the checkpoint and the files.

The executor (adapters.executor) runs a Ray job as it runs a local one, in a thread of its own: the job submits a
generator task, writes the output that streams back into run_N/output.log as it comes (so the live view, the metrics
and LOG_MAX_MB work as locally), and records the run when it ends. What the worker does is adapters.remote.

Nothing runs on after the runner: a timeout is the worker's own (run_script there); a cancel (a stop rule, Ctrl-C)
reaches the task as a KeyboardInterrupt that kills train.py's tree there; when the driver dies, Ray ends its tasks
and their workers, and train.py's tree dies with its worker (see adapters.remote). A Ray instance of the runner's
own (no RAY_ADDRESS) is the runner's child and shares its fate.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import adapters
from adapters.errors import SettingsError
from adapters.executor import Job
from adapters.files import ExperimentFiles, write_atomic
from adapters.logs import summarize_log
from adapters.machine import cpu_count, gpu_devices
from adapters.process import KILL_GRACE_S, KILL_WITHIN_S, ProcessResult, RunCancelled, cancel_requested
from adapters.sandbox import SECRET_NAME
from adapters.training import Ended, child_note, judge, prepare_run, record_ended, run_limits, started_event, write_record
from settings import Settings
from state import InFlight

RAY_HINT = "pip install -e '.[ray]'"
PROBE_TIMEOUT_S = 120.0
"""How long the check at start waits for every node to answer (a busy cluster schedules the probes late)."""
POLL_S = 0.2
CANCEL_GRACE_S = KILL_GRACE_S + KILL_WITHIN_S + 10.0
"""How long a cancelled task has to kill its train.py and end before it is cancelled by force."""
LOST_AFTER_S = 120.0
"""Silence from a started run's worker after which it counts as lost (a live one says something every HEARTBEAT_S)."""


def import_ray():
    """Ray, or SettingsError with the install command."""
    try:
        import ray
    except ImportError:
        raise SettingsError(f"EXECUTOR=ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


@dataclass
class Cluster:
    """This process's connection to Ray, what its nodes said at start, and what was shipped for each experiment."""

    address: str
    gpus: int = 0
    """The most GPUs one node has: 0 makes every run a CPU run."""
    data: dict[Path, tuple[str, object | None]] = field(default_factory=dict)
    """Experiment folder → the digest of its shipped data/ and its ObjectRef (None: nothing shipped)."""
    warnings: list[str] = field(default_factory=list)
    """What the runs should be told once: a node without bwrap under SANDBOX=auto, links in data/ left out."""
    warned: bool = False


_CLUSTER: Cluster | None = None
_LOCK = threading.Lock()


def connect(settings: Settings) -> Cluster:
    """Join the cluster at RAY_ADDRESS, or start a Ray instance of the runner's own (from the main thread only: Ray
    ties it to the life of the thread that starts it); once per process."""
    global _CLUSTER
    ray = import_ray()
    with _LOCK:
        if _CLUSTER is not None and ray.is_initialized():
            return _CLUSTER
        if not settings.ray_address and not _main_thread():
            raise SettingsError("EXECUTOR=ray outside the runner's command line (LangGraph Studio, a graph of your own) needs RAY_ADDRESS: a running cluster")
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # a cancelled run's task error is the runner's to tell, not Ray's
        common = {
            "runtime_env": {"py_modules": [str(Path(adapters.__file__).parent)]},  # the worker's half: adapters.remote
            "log_to_driver": False,
            "logging_level": "ERROR",
        }
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
        try:
            if settings.ray_address:
                try:
                    ray.init(address=settings.ray_address, **common)
                except Exception as exc:
                    raise SettingsError(f"cannot join the Ray cluster at RAY_ADDRESS={settings.ray_address}: {_first_line(exc)}") from None
            else:
                _start_local(ray, settings, common)
        finally:
            for signum, handler in handlers.items():  # Ray sets its own; the runner's stop the runs and save the state
                signal.signal(signum, handler)
        _CLUSTER = Cluster(settings.ray_address or "local")
        return _CLUSTER


def _start_local(ray, settings: Settings, common: dict) -> None:
    """A Ray instance of the experiment's own, on this machine's CPUs and GPUs (GPUS), started without the LLM keys in
    its environment: its processes, and so the workers, are this process's children and would inherit them."""
    devices = gpu_devices(settings.gpus)
    hidden = {name: os.environ.pop(name) for name in list(os.environ) if SECRET_NAME.search(name) and name not in settings.sandbox_env}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)  # Ray's GPU ids are these, and each task gets its own
    try:
        ray.init(address="local", num_cpus=cpu_count(), num_gpus=len(devices), include_dashboard=False, **common)
    except Exception as exc:
        raise SettingsError(f"cannot start a local Ray instance: {_first_line(exc)}") from None
    finally:
        os.environ.update(hidden)
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible


def disconnect() -> None:
    """Leave the cluster (an instance of the runner's own stops)."""
    global _CLUSTER
    with _LOCK:
        if _CLUSTER is None:
            return
        _CLUSTER = None
        import ray

        ray.shutdown()


def check(settings: Settings, root: Path) -> Cluster:
    """At start, before any LLM call: connect; make sure a node has room for a run (CPUS_PER_RUN, GPUS_PER_RUN); ask
    every node that has whether it can run train.py as the settings say (the sandbox, the limits' tools, TRAIN_PYTHON,
    SHARED_DATA); ship data/. SettingsError, one line, for what cannot work."""
    ray = import_ray()
    cluster = connect(settings)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from adapters import remote

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cluster.gpus = max((int(node.get("Resources", {}).get("GPU", 0)) for node in nodes), default=0)
    gpus = gpus_per_run(settings, cluster)
    hosts = [node for node in nodes if node["Resources"].get("CPU", 0) >= settings.cpus_per_run and node["Resources"].get("GPU", 0) >= gpus]
    if not hosts:
        needs = _count(settings.cpus_per_run, "CPU") + (f" and {_count(gpus, 'GPU')}" if gpus else "")
        raise SettingsError(f"no node of the Ray cluster at {cluster.address} has {needs} for a run (CPUS_PER_RUN, GPUS_PER_RUN): no run could start")
    asked = _asked_of_nodes(settings)
    probe = ray.remote(remote.probe)
    pending = {
        probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False), name="auto-ml-runner probe").remote(
            asked
        ): node
        for node in hosts
    }
    try:
        answers = ray.get(list(pending), timeout=PROBE_TIMEOUT_S)
    except Exception as exc:
        raise SettingsError(f"the Ray cluster's nodes did not answer the runner's check: {_first_line(exc)}") from None
    for answer, node in zip(answers, pending.values(), strict=True):
        if answer["problems"]:
            raise SettingsError(f"Ray node {answer['hostname']} ({node.get('NodeManagerAddress', '')}) cannot run train.py: {answer['problems'][0]}")
        if settings.sandbox == "auto" and answer["sandbox"] == "none":
            cluster.warnings.append(f"train.py runs without a sandbox on Ray node {answer['hostname']} (no working bwrap there)")
    ship_data(settings, root, cluster)
    return cluster


def ship_data(settings: Settings, root: Path, cluster: Cluster) -> None:
    """data/ into Ray's object store once per experiment (each node unpacks it once), unless SHARED_DATA is used;
    SettingsError when it is over SHIP_DATA_MAX_MB. Links pointing outside data/ are left out, and said so."""
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
    outside: list[str] = []

    def within(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.issym() and not (data / Path(info.name).parent / info.linkname).resolve().is_relative_to(data.resolve()):
            outside.append(info.name)
            return None
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        archive.add(data, arcname=".", filter=within)
    if outside:
        cluster.warnings.append(f"data/: {len(outside)} link(s) pointing outside it were not shipped to the Ray nodes (e.g. {outside[0]})")
    packed = buffer.getvalue()
    import ray

    cluster.data[root] = (hashlib.sha256(packed).hexdigest()[:16], ray.put(packed))


def ray_job(files: ExperimentFiles, settings: Settings, flight: InFlight, mode: str) -> Job:
    """The job that runs `flight`'s train.py as a Ray task: its output streams into run_N/output.log, and its record
    (with the node and GPUs it ran on) is written when it ends, as a local job's."""
    prepare_run(files, flight["number"])
    cluster = _CLUSTER if _CLUSTER is not None and files.root in _CLUSTER.data else check(settings, files.root)
    return Job(number=flight["number"], start=_RayRun(files, settings, flight, cluster, mode).start, devices=0)


class _RayRun:
    """One run as a Ray task, from the driver's side: submitted when the executor starts the job, its messages
    written into the run folder as they come, its record written when it ends."""

    def __init__(self, files: ExperimentFiles, settings: Settings, flight: InFlight, cluster: Cluster, mode: str):
        self.files, self.settings, self.flight, self.cluster = files, settings, flight, cluster
        self.number = flight["number"]
        self.run_dir = files.run_dir(self.number)
        digest, self.data = cluster.data[files.root]
        self.spec = {
            **_asked_of_nodes(settings),
            "sandbox": mode,  # as asked, or bwrap for a graded experiment (training.sandbox_for)
            "number": self.number,
            "experiment": experiment_key(files.root),
            "data_digest": digest,
            "sandbox_env": list(settings.sandbox_env),
            "env": {name: os.environ[name] for name in settings.sandbox_env if name in os.environ},  # named on purpose: they go along
            "hide_gpus": settings.gpus == "none",
            "threads": settings.cpus_per_run,
            "limits": asdict(run_limits(settings)),
        }
        self.options = {
            "name": task_name(files.root, self.number),
            "num_gpus": gpus_per_run(settings, cluster),
            "num_cpus": settings.cpus_per_run,
            "max_retries": 0,
            "retry_exceptions": False,
        }
        self.place: dict = {}
        """What the worker said when the run started: node, GPUs, worker process, sandbox."""

    def start(self, devices: list[str], cancel: threading.Event, emit: Callable[[dict], None]) -> Ended:
        import ray

        from adapters import remote

        if self.cluster.warnings and not self.cluster.warned:
            self.cluster.warned = True
            for warning in self.cluster.warnings:
                emit({"event": "warning", "message": warning})
        script = {"train.py": (self.run_dir / "train.py").read_bytes()}
        task = ray.remote(remote.run_on_worker).options(**self.options).remote(self.spec, script, [self.data] if self.data is not None else [])
        begun = time.monotonic()
        try:
            end, failure, cancelled = self._follow(ray, task, cancel, emit)
        finally:
            self.files.child_file(self.number).unlink(missing_ok=True)
        duration = time.monotonic() - begun
        if end is None and cancelled:  # a run that ended just before its cancel is recorded as it ended
            if cancel_requested():
                raise RunCancelled(f"run {self.number} interrupted on the Ray cluster")
            return Ended(ProcessResult(None, duration, False, "cancelled"), None, None)
        gpus, node = self.place.get("gpus", []), self.place.get("hostname", "")
        if end is None:
            log = summarize_log(self.run_dir / "output.log", self.run_dir / "metrics.json")  # written here: nothing to scrub
            error = failure or "the Ray task ended without a result"
            judged = judge(self.files, self.settings, self.number, "failed", error, log.metrics)
            return Ended(ProcessResult(None, duration, False), write_record(self.files, self.flight, None, duration, judged, emit, gpus, node), log)
        left = end.pop("left_behind") + self._bring_back(end.pop("files"))
        if left:
            write_atomic(self.run_dir / "worker.json", json.dumps({**self.place, "left_behind": left}, indent=2) + "\n")
        return record_ended(self.files, self.settings, self.flight, ProcessResult(**end), emit, gpus=gpus, node=node, cancel=cancel)

    def _follow(self, ray, task, cancel: threading.Event, emit: Callable[[dict], None]) -> tuple[dict | None, str, bool]:
        """Take the task's messages until it ends: (its `ended` message or None, why it failed, whether it was cancelled)."""
        end, failure = None, ""
        cancelled_at = None
        heard = None
        with open(self.run_dir / "output.log", "wb") as log:
            while True:
                if cancelled_at is None and (cancel.is_set() or cancel_requested()):
                    _cancel(ray, task, force=False)
                    cancelled_at = time.monotonic()
                elif cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                    _cancel(ray, task, force=True)
                    break
                if heard is not None and cancelled_at is None and time.monotonic() - heard > LOST_AFTER_S:
                    failure = f"the Ray worker on {self.place.get('hostname')} went silent for {LOST_AFTER_S:.0f} s: its run was cancelled"
                    _cancel(ray, task, force=True)
                    break
                ready, _ = ray.wait([task], timeout=POLL_S)
                if not ready:
                    continue
                try:
                    message = ray.get(next(task))
                except StopIteration:
                    break
                except Exception as exc:  # the task failed, was cancelled, or its node or worker was lost
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, SettingsError):  # the node cannot run train.py as asked: no run would
                        raise SettingsError(f"Ray node {self.place.get('hostname', '?')}: {cause}") from None
                    if cancelled_at is None:
                        failure = f"the Ray task failed: {_first_line(cause or exc)}"
                    break
                heard = time.monotonic()
                if message["event"] == "started":
                    self._started(message, emit)
                elif message["event"] == "output":
                    log.write(message["log"])
                    log.flush()
                    if message["lines"]:
                        emit({"event": "output", "run": self.number, "lines": message["lines"]})
                    if message["redraw"] is not None:
                        emit({"event": "output_redraw", "run": self.number, "line": message["redraw"]})
                elif message["event"] == "ended":
                    end = {name: value for name, value in message.items() if name != "event"}
        return end, failure, cancelled_at is not None

    def _started(self, message: dict, emit: Callable[[dict], None]) -> None:
        """The run started on a node: worker.json says where, child-N.json tells `status` while it runs."""
        self.place = {name: value for name, value in message.items() if name != "event"}
        event = started_event(self.flight, self.place["gpus"], self.place["hostname"])
        write_atomic(self.run_dir / "worker.json", json.dumps(self.place, indent=2) + "\n")
        write_atomic(self.files.child_file(self.number), json.dumps(child_note(event)))
        emit(event)

    def _bring_back(self, files: dict[str, bytes]) -> list[str]:
        """Write the files the run wrote into its folder here; those that cannot be (a name the driver owns, an error), by name."""
        from adapters.remote import DRIVER_FILES

        left = []
        run_dir = self.run_dir.resolve()
        for name, content in files.items():
            target = (run_dir / name).resolve()
            if run_dir not in target.parents or name in DRIVER_FILES or name.startswith("output.interrupted-"):
                left.append(f"{name} (a name the runner keeps for itself)")
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            except OSError as exc:
                left.append(f"{name} ({exc.strerror or exc})")
        return left


def gpus_per_run(settings: Settings, cluster: Cluster) -> int:
    """A run's num_gpus: GPUS_PER_RUN, or 0 with GPUS=none or on a cluster without GPUs."""
    return 0 if settings.gpus == "none" or not cluster.gpus else settings.gpus_per_run


def share_text(settings: Settings) -> str:
    """What one run gets on the cluster, as the code model should know it."""
    gpus = gpus_per_run(settings, _CLUSTER) if _CLUSTER is not None else 0 if settings.gpus == "none" else settings.gpus_per_run
    devices = f"{_count(gpus, 'GPU')} of its own (CUDA_VISIBLE_DEVICES; numbered from 0 inside the run)" if gpus else "no GPU"
    at_once = f"; up to {settings.workers} runs train at once" if settings.workers > 1 else ""
    return f"Each run is a Ray task on a node of a cluster: it gets {_count(settings.cpus_per_run, 'CPU thread')} (OMP_NUM_THREADS) and {devices}{at_once}."


def task_name(root: Path, number: int) -> str:
    """Run `number`'s Ray task name, `<experiment>-<digest>/run-N`: `ray list tasks --filter "name=..."` finds it."""
    return f"{experiment_key(root)}/run-{number}"


def experiment_key(root: Path) -> str:
    """The experiment's name on the nodes: its folder's name and a digest of this machine and folder, so that two
    runners never share one."""
    digest = hashlib.sha256(f"{socket.gethostname()}:{root.resolve()}".encode()).hexdigest()[:12]
    return f"{root.name}-{digest}"


def _asked_of_nodes(settings: Settings) -> dict:
    """What each node must be able to do, as remote.probe and remote.run_on_worker read it."""
    return {"python": settings.train_python, "sandbox": settings.sandbox, "no_network": settings.no_network, "shared_data": settings.shared_data}


def _cancel(ray, task, force: bool) -> None:
    try:
        ray.cancel(task, force=force)
    except Exception:  # it ended meanwhile, or the cluster is gone: nothing is left to cancel
        pass


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    return lines[-1] if "Traceback" in text else lines[0]
