"""Attacks on run_script's limits, each a real run: escaping the process group, memory, fork bombs, huge files and logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from adapters import process
from adapters.process import Limits, kill_leftover, run_script

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

# Every escapee sleeps for a minute: long past any test, short enough that a broken kill cleans itself up.
SETSID_GRANDCHILD = """\
import os, time
if os.fork() == 0:
    os.setsid()
    os.write(1, f"grandchild {os.getpid()}\\n".encode())  # one write: lines of two processes cannot interleave
    time.sleep(60)
    os._exit(0)
"""

DOUBLE_FORK_DAEMON = """\
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir("../elsewhere")
        os.write(1, f"daemon {os.getpid()}\\n".encode())
        time.sleep(60)
    os._exit(0)  # the daemon is orphaned at once, most likely before the runner ever saw it
"""

FORK_BOMB = """\
import os, time
budget = 1500  # processes this one may still start, directly or not: a broken runner cannot take the machine down
while budget > 0:
    budget -= 1
    child_budget = budget // 2
    try:
        pid = os.fork()
    except BlockingIOError:  # a non-root uid meets RLIMIT_NPROC
        break
    if pid == 0:
        os.setsid()  # out of the group, so that killing the group is not enough
        budget = child_budget
    else:
        budget -= child_budget
time.sleep(60)
"""


@pytest.fixture
def run_dir(tmp_path):
    """The run's folder, beside `elsewhere/` where daemons go; whatever still works in either is killed after the test."""
    folder = tmp_path / "run_1"
    folder.mkdir()
    (tmp_path / "elsewhere").mkdir()
    yield folder
    for _ in range(20):  # a few rounds, in case a broken runner left a fork bomb
        if not (left := working_in(tmp_path)):
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


def run(folder: Path, code: str, argv: list[str] | None = None, **limits) -> process.ProcessResult:
    (folder / "train.py").write_text(textwrap.dedent(code))
    limits.setdefault("timeout_s", 30)
    return run_script(
        argv or [sys.executable, "train.py"],
        cwd=folder,
        log_path=folder / "output.log",
        limits=Limits(**limits),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def working_in(folder: Path) -> list[int]:
    """Pids of the live processes whose working directory is inside `folder`."""
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and Path(os.readlink(f"/proc/{name}/cwd")).is_relative_to(folder.resolve()):
                found.append(int(name))
        except OSError:
            pass  # gone, or a zombie
    return found


def zombie_children() -> set[int]:
    """This process's children that exited and wait to be reaped."""
    found = set()
    for name in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            found.add(int(name))
    return found


def printed_pid(log: Path, label: str) -> int:
    return int(next(line for line in log.read_text().splitlines() if line.startswith(label + " ")).split()[1])


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting for its reaper counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def vanished(pid: int, within_s: float = 1.0) -> bool:
    """True once `pid` has no /proc entry: killed and reaped, not left a zombie."""
    deadline = time.monotonic() + within_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


# --- no process left behind, setsid() or not ---


def test_timeout_kills_a_grandchild_that_left_the_group(run_dir):
    result = run(run_dir, SETSID_GRANDCHILD + "time.sleep(60)\n", timeout_s=1)
    grandchild = printed_pid(run_dir / "output.log", "grandchild")
    assert result.timed_out and result.stopped == "timeout"
    assert result.duration_s < 1 + 2
    assert vanished(grandchild), f"setsid()'d grandchild {grandchild} outlived the timeout"
    assert not working_in(run_dir.parent)


def test_timeout_kills_a_double_forked_daemon(run_dir):
    result = run(run_dir, DOUBLE_FORK_DAEMON + "time.sleep(60)\n", timeout_s=1)
    daemon = printed_pid(run_dir / "output.log", "daemon")
    assert result.timed_out
    assert vanished(daemon), f"daemon {daemon} outlived the timeout"
    assert not working_in(run_dir.parent)


def test_a_finished_script_leaves_no_daemon(run_dir):
    result = run(run_dir, DOUBLE_FORK_DAEMON + "time.sleep(0.5)\n")
    daemon = printed_pid(run_dir / "output.log", "daemon")
    assert result.exit_code == 0 and result.stopped == ""
    assert vanished(daemon)


def test_kill_leftover_finds_the_daemon_of_a_runner_that_died(run_dir):
    pid_file = run_dir.parent / ".runner" / "child.json"
    (run_dir / "train.py").write_text(DOUBLE_FORK_DAEMON + "time.sleep(60)\n")
    runner_code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from adapters.process import Limits, run_script\n"
        "folder = Path(sys.argv[1])\n"
        "run_script([sys.executable, 'train.py'], cwd=folder, log_path=folder / 'output.log', limits=Limits(timeout_s=30),\n"
        "           env=dict(os.environ), pid_file=Path(sys.argv[2]))\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", runner_code, str(run_dir), str(pid_file)], cwd=REPO)
    try:
        deadline = time.monotonic() + 10
        while not on_record(pid_file, run_dir / "output.log") and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon = printed_pid(run_dir / "output.log", "daemon")
    finally:
        runner.kill()
        runner.wait()
    time.sleep(0.2)
    assert alive(daemon), "the daemon died with the runner: nothing left to find"
    assert kill_leftover(pid_file) is True
    assert not alive(daemon)  # it may stay a zombie of whoever adopted it
    assert not working_in(run_dir.parent)
    assert not pid_file.exists()


