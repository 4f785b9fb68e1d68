"""The sandbox train.py runs in: bubblewrap's read-only view of the machine, and an allow-listed environment.

Under bwrap the script sees the system and the installation of the Python that runs it (TRAIN_PYTHON, even
under a home) read-only, the experiment folder read-only (without `.env` and `.runner/`), an otherwise empty
home, and may write only its run folder, the
shared `<experiment>/data/` cache and a private /tmp. It has its own PID, IPC and UTS namespaces
(and network namespace with `--no-network`), dies with the runner, and runs as an unprivileged
user when the runner is root. `none` adds nothing beyond the allow-listed environment.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from adapters.errors import SettingsError
from adapters.grader import GRADER, PRIVATE

MODES = ("auto", "bwrap", "none")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`)"

SANDBOX_UID = SANDBOX_GID = 65534
"""Who the script runs as when the runner is root: `nobody`, which owns nothing the script could harm."""
SANDBOX_HOME = "/tmp/home"
"""HOME inside the sandbox: a folder in its private /tmp, gone with it."""
DROP_ROOT = ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]

SYSTEM_DIRS = ("/usr", "/etc", "/opt", "/sys")
"""Bound read-only when present; /sys because CUDA, NVML and CPU counting read it."""
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Often symlinks into /usr (merged /usr): recreated as symlinks, else bound read-only."""
HIDDEN_ENTRIES = re.compile(rf"^(\.env.*|\.runner|{re.escape(GRADER)}|{re.escape(PRIVATE)}|earlier-.*)$")
"""Experiment entries the script never sees, not even read-only: dotenv files may hold API keys; `.runner/` is the
runner's own; the grader and what only it reads (private/: the answer key) would let the script fake its grade; the
earlier experiments `--fresh` moved aside hold their runs' folders, grades included."""
RUN_FOLDER = re.compile(r"^run_\d+$")
"""The runs' folders: a run sees its own only, so what one run wrote neither helps nor misleads another."""
PYTHON_LIBRARY = re.compile(r"(^|/)(site|dist)-packages(/|$)")
NEVER_BOUND = (Path("/"), Path("/tmp"), Path("/dev"), Path("/proc"))
"""Folders a Python installation may claim (a python3 copied to /tmp) that would undo the sandbox's own view of them."""
WHERE_PYTHON_LIVES = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]))"
"""Asked of the interpreter that runs train.py (isolated, as in the sandbox: no user site, no PYTHON* variables)."""

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
ENV_NAMES = ("PATH", "LANG", "TERM", "TMPDIR", "CUDA_VISIBLE_DEVICES")
ENV_PREFIXES = ("LC_", "NVIDIA_")
PROBE_TIMEOUT_S = 10.0


class SandboxError(SettingsError):
    """The sandbox asked for cannot be used here; the message says how to fix it."""


def resolve_mode(requested: str, *, no_network: bool = False) -> tuple[str, str | None]:
    """The mode to run in and, when `auto` falls back to `none`, a one-line warning saying why and what to install.

    Raises SandboxError when `bwrap` is asked for but does not work, and when `no_network` is asked
    for without a working bwrap: only a network namespace can cut the script off loopback.
    """
    if requested not in MODES:
        raise SandboxError(f"SANDBOX must be one of {', '.join(MODES)}, got {requested!r}")
    problem = bwrap_problem() if requested != "none" else "SANDBOX=none"
    if no_network and problem:
        raise SandboxError(f"--no-network (NO_NETWORK=1) needs the bwrap sandbox, but {problem}: {INSTALL_HINT}, or drop --no-network")
    if requested == "bwrap" and problem:
        raise SandboxError(f"SANDBOX=bwrap but {problem}: {INSTALL_HINT}, or set SANDBOX=none")
    if requested == "auto":
        return ("none", f"train.py runs without a sandbox ({problem}); to isolate it, {INSTALL_HINT}") if problem else ("bwrap", None)
    return requested, None


GRADED_WITHOUT_SANDBOX = f"SANDBOX=none: train.py can read {GRADER} and {PRIVATE}/, so a run could fake its grade"


