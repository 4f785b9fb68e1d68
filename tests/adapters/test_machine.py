"""Tests for adapters/machine.py: checking the training interpreter, and describing it and the hardware for the code model."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import pytest
from venvs import make_venv

from adapters import machine
from adapters.machine import check_python, describe_machine, gpus, machine_text
from settings import SettingsError

FAKE_TORCH = {
    "torch/__init__.py": "class cuda:\n    @staticmethod\n    def is_available():\n        return False\n",
    "torch/version.py": "from typing import Optional\n__version__ = '2.5.1+cu124'\ncuda: Optional[str] = '12.4'\n",
}
H200 = "NVIDIA H200, 143771 MiB"


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def nvidia_smi(tmp_path: Path, monkeypatch):
    """Puts a fake nvidia-smi that prints `output` and exits with `code` first on PATH."""

    def install(output: str, code: int = 0) -> None:
        executable(tmp_path / "fake-bin" / "nvidia-smi", f"#!/bin/sh\nprintf '%s' '{output}'\nexit {code}\n")
        monkeypatch.setenv("PATH", f"{tmp_path / 'fake-bin'}:{os.environ['PATH']}")

    return install


# check_python


def test_the_runners_own_interpreter_passes_as_it_names_itself():
    assert check_python(sys.executable) == sys.executable


def test_a_wrapper_on_path_is_replaced_by_the_interpreter_it_starts(tmp_path: Path, monkeypatch):
    # pyenv's shims are such wrappers: the sandbox would need pyenv itself to run one, the interpreter alone suffices.
    executable(tmp_path / "bin" / "python3", f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert check_python("python3") == sys.executable


def test_a_relative_path_or_one_with_a_tilde_becomes_absolute(tmp_path: Path, monkeypatch):
    venv_python = Path(sys.executable)  # a venv's python names itself by its venv path
    monkeypatch.chdir(venv_python.parent.parent)
    assert check_python(f"bin/{venv_python.name}") == sys.executable
    monkeypatch.setenv("HOME", str(venv_python.parent.parent))
    assert check_python(f"~/bin/{venv_python.name}") == sys.executable


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "nope" / "python", "does not exist"),
        (lambda tmp: tmp, "is not an executable file"),
        (lambda tmp: executable(tmp / "python", "").chmod(0o644) or tmp / "python", "is not an executable file"),
        (lambda tmp: executable(tmp / "python", "#!/bin/sh\necho 'libpython3.11.so: cannot open' >&2\nexit 127\n"), "does not run Python: libpython"),
        (lambda tmp: executable(tmp / "python", "#!/bin/sh\nexit 0\n"), "does not run Python: exit code 0"),
    ],
    ids=["missing", "folder", "not-executable", "broken", "silent"],
)
def test_a_bad_interpreter_is_one_line_naming_the_setting(tmp_path: Path, make, message):
    with pytest.raises(SettingsError, match=f"^TRAIN_PYTHON \\(--python\\) .*{message}") as raised:
        check_python(str(make(tmp_path)))
    assert "\n" not in str(raised.value)


def test_an_interpreter_that_hangs_is_given_up_on(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(machine, "CHECK_TIMEOUT_S", 0.5)
    hangs = executable(tmp_path / "python", "#!/bin/sh\nexec sleep 30\n")
    started = time.monotonic()
    with pytest.raises(SettingsError, match="does not run Python"):
        check_python(str(hangs))
    assert time.monotonic() - started < 10


# describe_machine


def test_the_runners_interpreter_has_scikit_learn():
    description = describe_machine(sys.executable)
    assert description["python"] == sys.executable
    assert description["python_version"] == platform.python_version()
    assert {"numpy", "scikit-learn"} <= description["packages"].keys()
    assert description["packages"]["scikit-learn"][0].isdigit()
    assert description["cpu_cores"] == len(os.sched_getaffinity(0))
    assert description["ram_gib"] > 0
    text = machine_text(description)
    assert text.splitlines()[0] == f"Python {platform.python_version()} at {sys.executable}"
    assert f"scikit-learn {description['packages']['scikit-learn']}" in text
    assert f"{len(os.sched_getaffinity(0))} CPU cores" in text


def test_a_venv_without_scikit_learn_says_so(tmp_path: Path):
    python = make_venv(tmp_path / "bare", distributions={"pandas": "2.2.3"})
    description = describe_machine(str(python))
    assert description["packages"] == {"pandas": "2.2.3"}  # only what that venv holds, not the runner's
    assert "scikit-learn" not in machine_text(description)


def test_a_venv_with_no_ml_library_at_all(tmp_path: Path):
    description = describe_machine(str(make_venv(tmp_path / "bare")))
    assert description["packages"] == {} and description["torch_cuda"] is None
    assert "Packages: none of the usual ML libraries" in machine_text(description)


def test_torch_says_its_cuda_build_and_whether_a_gpu_is_usable(tmp_path: Path):
    python = make_venv(tmp_path / "torch", files=FAKE_TORCH, distributions={"torch": "2.5.1", "numpy": "2.1.0"})
    description = describe_machine(str(python))
    assert description["packages"] == {"numpy": "2.1.0", "torch": "2.5.1"}
    assert (description["torch_cuda"], description["cuda_available"]) == ("12.4", False)
    assert "Packages: numpy 2.1.0, torch 2.5.1 (CUDA 12.4, no usable GPU)" in machine_text(description)


def test_a_cpu_only_torch_is_not_imported(tmp_path: Path):
    files = {"torch/__init__.py": "raise SystemExit('imported')\n", "torch/version.py": "cuda = None\n"}
    description = describe_machine(str(make_venv(tmp_path / "cpu", files=files, distributions={"torch": "2.5.1"})))
    assert (description["torch_cuda"], description["cuda_available"]) == (None, None)
    assert "torch 2.5.1 (CPU only)" in machine_text(description)


def test_a_torch_import_that_hangs_costs_only_the_gpu_check(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(machine, "DESCRIBE_TIMEOUT_S", 2.0)
    files = {**FAKE_TORCH, "torch/__init__.py": "import time\ntime.sleep(60)\n"}
    python = make_venv(tmp_path / "slow", files=files, distributions={"torch": "2.5.1"})
    started = time.monotonic()
    description = describe_machine(str(python))
    assert time.monotonic() - started < 10
    assert description["packages"] == {"torch": "2.5.1"} and description["torch_cuda"] == "12.4"
    assert description["cuda_available"] is None
    assert "torch 2.5.1 (CUDA 12.4)" in machine_text(description)


# GPUs


def test_gpus_are_read_from_nvidia_smi(nvidia_smi):
    nvidia_smi(f"{H200}\n{H200}\nNVIDIA GeForce RTX 4090, 24564 MiB\n")
    found = gpus()
    assert found == [{"name": "NVIDIA H200", "memory_gib": 140.0}] * 2 + [{"name": "NVIDIA GeForce RTX 4090", "memory_gib": 24.0}]
    text = machine_text(describe_machine(sys.executable))
    assert text.splitlines()[-1].endswith("GPUs: 2 × NVIDIA H200 (140 GiB), 1 × NVIDIA GeForce RTX 4090 (24 GiB)")


def test_a_failing_nvidia_smi_means_no_gpu(nvidia_smi):
    nvidia_smi("NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.\n", code=9)
    assert gpus() == []
    assert machine_text(describe_machine(sys.executable)).endswith("; no GPU")


def test_no_nvidia_smi_means_no_gpu(tmp_path: Path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpus() == []
    assert machine_text(describe_machine(sys.executable)).endswith("; no GPU")


def test_the_text_stays_small():
    description = describe_machine(sys.executable)
    description["python"] = "/very/long/" * 200 + "python"
    description["packages"] = {name: "1.0.0.dev20250101+cu124.local" for name in machine.ML_PACKAGES}
    description["gpus"] = [{"name": f"GPU model {i}", "memory_gib": float(i)} for i in range(64)]
    text = machine_text(description)
    assert len(text) <= machine.TEXT_MAX_CHARS
    assert text.startswith(f"Python {platform.python_version()} at /very/long/")


def test_the_gpus_are_shared_out_among_the_workers_and_one_worker_has_them_all(monkeypatch):
    assert machine.gpu_devices("1,3") == ["1", "3"] and machine.gpu_devices("none") == []
    assert machine.gpu_devices("", {"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]  # the runner's own, when set
    four = ["0", "1", "2", "3"]
    assert machine.gpus_per_run(0, four, 1) == 4  # one worker: every GPU, as before parallel runs
    assert machine.gpus_per_run(0, four, 2) == 2 and machine.gpus_per_run(0, four, 8) == 1
    assert machine.gpus_per_run(3, four, 2) == 3 and machine.gpus_per_run(0, [], 4) == 0
    assert machine.share_text(1, four, 4) == ""  # one run on the whole machine: nothing to say
    assert machine.share_text(4, four, 1, cpus=16) == (
        "Up to 4 runs train at once; each gets 4 CPU threads (OMP_NUM_THREADS) and 1 GPU of its own (CUDA_VISIBLE_DEVICES; numbered from 0 inside the run)."
    )
    assert machine.cpu_count() >= 1