def on_record(pid_file: Path, log: Path) -> bool:
    """Whether the daemon the script printed is in the pid file yet."""
    try:
        return printed_pid(log, "daemon") in {pid for pid, _ in json.loads(pid_file.read_text())["tree"]}
    except (OSError, StopIteration, ValueError, KeyError):
        return False


# --- memory ---


def test_memory_past_the_limit_stops_the_run(run_dir):
    code = """\
    import time
    held = []
    for step in range(40):  # 50 MB at a time, up to 2 GB
        held.append(b"x" * 50_000_000)
        print(f"{50 * len(held)} MB", flush=True)
    print("all of it")
    time.sleep(60)
    """
    started = time.monotonic()
    result = run(run_dir, code, memory_mb=200)
    assert result.stopped == "memory"
    assert result.exit_code is None and not result.timed_out
    assert time.monotonic() - started < 5
    assert result.peak_memory_mb > 200
    assert "all of it" not in (run_dir / "output.log").read_text()
    assert not working_in(run_dir.parent)


def test_memory_is_summed_over_the_tree(run_dir):
    code = """\
    import os, time
    for _ in range(4):  # 70 MB each: no process alone passes the limit
        if os.fork() == 0:
            held = b"x" * 70_000_000
            time.sleep(60)
            os._exit(0)
    time.sleep(60)
    """
    result = run(run_dir, code, memory_mb=200)
    assert result.stopped == "memory"
    assert not working_in(run_dir.parent)


def test_peak_memory_is_measured_without_a_limit(run_dir):
    result = run(run_dir, 'import time\nheld = b"x" * 100_000_000\ntime.sleep(0.5)\n')
    assert result.exit_code == 0 and result.stopped == ""
    assert 100 < result.peak_memory_mb < 1000


def test_pages_shared_by_forked_workers_count_once(run_dir):
    code = """\
    import os, time
    held = b"x" * 150_000_000
    for _ in range(3):  # workers that share `held` with their parent, as DataLoader workers share a dataset
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    time.sleep(1.5)
    """
    result = run(run_dir, code, memory_mb=300)
    assert result.exit_code == 0 and result.stopped == ""
    assert result.peak_memory_mb > 300  # summed RSS counts `held` four times; the limit is checked against PSS


# --- processes ---


def test_a_fork_bomb_is_stopped_and_nothing_of_it_survives(run_dir):
    zombies_before = zombie_children()
    started = time.monotonic()
    result = run(run_dir, FORK_BOMB, max_processes=64, timeout_s=10)
    elapsed = time.monotonic() - started
    # As root nothing but the watchdog stops it; any other uid meets RLIMIT_NPROC first, and may then hang until the timeout.
    assert result.stopped == "processes" if os.geteuid() == 0 else result.stopped in ("processes", "timeout")
    assert result.exit_code is None
    assert elapsed < 10 + process.KILL_WITHIN_S
    if os.geteuid() == 0:
        assert elapsed < 5
    assert not working_in(run_dir.parent)
    assert zombie_children() <= zombies_before, "the runner left zombies of the bomb unreaped"