def resolve_graded_mode(requested: str, *, no_network: bool = False) -> tuple[str, str | None]:
    """resolve_mode for an experiment with a grader: `auto` must find bwrap, since the script must not see grade.py or
    private/; `none` runs only when asked for by name, and always with a warning."""
    if requested == "none":
        return resolve_mode(requested, no_network=no_network)[0], GRADED_WITHOUT_SANDBOX
    if requested == "auto" and (problem := bwrap_problem()):
        raise SandboxError(
            f"this experiment is graded, and train.py must not see {GRADER} or {PRIVATE}/, but {problem}: {INSTALL_HINT},"
            " or pass --sandbox none (SANDBOX=none) to accept that a run could read them"
        )
    return resolve_mode(requested, no_network=no_network)


@functools.cache
def bwrap_problem() -> str | None:
    """Why bwrap cannot run a script here (not installed, or its probe fails), or None when it works; probed once per process."""
    if not shutil.which("bwrap"):
        return "bubblewrap (bwrap) is not installed"
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        return "setpriv (util-linux) is missing, and it is needed to drop root"
    view = _View()
    _system_view(view)
    command = ["bwrap", *view.args, *_namespaces(network=False), *(DROP_ROOT if os.geteuid() == 0 else []), "true"]
    try:
        probe = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap does not work here ({exc})"
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return f"bwrap does not work here ({reason})"
    return None


def child_environment(parent: Mapping[str, str], *, home: str, data_dir: str, extra_names: Iterable[str] = (), tmpdir: str | None = None) -> dict[str, str]:
    """The script's environment: an allow-list of the parent's variables, the names in `extra_names`, and our own.

    A secret-looking name (KEY, TOKEN, SECRET, PASSWORD) passes only when it is named in `extra_names`.
    Caches that honour XDG_CACHE_HOME (Hugging Face, torch hub, pip) go to the shared data cache,
    so a download is made once per experiment rather than once per run.
    """
    extra = set(extra_names)
    allowed = {name for name in parent if name in ENV_NAMES or name.startswith(ENV_PREFIXES)}
    env = {name: parent[name] for name in allowed if not SECRET_NAME.search(name)}
    env.update({name: parent[name] for name in extra if name in parent})
    env.update({"HOME": home, "DATA_DIR": data_dir, "XDG_CACHE_HOME": f"{data_dir}/cache", "PYTHONUNBUFFERED": "1"})
    if tmpdir is not None:
        env["TMPDIR"] = tmpdir
    return env


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
"""What the thread pools of OpenMP (torch's CPU ops, scikit-learn), MKL, OpenBLAS and numexpr size themselves by."""


def share_environment(devices: list[str] | None, threads: int | None, keep: Iterable[str] = ()) -> dict[str, str]:
    """The variables that give a run its share of the machine: CUDA_VISIBLE_DEVICES naming its GPUs ("" hides them all;
    None leaves the runner's as it is), and each thread pool's size when the CPUs are divided among runs in flight
    (None: not divided). Names in `keep` (SANDBOX_ENV: the user's own values) are left alone."""
    shared = {} if devices is None else {"CUDA_VISIBLE_DEVICES": ",".join(devices)}
    if threads is not None:
        shared |= {name: str(threads) for name in THREAD_VARIABLES}
    kept = set(keep)
    return {name: value for name, value in shared.items() if name not in kept}


def nvidia_devices(dev: Path = Path("/dev")) -> list[Path]:
    """The NVIDIA device nodes (and /dev/nvidia-caps) a GPU job needs; none on a machine without NVIDIA GPUs."""
    try:
        return sorted(p for p in dev.iterdir() if p.name.startswith("nvidia"))
    except OSError:
        return []


