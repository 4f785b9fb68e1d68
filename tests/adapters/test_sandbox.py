"""Tests for adapters/sandbox.py: choosing the mode, the child's environment, the bwrap command line, file ownership."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import make_settings
from venvs import make_venv

from adapters import sandbox
from adapters.sandbox import (
    GRADED_WITHOUT_SANDBOX,
    SANDBOX_UID,
    SandboxError,
    child_environment,
    chown_tree,
    nvidia_devices,
    reclaim,
    resolve_graded_mode,
    resolve_mode,
    sandbox_command,
    share_environment,
    workspace,
)
from adapters.training import sandbox_for

BWRAP_PROBLEM = sandbox.bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap cannot run here: {BWRAP_PROBLEM}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only a root runner hands files to the sandbox's unprivileged user")


@pytest.fixture
def bwrap_missing(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")


@pytest.fixture
def bwrap_works(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: None)


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    folder = tmp_path / "exp"
    (folder / "run_1").mkdir(parents=True)
    (folder / "run_2").mkdir()
    (folder / "data").mkdir()
    (folder / ".runner").mkdir()
    for name in ("IDEA.md", "tasks.json", ".env", ".env.local"):
        (folder / name).write_text("x")
    return folder


def command(experiment: Path, **kwargs) -> list[str]:
    kwargs.setdefault("mode", "bwrap")
    kwargs.setdefault("devices", [])
    return sandbox_command([sys.executable, "train.py"], run_dir=experiment / "run_2", experiment_dir=experiment, data_dir=experiment / "data", **kwargs)


def options(argv: list[str], name: str, arity: int = 2) -> list[tuple[str, ...]]:
    """Every occurrence of bwrap option `name` with its arguments, before the `--` that ends bwrap's options."""
    argv = argv[: argv.index("--")]
    return [tuple(argv[i + 1 : i + 1 + arity]) for i, arg in enumerate(argv) if arg == name]


# Choosing the mode


def test_none_is_none_and_needs_no_bwrap(bwrap_missing):
    assert resolve_mode("none") == ("none", None)


def test_auto_uses_bwrap_when_it_works(bwrap_works):
    assert resolve_mode("auto") == ("bwrap", None)
    assert resolve_mode("bwrap") == ("bwrap", None)
    assert resolve_mode("auto", no_network=True) == ("bwrap", None)


def test_auto_falls_back_to_none_with_a_warning_that_says_how_to_install(bwrap_missing):
    mode, warning = resolve_mode("auto")
    assert mode == "none"
    assert "not installed" in warning and "apt-get install bubblewrap" in warning
    assert "\n" not in warning


def test_bwrap_asked_for_but_missing_is_an_error_naming_the_fix(bwrap_missing):
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        resolve_mode("bwrap")


@pytest.mark.parametrize("requested", ["none", "auto"])
def test_no_network_without_bwrap_is_refused(requested, bwrap_missing):
    with pytest.raises(SandboxError, match="--no-network"):
        resolve_mode(requested, no_network=True)


def test_unknown_mode_is_refused():
    with pytest.raises(SandboxError, match="SANDBOX must be one of"):
        resolve_mode("docker")


def test_a_missing_bwrap_is_found_and_the_probe_is_cached(monkeypatch):
    sandbox.bwrap_problem.cache_clear()
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    try:
        assert sandbox.bwrap_problem() == "bubblewrap (bwrap) is not installed"
        monkeypatch.undo()
        assert sandbox.bwrap_problem() == "bubblewrap (bwrap) is not installed"  # probed once per process
    finally:
        sandbox.bwrap_problem.cache_clear()


