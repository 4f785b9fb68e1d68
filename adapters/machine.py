"""The machine train.py runs on, as the code model should know it: the interpreter, its ML packages, CPUs, memory and GPUs."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Mapping
from typing import TypedDict

from adapters.errors import SettingsError

ML_PACKAGES = (
    "numpy",
    "pandas",
    "polars",
    "scipy",
    "scikit-learn",
    "statsmodels",
    "torch",
    "torchvision",
    "torchaudio",
    "lightning",
    "xgboost",
    "lightgbm",
    "catboost",
    "jax",
    "tensorflow",
    "keras",
    "transformers",
    "datasets",
    "accelerate",
    "timm",
    "optuna",
    "matplotlib",
)
"""Distributions worth telling the code model about, in the order it is told them."""
CHECK_TIMEOUT_S = 20.0
"""How long the interpreter has to start and say its version."""
DESCRIBE_TIMEOUT_S = 60.0
"""How long the interpreter has to list its packages and, with torch, to import it and look for a usable GPU."""
TEXT_MAX_CHARS = 1000

# Run by the interpreter itself, isolated (-I) as train.py is in the sandbox: without PYTHONPATH or the user's site-packages.
# The first line comes at once, from the installed metadata; the second only after torch is imported, which may take long.
PROBE = r"""
import importlib.metadata, importlib.util, json, os, platform, re, sys
packages = {}
for name in json.loads(sys.argv[1]):
    try:
        packages[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
torch_cuda = None
if "torch" in packages:
    try:  # torch/version.py says which CUDA the build is for, without importing torch
        with open(os.path.join(os.path.dirname(importlib.util.find_spec("torch").origin), "version.py")) as version:
            found = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", version.read(), re.MULTILINE)
        torch_cuda = found.group(1) if found else None
    except Exception:
        pass
print(json.dumps({"python_version": platform.python_version(), "packages": packages, "torch_cuda": torch_cuda}), flush=True)
if torch_cuda:
    import torch
    print(json.dumps({"cuda_available": bool(torch.cuda.is_available())}), flush=True)
"""


class GPU(TypedDict):
    name: str
    memory_gib: float


class Machine(TypedDict):
    """What describe_machine() found; plain data, so that it can live in the checkpointed state."""

    python: str
    """The interpreter that runs train.py, as configured."""
    python_version: str
    """e.g. "3.11.7"; "unknown" when it did not answer in time."""
    packages: dict[str, str]
    """Version of each ML_PACKAGES distribution it can import, by name."""
    torch_cuda: str | None
    """The CUDA version torch was built for; None for a CPU-only torch, or no torch."""
    cuda_available: bool | None
    """Whether torch finds a usable GPU; None when not asked (no CUDA build) or not answered in time."""
    cpu_cores: int
    """The cores the runner, and so train.py, may run on."""
    ram_gib: float
    gpus: list[GPU]
    """Every GPU nvidia-smi lists; empty without nvidia-smi, or when it fails."""


def check_python(path: str) -> str:
    """The Python at `path` (a path, relative to here or with ~, or a name on PATH) as it names itself: its sys.executable,
    absolute; SettingsError when it is missing, not executable or does not run.

    Its own name, not the one given: a relative path would break in the run's folder, and a wrapper (pyenv's shims)
    would need its own installation in the sandbox, while the interpreter it starts is what runs train.py.
    """
    given = os.path.expanduser(path)
    found = os.path.abspath(given) if os.sep in given else shutil.which(given)
    if not found or not (os.path.isfile(found) and os.access(found, os.X_OK)):
        problem = "does not exist" if not found or not os.path.exists(found) else "is not an executable file"
        raise SettingsError(f"TRAIN_PYTHON (--python) {path} {problem}: set it to a Python interpreter, e.g. ~/venvs/torch/bin/python")
    try:
        done = subprocess.run(
            [found, "-I", "-c", "import platform, sys; print(platform.python_version(), sys.executable)"],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
            cwd="/",
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SettingsError(f"TRAIN_PYTHON (--python) {path} does not run Python ({exc})") from None
    version, _, executable = done.stdout.strip().partition(" ")
    if done.returncode != 0 or not version:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise SettingsError(f"TRAIN_PYTHON (--python) {path} does not run Python: {said[:200]}")
    return executable if os.path.isabs(executable) else found


def describe_machine(python: str) -> Machine:
    """The interpreter `python` (checked by check_python), its ML packages and the hardware; takes a few seconds, more with torch."""
    lines = _probe(shutil.which(python) or python)
    found = lines[0] if lines else {}
    return Machine(
        python=python,
        python_version=str(found.get("python_version", "unknown")),
        packages=dict(found.get("packages", {})),
        torch_cuda=found.get("torch_cuda"),
        cuda_available=lines[1].get("cuda_available") if len(lines) > 1 else None,
        cpu_cores=len(os.sched_getaffinity(0)),
        ram_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        gpus=gpus(),
    )


def machine_text(description: Machine) -> str:
    """A few lines for the code model's prompt, at most TEXT_MAX_CHARS:

    Python 3.11.7 at /usr/bin/python3
    Packages: numpy 2.1.0, scikit-learn 1.5.2, torch 2.5.1 (CUDA 12.4)
    Hardware: 16 CPU cores, 128 GiB RAM; GPUs: 1 × NVIDIA H200 (141 GiB)
    """
    packages = []
    for name, version in description["packages"].items():
        if name == "torch":
            cuda, usable = description.get("torch_cuda"), description.get("cuda_available")
            version += f" (CUDA {cuda}{', no usable GPU' if usable is False else ''})" if cuda else " (CPU only)"
        packages.append(f"{name} {version}")
    gpu_counts = Counter((gpu["name"], gpu["memory_gib"]) for gpu in description["gpus"])
    gpu_text = "GPUs: " + ", ".join(f"{count} × {name} ({memory:g} GiB)" for (name, memory), count in gpu_counts.items()) if gpu_counts else "no GPU"
    text = "\n".join(
        [
            f"Python {description['python_version']} at {description['python'][:200]}",
            f"Packages: {', '.join(packages) or 'none of the usual ML libraries (numpy, pandas, scikit-learn, torch…)'}",
            f"Hardware: {description['cpu_cores']} CPU cores, {description['ram_gib']:g} GiB RAM; {gpu_text}",
        ]
    )
    return text if len(text) <= TEXT_MAX_CHARS else text[: TEXT_MAX_CHARS - 1] + "…"


def gpus() -> list[GPU]:
    """Name and memory of every GPU nvidia-smi lists; empty without nvidia-smi, or when it fails (no driver, a timeout)."""
    command = shutil.which("nvidia-smi")
    if not command:
        return []
    try:
        query = [command, "--query-gpu=name,memory.total", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        name, _, memory = line.rpartition(",")  # "NVIDIA H200, 143771 MiB"
        try:
            mib = float(memory.split()[0])
        except (IndexError, ValueError):
            continue
        found.append(GPU(name=name.strip(), memory_gib=float(round(mib / 1024))))
    return found


def _probe(python: str) -> list[dict]:
    """The JSON lines PROBE printed within DESCRIBE_TIMEOUT_S; whatever it started is killed after."""
    try:
        child = subprocess.Popen(
            [python, "-I", "-c", PROBE, json.dumps(ML_PACKAGES)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd="/",
            start_new_session=True,
        )
    except OSError:
        return []
    try:
        out, _ = child.communicate(timeout=DESCRIBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            break
    return [line for line in lines if isinstance(line, dict)]


def gpu_devices(setting: str, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs the runs share out, as CUDA_VISIBLE_DEVICES names them: GPUS's list; for "none", none; when it is empty,
    the runner's own CUDA_VISIBLE_DEVICES if set, else every GPU nvidia-smi lists (asked once per process)."""
    if setting == "none":
        return []
    if setting:
        return setting.split(",")
    if (visible := environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [device.strip() for device in visible.split(",") if device.strip()]
    return list(_detected_gpus())


@functools.cache
def _detected_gpus() -> tuple[str, ...]:
    return tuple(str(index) for index in range(len(gpus())))


def gpus_per_run(setting: int, devices: list[str], workers: int) -> int:
    """GPUs one run gets: GPUS_PER_RUN, or when it is 0 the GPUs divided among the workers (all of them for one worker); 0 without GPUs."""
    if not devices:
        return 0
    return setting or max(1, len(devices) // workers)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, which a container or taskset narrows), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def devices_text(gpus: list[str], node: str = "") -> str:
    """The devices a run was given, as CUDA_VISIBLE_DEVICES names them: `GPU 0`, `GPUs 0,1`, or `CPU` when none;
    after the node's name when it ran on a Ray node (`node-2 · GPU 0`)."""
    devices = f"GPU{'s' if len(gpus) > 1 else ''} {','.join(gpus)}" if gpus else "CPU"
    return f"{node} · {devices}" if node else devices


def share_text(workers: int, devices: list[str], per_run: int, cpus: int | None = None) -> str:
    """What one run gets when runs share the machine, as the code model should know it; empty for one run on the whole machine."""
    cpus = cpus or cpu_count()
    gpu_part = f"{per_run} GPU{'s' if per_run > 1 else ''} of its own (CUDA_VISIBLE_DEVICES; numbered from 0 inside the run)"
    if workers <= 1:
        return f"Each run gets {gpu_part}, of the {len(devices)} given." if devices and per_run < len(devices) else ""
    parts = [f"Up to {workers} runs train at once; each gets {max(1, cpus // workers)} CPU threads (OMP_NUM_THREADS)"]
    if devices:
        parts.append(f"and {gpu_part}")
    return " ".join(parts) + "."