def sandbox_command(
    argv: list[str],
    *,
    mode: str,
    run_dir: Path,
    experiment_dir: Path,
    data_dir: Path,
    home: str = SANDBOX_HOME,
    network: bool = True,
    devices: list[Path] | None = None,
    python: str | None = None,
) -> list[str]:
    """The command line that runs `argv` in `run_dir` under `mode`: `argv` itself for none, wrapped in bwrap otherwise.

    `devices` defaults to the NVIDIA device nodes present (see nvidia_devices); each is bound at /dev/<name>.
    `python` is the interpreter `argv` runs (default: the runner's own): its installation is shown read-only.
    """
    if mode == "none":
        return list(argv)
    # The run folder and the data cache show at their places in the experiment, even when they are symlinks.
    experiment_dir = Path(experiment_dir).resolve()
    run_dest, data_dest = experiment_dir / Path(run_dir).name, experiment_dir / Path(data_dir).name
    view = _View()
    # 1. The system, read-only; fresh /proc, /dev and /tmp.
    _system_view(view)
    for device in nvidia_devices() if devices is None else devices:
        view.bind(device, f"/dev/{device.name}", device=True)
    if network:  # a resolv.conf pointing into /run (systemd-resolved) needs its target to resolve names
        resolv = Path(os.path.realpath("/etc/resolv.conf"))
        if resolv.exists() and not view.covers(resolv):
            view.bind(resolv.parent)
    view.dir(home, perms="1777")
    # 2. The user's home: an empty folder, so its keys and configs are neither readable nor writable.
    homes = _real_homes()
    if exposed := [h for h in homes if h == experiment_dir or experiment_dir in h.parents]:
        raise SandboxError(f"the experiment folder {experiment_dir} holds the home folder {exposed[0]}, which the sandbox hides: use a folder of its own")
    for folder in homes:
        view.tmpfs(folder)
    # 3. The Python installation that runs train.py, read-only (it may live under a home, but not hold one).
    python = os.path.abspath(python or sys.executable)
    for folder in python_installation(python, homes):
        if not view.covers(folder):
            view.bind(folder)
    if not view.covers(Path(python)):  # a link from a folder of its own, such as ~/bin/python: that link alone
        view.symlink(os.path.realpath(python), python)
    # 4. The experiment, read-only and without .env, .runner/ or the other runs' folders; only the run folder and the
    #    data cache writable. A mount per entry, but none per earlier run: a tree search leaves hundreds of them,
    #    and bwrap takes about 0.6 s to mount a thousand.
    view.tmpfs(experiment_dir)
    for entry in sorted(experiment_dir.iterdir()):
        if HIDDEN_ENTRIES.match(entry.name) or RUN_FOLDER.match(entry.name) or entry in (run_dest, data_dest):
            continue
        view.bind(entry)
    view.bind(Path(run_dir).resolve(), run_dest, writable=True)
    view.bind(Path(data_dir).resolve(), data_dest, writable=True)
    view.remount_ro(experiment_dir)
    for folder in homes:
        view.remount_ro(folder)
    drop = DROP_ROOT if os.geteuid() == 0 else []
    return ["bwrap", *view.args, *_namespaces(network=network), "--chdir", str(run_dest), "--", *drop, *argv]


def scrub_run_folder(run_dir: Path) -> list[str]:
    """Remove what a run left in its folder for the runner to trip on, once its processes are gone and before the runner
    reads a file there: every symlink (outside the sandbox a link leads anywhere, to private/ or a .env, and output.log,
    metrics.json, the submission and grade.log are read or written there) and whatever is neither a file nor a folder (a
    FIFO would hang its reader). What deserves a flag, a line each: the links that led out of the folder, the rest.

    A folder the script made unlistable is made listable first (it runs as the runner's user when that is not root);
    OSError when one still cannot be listed.
    """
    flagged = []
    run_dir = Path(run_dir)
    inside = run_dir.resolve()
    pending = [run_dir]
    while pending:
        folder = pending.pop()
        status = folder.stat()
        if status.st_mode & 0o700 != 0o700 and status.st_uid == os.geteuid():
            folder.chmod(status.st_mode | 0o700)
        with os.scandir(folder) as entries:
            for entry in entries:
                path, name = Path(entry.path), Path(entry.path).relative_to(run_dir)
                if entry.is_symlink():
                    target = Path(os.path.realpath(path))
                    if target != inside and inside not in target.parents:
                        flagged.append(f"{name} -> {os.readlink(path)}")
                    path.unlink()
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif not entry.is_file(follow_symlinks=False):
                    flagged.append(f"{name} (neither a file nor a folder)")
                    path.unlink()
    return flagged