def unprivileged_python() -> list[str]:
    """A command line that runs python3 as `nobody` when we are root; none is needed otherwise."""
    if os.geteuid() != 0:
        return [sys.executable]
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if not (shutil.which("setpriv") and python):
        pytest.skip("setpriv or a system python3 is missing: no way to run as an unprivileged user")
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python]
    if subprocess.run([*command, "-c", "pass"], cwd="/", capture_output=True).returncode != 0:
        pytest.skip("python3 does not run as nobody here")
    return command


def test_the_kernel_refuses_forks_past_the_limit_to_an_unprivileged_user(run_dir):
    code = """\
    import os, time
    forked = refused = 0
    for _ in range(40):
        try:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            forked += 1
        except BlockingIOError:
            refused += 1
    print(f"forked {forked} refused {refused}", flush=True)
    """
    result = run(run_dir, code, argv=[*unprivileged_python(), "-c", textwrap.dedent(code)], max_processes=16)
    forked, refused = (int(word) for word in (run_dir / "output.log").read_text().split()[1::2])
    assert result.exit_code == 0, (run_dir / "output.log").read_text()
    assert refused > 0 and forked < 16
    assert not working_in(run_dir.parent)


# --- files and the log ---


def test_a_file_cannot_grow_past_the_limit(run_dir):
    code = """\
    written = 0
    try:
        with open("big.bin", "wb", buffering=0) as big:
            while written < 5 * 2**20:
                written += big.write(b"x" * 65536)
    except OSError as error:
        print(f"refused after {written} bytes: {error.strerror}")
    """
    result = run(run_dir, code, file_size_mb=1)
    assert result.exit_code == 0
    assert "refused after 1048576 bytes" in (run_dir / "output.log").read_text()
    assert (run_dir / "big.bin").stat().st_size <= MIB


def test_a_writer_that_does_not_catch_sigxfsz_dies_of_it(run_dir):
    result = run(run_dir, "", argv=["sh", "-c", "head -c 5000000 /dev/zero > big.bin"], file_size_mb=1)
    assert result.exit_code == 128 + signal.SIGXFSZ  # head died of the signal; sh reports it
    assert (run_dir / "big.bin").stat().st_size <= MIB


def test_the_file_size_limit_does_not_cut_output_log(run_dir):
    result = run(run_dir, 'print("y" * 3_000_000)\n', file_size_mb=1)
    assert result.exit_code == 0
    assert (run_dir / "output.log").stat().st_size == 3_000_001


def test_output_log_keeps_head_and_tail_within_its_cap(run_dir):
    result = run(run_dir, 'for i in range(100_000):\n    print(f"line {i}")\n', log_max_bytes=100_000)
    log = (run_dir / "output.log").read_text()
    assert result.exit_code == 0
    assert result.log_bytes_dropped > 500_000
    assert len(log) <= 100_000 + 200
    assert log.startswith("line 0\n") and log.endswith("line 99999\n")
    assert "bytes dropped" in log


def test_the_runner_stays_small_whatever_the_script_prints(run_dir):
    code = """\
    import sys
    line = b"z" * 999 + b"\\n"
    for _ in range(100):
        sys.stdout.buffer.write(line * 1000)  # 100 MB in 1 kB lines
    sys.stdout.buffer.write(b"w" * 50_000_000)  # and one line of 50 MB
    """
    (run_dir / "train.py").write_text(textwrap.dedent(code))
    before = rss_mb()
    samples: list[float] = []
    result = run_script(
        [sys.executable, "train.py"],
        cwd=run_dir,
        log_path=run_dir / "output.log",
        limits=Limits(timeout_s=60, log_max_bytes=MIB),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        on_output=lambda lines: samples.append(rss_mb()),
    )
    assert result.exit_code == 0
    assert result.log_bytes_dropped > 140_000_000
    assert samples and max(samples) - before < 50