def test_a_bwrap_that_cannot_start_is_a_problem(monkeypatch, tmp_path: Path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    sandbox.bwrap_problem.cache_clear()
    try:
        assert sandbox.bwrap_problem() == "bwrap does not work here (bwrap: Creating new namespace failed: Operation not permitted)"
    finally:
        sandbox.bwrap_problem.cache_clear()


# The child's environment

PARENT = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TERM": "xterm",
    "TMPDIR": "/var/tmp",
    "HOME": "/home/alice",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "NVIDIA_VISIBLE_DEVICES": "all",
    "NVIDIA_API_KEY": "nvapi-secret",
    "OPENROUTER_API_KEY": "sk-or-secret",
    "LLM_API_KEY": "sk-llm-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "GITHUB_TOKEN": "ghp-secret",
    "DB_PASSWORD": "db-secret",
    "LD_PRELOAD": "/tmp/evil.so",
    "PYTHONPATH": "/home/alice/src",
    "WANDB_API_KEY": "wandb-key",
    "HF_ENDPOINT": "https://hf.example",
}


def test_environment_is_an_allow_list():
    env = child_environment(PARENT, home="/tmp/home", data_dir="/exp/data")
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "xterm",
        "TMPDIR": "/var/tmp",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "HOME": "/tmp/home",
        "DATA_DIR": "/exp/data",
        "XDG_CACHE_HOME": "/exp/data/cache",
        "PYTHONUNBUFFERED": "1",
    }


def test_names_passed_on_purpose_get_through_even_secret_looking_ones():
    env = child_environment(PARENT, home="/h", data_dir="/d", extra_names=["WANDB_API_KEY", "HF_ENDPOINT", "NOT_SET"])
    assert env["WANDB_API_KEY"] == "wandb-key" and env["HF_ENDPOINT"] == "https://hf.example"
    assert "NOT_SET" not in env and "GITHUB_TOKEN" not in env


def test_tmpdir_can_be_replaced():
    assert child_environment(PARENT, home="/h", data_dir="/d", tmpdir="/tmp")["TMPDIR"] == "/tmp"


# The bwrap command line


def test_none_runs_the_command_as_it_is(experiment: Path):
    assert command(experiment, mode="none") == [sys.executable, "train.py"]


def test_bwrap_command_shape(experiment: Path):
    argv = command(experiment, network=True)
    assert argv[0] == "bwrap"
    assert argv[-2:] == [sys.executable, "train.py"]
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert "--unshare-net" not in argv
    assert options(argv, "--chdir", 1) == [(str(experiment / "run_2"),)]
    assert ("/usr", "/usr") in options(argv, "--ro-bind")
    assert ("/etc", "/etc") in options(argv, "--ro-bind")
    assert options(argv, "--proc", 1) == [("/proc",)] and options(argv, "--dev", 1) == [("/dev",)]
    assert ("1777", "--tmpfs", "/tmp") in options(argv, "--perms", 3)
    assert ("1777", "--dir", "/tmp/home") in options(argv, "--perms", 3)


def test_no_network_unshares_the_network(experiment: Path):
    assert "--unshare-net" in command(experiment, network=False)


def test_experiment_is_read_only_without_its_secrets_and_only_run_and_data_are_writable(experiment: Path):
    argv = command(experiment)
    exp = experiment.resolve()
    assert ("0755", "--tmpfs", str(exp)) in options(argv, "--perms", 3)
    read_only = {dest for _, dest in options(argv, "--ro-bind")}
    assert {str(exp / n) for n in ("IDEA.md", "tasks.json")} <= read_only
    # Neither secrets nor the other runs' folders (one mount each would cost a tree search of hundreds of runs dearly).
    assert not {str(exp / n) for n in (".env", ".env.local", ".runner", "run_1", "run_2", "data")} & read_only
    assert set(options(argv, "--bind")) == {(str(exp / "run_2"), str(exp / "run_2")), (str(exp / "data"), str(exp / "data"))}
    assert (str(exp),) in options(argv, "--remount-ro", 1)


def test_the_real_home_is_an_empty_read_only_folder(experiment: Path, monkeypatch, tmp_path: Path):
    home = tmp_path / "alice"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    argv = command(experiment)
    assert ("0755", "--tmpfs", str(home)) in options(argv, "--perms", 3)
    assert (str(home),) in options(argv, "--remount-ro", 1)
    assert not [dest for _, dest in options(argv, "--ro-bind") + options(argv, "--bind") if dest == str(home)]