@contextmanager
def workspace(mode: str, run_dir: Path, data_dir: Path, data_is_shared: bool = False) -> Iterator[str]:
    """Get the folders a run writes ready for it and yield its HOME; afterwards give every file back and remove the scratch.

    Under bwrap as root the script runs as SANDBOX_UID: the run folder and the data cache are its
    for the run, and the runner's again after it. Under none, HOME is a scratch folder outside the
    experiment, removed afterwards. `data_is_shared`: runs in other processes use the data folder too (a Ray node's
    runs, each in a worker process of its own, SHARED_DATA), so it is left as it is: whoever made it owns it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if mode == "none":
        home = tempfile.mkdtemp(prefix="auto-ml-home-")
        try:
            yield home
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return
    dropping = os.geteuid() == 0
    holding = dropping and not data_is_shared
    if holding:
        data_key = data_dir.resolve()
        with _DATA_LOCK:  # runs in flight share data/: it is the sandbox's until the last of them ends
            _DATA_HOLDERS[data_key] = _DATA_HOLDERS.get(data_key, 0) + 1
            try:
                for folder in (run_dir, data_dir) if _DATA_HOLDERS[data_key] == 1 else (run_dir,):  # data/ is the sandbox's already
                    _hand_over(folder)
            except BaseException:
                _release(data_key)
                raise
    elif dropping:
        _hand_over(run_dir)
    try:
        yield SANDBOX_HOME
    finally:
        if dropping:
            reclaim(run_dir)
        if holding:
            with _DATA_LOCK:
                if _release(data_key) == 0:
                    reclaim(data_dir)


def _hand_over(folder: Path) -> None:
    """Make `folder` the sandbox user's for a run; SandboxError when the filesystem refuses."""
    try:
        chown_tree(folder, SANDBOX_UID, SANDBOX_GID)
    except OSError as exc:  # e.g. NFS with root_squash
        raise SandboxError(f"cannot hand {folder} to the sandbox's user ({exc}): move the experiment to a local disk, or set SANDBOX=none") from exc


_DATA_HOLDERS: dict[Path, int] = {}
"""How many runs in flight hold each data folder now."""
_DATA_LOCK = threading.Lock()


def _release(data_key: Path) -> int:
    """One run fewer holds the data folder (call holding _DATA_LOCK); how many still do."""
    left = _DATA_HOLDERS.get(data_key, 1) - 1
    if left:
        _DATA_HOLDERS[data_key] = left
    else:
        _DATA_HOLDERS.pop(data_key, None)
    return left


def reclaim(*folders: Path) -> None:
    """Give everything under `folders` back to the runner's user and group, so the user can read and remove it."""
    for folder in folders:
        chown_tree(folder, os.geteuid(), os.getegid())


def chown_tree(folder: Path, uid: int, gid: int) -> None:
    """Own `folder` and everything below it as uid:gid, never following a symlink the script may have planted."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        return
    _chown_if_needed(str(folder), uid, gid)
    # fwalk holds each directory open, so a folder swapped for a symlink mid-walk is not followed.
    for _, dirs, files, dir_fd in os.fwalk(folder, follow_symlinks=False):
        for name in dirs + files:
            _chown_if_needed(name, uid, gid, dir_fd=dir_fd)


def _chown_if_needed(name: str, uid: int, gid: int, dir_fd: int | None = None) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass


class _View:
    """bwrap mount arguments, creating the folders each mount point needs with mode 0755 (bwrap's own are 0700)."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self.mounts: dict[Path, str] = {}
        """Mount point → "bind" (mirrors a host folder) or "tmpfs"/"dir" (empty, made here)."""

    def covers(self, path: Path) -> bool:
        """Whether `path` already shows its host content: it lies under a bind of the same path."""
        return self._innermost(Path(path)) == "bind"

    def bind(self, source: Path | str, dest: Path | str | None = None, *, writable: bool = False, device: bool = False) -> None:
        dest = Path(dest or source)
        self._parents(dest)
        option = "--dev-bind" if device else "--bind" if writable else "--ro-bind"
        self.args += [option, str(source), str(dest)]
        self.mounts[dest] = "bind" if dest == Path(source) else "dir"

    def tmpfs(self, dest: Path | str, perms: str = "0755") -> None:
        dest = Path(dest)
        self._parents(dest)
        self.args += ["--perms", perms, "--tmpfs", str(dest)]
        self.mounts[dest] = "tmpfs"

    def dir(self, dest: Path | str, perms: str = "0755") -> None:
        dest = Path(dest)
        self._parents(dest)
        self.args += ["--perms", perms, "--dir", str(dest)]
        self.mounts[dest] = "dir"

    def symlink(self, target: str, dest: str) -> None:
        self._parents(Path(dest))
        self.args += ["--symlink", target, dest]
        self.mounts[Path(dest)] = "link"

    def remount_ro(self, dest: Path | str) -> None:
        self.args += ["--remount-ro", str(dest)]

    def _innermost(self, path: Path) -> str | None:
        for folder in (path, *path.parents):
            if folder in self.mounts:
                return self.mounts[folder]
        return None

    def _parents(self, dest: Path) -> None:
        for parent in reversed(dest.parents[:-1]):  # outermost first, "/" left out
            if parent not in self.mounts and self._innermost(parent) != "bind":
                self.args += ["--perms", "0755", "--dir", str(parent)]
                self.mounts[parent] = "dir"


def _system_view(view: _View) -> None:
    for name in TOP_LEVEL:
        path = Path(name)
        if path.is_symlink():
            view.symlink(os.readlink(path), name)
        elif path.is_dir():
            view.bind(path)
    for name in SYSTEM_DIRS:
        if Path(name).is_dir():
            view.bind(name)
    view.args += ["--proc", "/proc", "--dev", "/dev"]
    view.mounts.update({Path("/proc"): "tmpfs", Path("/dev"): "tmpfs"})
    view.tmpfs("/dev/shm", perms="1777")  # POSIX shared memory: DataLoader workers, multiprocessing locks
    view.tmpfs("/tmp", perms="1777")


def _namespaces(*, network: bool) -> list[str]:
    unshare = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]
    return unshare if network else [*unshare, "--unshare-net"]


def _real_homes() -> list[Path]:
    """The runner's home folders ($HOME and the password database's), except / and the system folders."""
    homes = {os.environ.get("HOME", ""), _passwd_home()}
    keep = {Path(h).resolve() for h in homes if h}
    system = {Path("/"), Path("/tmp"), *map(Path, SYSTEM_DIRS), *map(Path, TOP_LEVEL)}
    return sorted(h for h in keep if h not in system and h.is_dir())


def _passwd_home() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        return ""


def python_installation(python: str, homes: list[Path] | None = None) -> list[Path]:
    """The folders of `python`'s installation that the sandbox shows read-only; SandboxError when one holds a home folder,
    which the sandbox must hide. Checked at start too, so that no LLM call is spent on an experiment that cannot run."""
    homes = _real_homes() if homes is None else homes
    folders = python_dirs(python)
    for folder in folders:
        if held := [h for h in homes if h == folder or folder in h.parents]:
            raise SandboxError(
                f"the Python that runs train.py ({python}) is installed in {folder}, which holds the home folder {held[0]} that the"
                " sandbox hides: set TRAIN_PYTHON (--python) to an interpreter installed in a folder of its own, or set SANDBOX=none"
            )
    return folders


def python_dirs(python: str) -> list[Path]:
    """Folders the interpreter `python` needs: its prefixes, its real executable's folder, and library folders on its sys.path.

    Symlinks are resolved, and a venv's base installation (pyvenv.cfg's `home`) comes along. The folder of `python`
    itself only when it is no symlink: ~/bin/python links to an installation, not to the rest of ~/bin. Other
    sys.path entries (the runner's own source, the current folder) stay hidden: they may hold a .env.
    """
    python = os.path.abspath(python)
    if not os.path.isfile(python):  # nothing to show; its folder might be anything (the runner's current one, with a .env)
        return []
    reported = _where_python_lives(python)
    candidates = [*reported[:4], *(p for p in reported[4:] if p and PYTHON_LIBRARY.search(p)), os.path.dirname(os.path.realpath(python))]
    if not os.path.islink(python):
        candidates.append(os.path.dirname(python))
    for config in (Path(python).parent / "pyvenv.cfg", Path(python).parent.parent / "pyvenv.cfg"):
        try:
            entries = [line.partition("=") for line in config.read_text().splitlines()]
        except OSError:
            continue
        candidates += [value.strip() for name, _, value in entries if name.strip() == "home"]
    folders: set[Path] = set()
    for candidate in candidates:
        for path in (Path(os.path.abspath(candidate)), Path(os.path.realpath(candidate))):
            if path.is_dir() and path not in NEVER_BOUND:
                folders.add(path)
    # Keep only the outermost of nested folders: binding both would hide nothing but cost a mount.
    return sorted(p for p in folders if not any(other in p.parents for other in folders))


@functools.lru_cache(maxsize=16)
def _where_python_lives(python: str) -> tuple[str, ...]:
    """What `python` reports: its four prefixes, then its sys.path; empty when it does not run (the folders of its path still count)."""
    try:
        command = [python, "-I", "-c", WHERE_PYTHON_LIVES]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, cwd="/", stdin=subprocess.DEVNULL)
        reported = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return ()
    return tuple(str(p) for p in reported) if isinstance(reported, list) else ()