def test_the_interpreter_is_visible(experiment: Path):
    argv = command(experiment)
    bound = [Path(dest) for _, dest in options(argv, "--ro-bind")]
    for needed in (Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent):
        assert any(needed == b or b in needed.parents for b in bound), needed


def test_the_runner_source_is_not_visible(experiment: Path):
    repo = Path(sandbox.__file__).resolve().parent.parent
    argv = command(experiment)
    bound = [Path(dest) for _, dest in options(argv, "--ro-bind")]
    assert not any(b == repo or b in repo.parents for b in bound if b != Path("/"))
    assert not any(b in (repo / "adapters", repo / "tests") or repo / "adapters" in b.parents for b in bound)


def test_mount_points_are_created_traversable(experiment: Path):
    """bwrap makes missing mount-point folders 0700; ours are 0755 so an unprivileged user can reach the run folder."""
    argv = command(experiment)
    made = {path for perms, op, path in options(argv, "--perms", 3) if op == "--dir"}
    inside_tmp = [p for p in experiment.resolve().parents if p.is_relative_to("/tmp") and p != Path("/tmp")]
    if not inside_tmp:
        pytest.skip("pytest's temporary folder is not under /tmp")
    assert {str(p) for p in inside_tmp} <= made


def test_as_root_the_script_drops_to_an_unprivileged_user(experiment: Path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    argv = command(experiment)
    after = argv[argv.index("--") + 1 :]
    assert after[:2] == ["setpriv", f"--reuid={SANDBOX_UID}"]
    assert "--no-new-privs" in after and "--clear-groups" in after
    assert after[-2:] == [sys.executable, "train.py"]


def test_as_a_user_no_privileges_are_dropped(experiment: Path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    argv = command(experiment)
    assert argv[argv.index("--") + 1 :] == [sys.executable, "train.py"]


def test_gpu_less_machine_binds_no_devices(experiment: Path, tmp_path: Path):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("null", "zero", "tty", "fuse"):
        (dev / name).touch()
    assert nvidia_devices(dev) == []
    argv = command(experiment, devices=nvidia_devices(dev))
    assert options(argv, "--dev-bind") == []
    assert "nvidia" not in " ".join(argv)


def test_nvidia_devices_are_bound_when_present(experiment: Path, tmp_path: Path):
    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    for name in ("null", "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        (dev / name).touch()
    argv = command(experiment, devices=nvidia_devices(dev))
    names = ("nvidia-caps", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1", "nvidiactl")
    assert options(argv, "--dev-bind") == [(str(dev / n), f"/dev/{n}") for n in names]


def test_missing_dev_folder_means_no_devices(tmp_path: Path):
    assert nvidia_devices(tmp_path / "nope") == []


@needs_bwrap
def test_the_command_runs_and_sees_the_view(experiment: Path):
    argv = sandbox_command(
        [sys.executable, "-c", "import os; print(sorted(os.listdir('..'))); print(os.getcwd())"],
        mode="bwrap",
        run_dir=experiment / "run_2",
        experiment_dir=experiment,
        data_dir=experiment / "data",
        network=False,
    )
    with workspace("bwrap", experiment / "run_2", experiment / "data") as home:
        env = child_environment(os.environ, home=home, data_dir=str(experiment / "data"), tmpdir="/tmp")
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listing, cwd = done.stdout.splitlines()
    assert listing == str(["IDEA.md", "data", "run_2", "tasks.json"])  # its own run only
    assert cwd == str((experiment / "run_2").resolve())


@needs_bwrap
def test_an_experiment_inside_the_home_runs_and_the_rest_of_the_home_stays_hidden(tmp_path: Path, monkeypatch):
    home = tmp_path / "alice"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("key")
    experiment = home / "experiments" / "digits"
    (experiment / "run_1").mkdir(parents=True)
    (experiment / "IDEA.md").write_text("idea")
    monkeypatch.setenv("HOME", str(home))
    code = "import os; open('out.txt', 'w').write('ok'); print(os.listdir({home!r}))"
    argv = sandbox_command(
        [sys.executable, "-c", code.format(home=str(home))],
        mode="bwrap",
        run_dir=experiment / "run_1",
        experiment_dir=experiment,
        data_dir=experiment / "data",
    )
    with workspace("bwrap", experiment / "run_1", experiment / "data") as scratch:
        done = subprocess.run(argv, env=child_environment(os.environ, home=scratch, data_dir="/d"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['experiments']"  # no .ssh: only the way down to the experiment
    assert (experiment / "run_1" / "out.txt").read_text() == "ok"


@pytest.fixture
def home_with_a_venv(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A home folder holding keys and a venv whose package no other interpreter has; HOME points at it. Returns (home, python)."""
    home = tmp_path / "alice"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("key")
    (home / "notes.txt").write_text("private")
    python = make_venv(home / "venvs" / "torch", files={"only_in_this_venv/__init__.py": "WHERE = 'the venv'\n"})
    monkeypatch.setenv("HOME", str(home))
    return home, python


def run_in_sandbox(experiment: Path, python: str, code: str) -> subprocess.CompletedProcess:
    argv = sandbox_command(
        [python, "-c", code], mode="bwrap", run_dir=experiment / "run_2", experiment_dir=experiment, data_dir=experiment / "data", python=python
    )
    with workspace("bwrap", experiment / "run_2", experiment / "data") as home:
        env = child_environment(os.environ, home=home, data_dir=str(experiment / "data"), tmpdir="/tmp")
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_the_training_venv_is_bound_not_the_home_around_it(experiment: Path, home_with_a_venv):
    home, python = home_with_a_venv
    bound = [Path(dest) for _, dest in options(command(experiment, python=str(python)), "--ro-bind")]
    assert home / "venvs" / "torch" in bound
    assert not [b for b in bound if b in (home, home / "venvs", home / ".ssh")]


@needs_bwrap
def test_a_venv_under_the_home_runs_in_the_sandbox_and_the_rest_of_the_home_stays_hidden(experiment: Path, home_with_a_venv):
    home, python = home_with_a_venv
    code = f"""
import os, sys, only_in_this_venv
print(sys.executable)
print(only_in_this_venv.WHERE)
print(sorted(os.listdir({str(home)!r})), sorted(os.listdir({str(home / "venvs")!r})))
for secret in ({str(home / ".ssh" / "id_rsa")!r}, {str(home / "notes.txt")!r}):
    print(os.path.exists(secret))
"""
    done = run_in_sandbox(experiment, str(python), code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(python), "the venv", "['venvs'] ['torch']", "False", "False"]


@needs_bwrap
def test_a_link_to_the_interpreter_shows_as_that_link_alone(experiment: Path, home_with_a_venv):
    home, python = home_with_a_venv
    (home / "bin").mkdir()
    (home / "bin" / "deploy.sh").write_text("secret")
    (home / "bin" / "python").symlink_to(python)
    link = str(home / "bin" / "python")
    bound = [Path(dest) for _, dest in options(command(experiment, python=link), "--ro-bind")]
    assert home / "bin" not in bound
    done = run_in_sandbox(experiment, link, f"import os, sys; print(sys.version_info[0], os.listdir({str(home / 'bin')!r}))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3 ['python']"


def test_an_interpreter_installed_in_the_home_itself_is_refused(experiment: Path, tmp_path: Path, monkeypatch):
    home = tmp_path / "bob"
    python = make_venv(home)  # `python -m venv ~`: its prefix is the home
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(SandboxError, match="holds the home folder .*TRAIN_PYTHON"):
        command(experiment, python=str(python))


def test_an_experiment_that_is_the_home_is_refused(tmp_path: Path, monkeypatch):
    (tmp_path / "run_1").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SandboxError, match="holds the home folder"):
        sandbox_command(["true"], mode="bwrap", run_dir=tmp_path / "run_1", experiment_dir=tmp_path, data_dir=tmp_path / "data", devices=[])


# Ownership of what the script writes


def test_workspace_none_gives_a_scratch_home_outside_the_experiment(experiment: Path):
    with workspace("none", experiment / "run_2", experiment / "data") as home:
        assert Path(home).is_dir() and not Path(home).is_relative_to(experiment)
        (Path(home) / ".cache").mkdir()
    assert not Path(home).exists()


def test_workspace_creates_the_data_folder(tmp_path: Path):
    (tmp_path / "run_1").mkdir()
    with workspace("none", tmp_path / "run_1", tmp_path / "data"):
        assert (tmp_path / "data").is_dir()


@needs_root
def test_workspace_hands_the_folders_over_and_takes_them_back(experiment: Path):
    run_dir, data = experiment / "run_2", experiment / "data"
    (run_dir / "train.py").write_text("print()")
    with workspace("bwrap", run_dir, data) as home:
        assert home == "/tmp/home"
        assert {p.stat().st_uid for p in (run_dir, run_dir / "train.py", data)} == {SANDBOX_UID}
        (run_dir / "model.pt").write_text("weights")
        os.chown(run_dir / "model.pt", SANDBOX_UID, SANDBOX_UID)
    for path in (run_dir, run_dir / "train.py", run_dir / "model.pt", data):
        assert (path.stat().st_uid, path.stat().st_gid) == (os.geteuid(), os.getegid()), path
    assert (experiment / "IDEA.md").stat().st_uid == os.geteuid()


@needs_root
def test_reclaim_does_not_follow_planted_symlinks(tmp_path: Path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the script's")
    os.chown(outside, 12345, 12345)
    run_dir = tmp_path / "run_1"
    (run_dir / "sub").mkdir(parents=True)
    (run_dir / "sub" / "out.txt").write_text("x")
    (run_dir / "link").symlink_to(outside)
    (run_dir / "dirlink").symlink_to(tmp_path)
    chown_tree(run_dir, SANDBOX_UID, SANDBOX_UID)
    assert (run_dir / "sub" / "out.txt").stat().st_uid == SANDBOX_UID
    assert outside.stat().st_uid == 12345
    reclaim(run_dir)
    assert (run_dir / "sub" / "out.txt").stat().st_uid == os.geteuid()
    assert (run_dir / "link").lstat().st_uid == os.geteuid()
    assert outside.stat().st_uid == 12345 and tmp_path.stat().st_uid == os.geteuid()


def test_a_run_gets_its_share_of_the_machine_unless_the_user_passes_their_own_values():
    assert share_environment(["1"], 4) == {
        "CUDA_VISIBLE_DEVICES": "1",
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "4",
        "NUMEXPR_NUM_THREADS": "4",
        "VECLIB_MAXIMUM_THREADS": "4",
    }
    assert share_environment([], None) == {"CUDA_VISIBLE_DEVICES": ""}  # GPUS=none hides them all
    assert share_environment(None, None) == {}  # no GPU given: the runner's own variable passes as it is
    assert "OMP_NUM_THREADS" not in share_environment(None, 2, keep=("OMP_NUM_THREADS",))  # named in SANDBOX_ENV: the user's


# A graded experiment: train.py sees neither grade.py nor private/


@pytest.fixture
def graded(experiment: Path) -> Path:
    (experiment / "grade.py").write_text("print('{\"accuracy\": 1}')  # the grader\n")
    (experiment / "private").mkdir()
    (experiment / "private" / "test_labels.csv").write_text("id,label\n1,cat\n")
    return experiment


def test_the_grader_and_private_are_not_bound(graded: Path):
    argv = command(graded)
    exp = graded.resolve()
    bound = {dest for _, dest in options(argv, "--ro-bind") + options(argv, "--bind")}
    assert str(exp / "IDEA.md") in bound
    assert not any(dest in (str(exp / "grade.py"), str(exp / "private")) or dest.startswith(str(exp / "private") + "/") for dest in bound)


def test_the_experiments_fresh_moved_aside_are_not_bound_their_grades_with_them(graded: Path):
    (graded / "earlier-20261130-041500" / "run_1").mkdir(parents=True)
    (graded / "earlier-20261130-041500" / "run_1" / "grade.log").write_text('{"accuracy": 0.91}\n')
    bound = {dest for _, dest in options(command(graded), "--ro-bind") + options(command(graded), "--bind")}
    assert not [dest for dest in bound if "earlier-" in dest] and str(graded.resolve() / "IDEA.md") in bound


@needs_bwrap
def test_the_script_cannot_find_the_grader_or_the_answer_key(graded: Path):
    exp = graded.resolve()
    code = f"""
import os
print(sorted(os.listdir("..")))
for path in ("../private/test_labels.csv", "../grade.py", {str(exp / "private" / "test_labels.csv")!r}, {str(exp / "grade.py")!r}, "../private"):
    try:
        open(path).read()
        print("read", path)
    except Exception as exc:
        print(type(exc).__name__)
"""
    done = run_in_sandbox(graded, sys.executable, code)
    assert done.returncode == 0, done.stderr
    listing, *errors = done.stdout.splitlines()
    assert listing == str(["IDEA.md", "data", "run_2", "tasks.json"])
    assert errors == ["FileNotFoundError"] * 5  # not there at all, not merely forbidden


def test_graded_auto_without_bwrap_is_refused_naming_the_way_out(bwrap_missing):
    with pytest.raises(SandboxError, match="graded.*grade.py.*private/.*not installed.*--sandbox none"):
        resolve_graded_mode("auto")
    with pytest.raises(SandboxError, match="SANDBOX=bwrap"):
        resolve_graded_mode("bwrap")


def test_graded_none_runs_with_a_warning_whether_or_not_bwrap_works(bwrap_missing, monkeypatch):
    assert resolve_graded_mode("none") == ("none", GRADED_WITHOUT_SANDBOX)
    assert "private/" in GRADED_WITHOUT_SANDBOX and "grade.py" in GRADED_WITHOUT_SANDBOX
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: None)
    assert resolve_graded_mode("none") == ("none", GRADED_WITHOUT_SANDBOX)


def test_graded_none_cannot_cut_the_network(bwrap_missing):
    with pytest.raises(SandboxError, match="no-network"):
        resolve_graded_mode("none", no_network=True)


def test_graded_with_bwrap_is_bwrap_without_a_warning(bwrap_works):
    assert resolve_graded_mode("auto") == ("bwrap", None)
    assert resolve_graded_mode("bwrap") == ("bwrap", None)
    assert resolve_graded_mode("auto", no_network=True) == ("bwrap", None)


def test_sandbox_for_a_graded_experiment_here(bwrap_missing):
    with pytest.raises(SandboxError, match="--sandbox none"):
        sandbox_for(make_settings(sandbox="auto"), graded=True)
    assert sandbox_for(make_settings(sandbox="none"), graded=True) == ("none", GRADED_WITHOUT_SANDBOX)
    mode, warning = sandbox_for(make_settings(sandbox="auto"))  # not graded: auto falls back, warning how to install
    assert mode == "none" and warning and "private/" not in warning


def test_sandbox_for_a_graded_experiment_on_ray_asks_the_nodes_for_bwrap(bwrap_missing):
    assert sandbox_for(make_settings(executor="ray", sandbox="auto"), graded=True) == ("bwrap", None)
    assert sandbox_for(make_settings(executor="ray", sandbox="bwrap"), graded=True) == ("bwrap", None)
    assert sandbox_for(make_settings(executor="ray", sandbox="none"), graded=True) == ("none", GRADED_WITHOUT_SANDBOX)
    assert sandbox_for(make_settings(executor="ray", sandbox="auto")) == ("auto", None)
