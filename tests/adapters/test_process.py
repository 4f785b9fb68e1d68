"""Tests for adapters/process.py: the child's log, exit code, time limit, and no process left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from adapters import process
from adapters.process import (
    Limits,
    LimitToolMissing,
    RunCancelled,
    cancel_running_scripts,
    check_limit_tools,
    child_command,
    kill_leftover,
    run_script,
)

# Scripts sleep far longer than any test waits, yet briefly enough that a broken kill fails in seconds, not minutes.
SPAWN_GRANDCHILD = """\
import os, subprocess, time
grandchild = subprocess.Popen(["sleep", "60"])
print(f"pids {os.getpid()} {grandchild.pid}", flush=True)
"""
SETSID_DAEMON = """\
if os.fork() == 0:  # a daemon: out of the group with setsid(), then orphaned at once
    os.setsid()
    if os.fork() == 0:
        os.write(1, f"daemon {os.getpid()}\\n".encode())
        time.sleep(60)
    os._exit(0)
"""


def write_script(tmp_path: Path, body: str) -> Path:
    run_dir = tmp_path / "run_1"
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "train.py"
    script.write_text(textwrap.dedent(body))
    return script


def run(script: Path, timeout_s: float = 30, **kwargs) -> process.ProcessResult:
    kwargs.setdefault("limits", Limits(timeout_s=timeout_s))
    kwargs.setdefault("env", {**os.environ, "PYTHONUNBUFFERED": "1"})
    return run_script([sys.executable, script.name], cwd=script.parent, log_path=script.parent / "output.log", **kwargs)


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting for its reaper counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def gone_soon(pid: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def kill_if_ours(pid: int, folder: Path) -> None:
    """SIGKILL `pid` if it still runs inside `folder`, so that a reused pid is never hit."""
    try:
        if Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(folder.resolve()):
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


@pytest.fixture
def pids_printed(tmp_path):
    """Reads the child and grandchild pids a script printed; whichever still runs is killed after the test."""
    seen: list[int] = []

    def read(log: Path) -> tuple[int, int]:
        line = next(line for line in log.read_text().splitlines() if line.startswith("pids "))
        child, grandchild = (int(pid) for pid in line.split()[1:])
        seen.extend((child, grandchild))
        return child, grandchild

    yield read
    for pid in seen:
        kill_if_ours(pid, tmp_path)


@pytest.fixture
def start_group_leader():
    """Starts a session leader in a folder with a grandchild in its group, as a crashed runner leaves them."""
    started: list[tuple[subprocess.Popen, int, Path]] = []

    def start(cwd: Path) -> tuple[subprocess.Popen, int]:
        code = SPAWN_GRANDCHILD + "time.sleep(30)\n"
        leader = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        grandchild = int(leader.stdout.readline().split()[2])
        started.append((leader, grandchild, cwd))
        return leader, grandchild

    yield start
    for leader, grandchild, cwd in started:
        leader.kill()  # not yet waited for, so its pid cannot have been reused
        leader.wait()
        leader.stdout.close()
        kill_if_ours(grandchild, cwd)


# --- output, exit code ---


def test_output_goes_to_log_and_to_on_output(tmp_path):
    script = write_script(
        tmp_path,
        """\
        import sys
        print("line 1")
        print("line 2")
        print("to stderr", file=sys.stderr)
        sys.stdout.write("no newline at the end")
        """,
    )
    seen: list[str] = []
    result = run(script, on_output=seen.extend)
    assert (script.parent / "output.log").read_bytes() == b"line 1\nline 2\nto stderr\nno newline at the end"
    assert seen == ["line 1", "line 2", "to stderr", "no newline at the end"]
    assert result.exit_code == 0
    assert not result.timed_out


def test_long_lines_are_cut_for_on_output_but_whole_in_the_log(tmp_path):
    script = write_script(tmp_path, 'print("a" * 200_000)\nprint("short")\n')
    seen: list[str] = []
    run(script, on_output=seen.extend)
    assert (script.parent / "output.log").read_bytes() == b"a" * 200_000 + b"\nshort\n"
    assert seen == ["a" * process.ECHO_LINE_CHARS, "short"]


def test_non_zero_exit_code_is_propagated(tmp_path):
    script = write_script(tmp_path, "import sys\nsys.exit(3)\n")
    result = run(script)
    assert result.exit_code == 3
    assert not result.timed_out


def test_exit_by_signal_is_negative(tmp_path):
    script = write_script(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = run(script)
    assert result.exit_code == -signal.SIGKILL
    assert not result.timed_out


def test_script_runs_in_its_folder(tmp_path):
    script = write_script(tmp_path, "import os\nprint(os.getcwd())\n")
    run(script)
    assert (script.parent / "output.log").read_text().strip() == str(script.parent.resolve())


def test_log_is_written_while_the_script_runs(tmp_path):
    script = write_script(
        tmp_path,
        """\
        import os, time
        print("first", flush=True)
        deadline = time.time() + 20
        while not os.path.exists("go") and time.time() < deadline:
            time.sleep(0.02)
        print("second")
        """,
    )
    log = script.parent / "output.log"
    log_while_running: list[str] = []

    def on_output(lines: list[str]) -> None:
        if "first" in lines and not log_while_running:
            log_while_running.append(log.read_text())
            (script.parent / "go").touch()

    result = run(script, on_output=on_output)
    assert log_while_running == ["first\n"]
    assert log.read_text() == "first\nsecond\n"
    assert result.exit_code == 0


def test_pid_file_is_there_during_the_run_and_gone_after(tmp_path):
    script = write_script(tmp_path, 'import time\nprint("up", flush=True)\ntime.sleep(1)\n')
    pid_file = tmp_path / ".runner" / "child.json"
    records: list[dict] = []
    run(script, pid_file=pid_file, on_output=lambda lines: records.append(json.loads(pid_file.read_text())))
    assert records, "on_output was never called"
    assert records[0]["cwd"] == str(script.parent.resolve())
    assert isinstance(records[0]["pid"], int)
    assert not pid_file.exists()


def test_many_short_lived_children_leave_the_tree_and_the_pid_file_small(tmp_path, monkeypatch):
    """DataLoader workers respawned every epoch: 5,000 children over the run, never more than 20 at once."""
    monkeypatch.setattr(process, "POLL_S", 0.005)  # scan often, so that many of the children are seen
    monkeypatch.setattr(process, "PID_FILE_EVERY_S", 0.0)
    script = write_script(
        tmp_path,
        """\
        import os, time
        running = 0
        for started in range(5000):
            if os.fork() == 0:
                time.sleep(0.01)
                os._exit(0)
            running += 1
            if running == 20:
                os.wait()
                running -= 1
            if started % 250 == 0:
                print(f"started {started}", flush=True)
        while running:
            os.wait()
            running -= 1
        print("done")
        """,
    )
    pid_file = tmp_path / ".runner" / "child.json"
    tree_sizes: list[int] = []
    file_sizes: list[int] = []
    update = process._PidRecord.update

    def watched_update(record, tree):
        tree_sizes.append(len(tree.seen))
        update(record, tree)
        if pid_file.exists():
            file_sizes.append(pid_file.stat().st_size)

    monkeypatch.setattr(process._PidRecord, "update", watched_update)
    result = run(script, timeout_s=120, pid_file=pid_file)
    assert result.exit_code == 0, (script.parent / "output.log").read_text()
    assert len(tree_sizes) > 100, "the tree was hardly ever scanned: the test proves nothing"
    assert max(tree_sizes) <= 60  # the script and its 20 children, and the few reaped between two reads of /proc
    assert max(file_sizes) < 2000


# --- the child's set-up, without Python code between fork and exec ---


def test_the_child_is_started_without_preexec_fn_and_gets_its_limits(tmp_path, monkeypatch):
    started: list[dict] = []
    popen = subprocess.Popen

    def spy(*args, **kwargs):
        started.append(kwargs)
        return popen(*args, **kwargs)

    monkeypatch.setattr(process.subprocess, "Popen", spy)
    script = write_script(tmp_path, 'print(open("/proc/self/limits").read())\n')
    result = run(script, limits=Limits(timeout_s=30, file_size_mb=3, max_processes=100))
    assert result.exit_code == 0
    assert started and all(kwargs.get("preexec_fn") is None for kwargs in started)  # unsafe while the runner's threads run
    assert started[-1]["start_new_session"] is True
    limits = {line[:26].strip(): line[26:].split()[:2] for line in (script.parent / "output.log").read_text().splitlines()[1:] if line.strip()}
    assert limits["Max file size"] == [str(3 * 2**20)] * 2  # soft and hard: the script cannot raise it again
    others = process._tasks_of_uid(os.getuid()) if os.getuid() != 0 else 0
    assert 100 <= int(limits["Max processes"][0]) <= 100 + others + 50


def test_the_child_dies_with_a_runner_killed_by_sigkill(tmp_path):
    script = write_script(tmp_path, 'import os, time\nprint(f"pids {os.getpid()} 0", flush=True)\ntime.sleep(60)\n')
    runner_code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from adapters.process import Limits, run_script\n"
        "folder = Path(sys.argv[1])\n"
        "run_script([sys.executable, 'train.py'], cwd=folder, log_path=folder / 'output.log', limits=Limits(timeout_s=30), env=dict(os.environ))\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", runner_code, str(script.parent)], cwd=Path(process.__file__).parents[1])
    log = script.parent / "output.log"
    try:
        deadline = time.monotonic() + 20
        while not (log.exists() and log.read_text().startswith("pids ")) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = int(log.read_text().split()[1])
    finally:
        runner.kill()
        runner.wait()
    try:
        assert gone_soon(child), "the script outlived its runner"
    finally:
        kill_if_ours(child, tmp_path)


def test_a_child_whose_runner_died_before_it_was_set_up_does_not_start(tmp_path):
    command = child_command(["echo", "started"], Limits(timeout_s=30))
    runner_pid = command.index(str(os.getpid()))
    command[runner_pid] = "1"  # as if the runner had died and the child were init's
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "started" not in done.stdout


@pytest.mark.parametrize(
    ("fake", "needed", "limits"),
    [
        ("setpriv", "setpriv", Limits(timeout_s=30)),
        ("prlimit", "prlimit", Limits(timeout_s=30, file_size_mb=1)),
    ],
)
def test_a_missing_util_linux_program_refuses_the_run_rather_than_drop_a_limit(tmp_path, monkeypatch, fake, needed, limits):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("setpriv", "prlimit"):
        if name != fake:
            (bin_dir / name).symlink_to(process.shutil.which(name))
    monkeypatch.setenv("PATH", str(bin_dir))
    process._util_linux.cache_clear()
    try:
        script = write_script(tmp_path, "print('ran')\n")
        with pytest.raises(LimitToolMissing, match=f"{needed} is not installed.*apt-get install util-linux"):
            run(script, limits=limits)
        assert not (script.parent / "output.log").exists()
        with pytest.raises(LimitToolMissing, match=needed):
            check_limit_tools()  # what the runner checks at start-up
    finally:
        process._util_linux.cache_clear()


def test_a_setpriv_too_old_for_pdeathsig_refuses_the_run(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    old = tmp_path / "bin" / "setpriv"
    old.write_text("#!/bin/sh\necho 'Usage: setpriv [options] <program> [<argument>...]'\necho ' --nnp, --no-new-privs   disallow granting new privileges'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", f"{old.parent}:{os.environ['PATH']}")
    process._util_linux.cache_clear()
    try:
        with pytest.raises(LimitToolMissing, match="has no --pdeathsig option.*util-linux 2.33"):
            child_command(["true"], Limits(timeout_s=30))
    finally:
        process._util_linux.cache_clear()


# --- no process left behind ---


def test_timeout_kills_the_whole_process_group(tmp_path, pids_printed):
    script = write_script(tmp_path, SPAWN_GRANDCHILD + "time.sleep(30)\n")
    timeout_s = 1.0
    started = time.monotonic()
    result = run(script, timeout_s=timeout_s)
    elapsed = time.monotonic() - started
    child, grandchild = pids_printed(script.parent / "output.log")
    assert result.timed_out
    assert result.exit_code is None
    assert timeout_s <= result.duration_s < timeout_s + process.KILL_GRACE_S
    assert elapsed < timeout_s + process.KILL_GRACE_S
    assert gone_soon(child)
    assert gone_soon(grandchild), f"grandchild {grandchild} outlived the timeout"


def test_timeout_kills_a_group_that_ignores_sigterm(tmp_path, monkeypatch, pids_printed):
    monkeypatch.setattr(process, "KILL_GRACE_S", 0.5)
    # An ignored signal stays ignored across exec, so the grandchild ignores SIGTERM too.
    script = write_script(tmp_path, "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SPAWN_GRANDCHILD + "time.sleep(30)\n")
    result = run(script, timeout_s=1.0)
    child, grandchild = pids_printed(script.parent / "output.log")
    assert result.timed_out
    assert result.duration_s < 1.0 + 0.5 + 2.0
    assert gone_soon(child)
    assert gone_soon(grandchild)


def test_exception_in_on_output_kills_the_group(tmp_path, pids_printed):
    script = write_script(tmp_path, SPAWN_GRANDCHILD + 'print("training", flush=True)\ntime.sleep(30)\n')
    pid_file = tmp_path / ".runner" / "child.json"

    def interrupt(lines: list[str]) -> None:
        if "training" in lines:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(script, on_output=interrupt, pid_file=pid_file)
    child, grandchild = pids_printed(script.parent / "output.log")
    assert time.monotonic() - started < 10
    assert gone_soon(child)
    assert gone_soon(grandchild)
    assert not pid_file.exists()


def test_a_finished_script_leaves_no_background_process(tmp_path, pids_printed):
    script = write_script(tmp_path, SPAWN_GRANDCHILD)
    result = run(script)
    _, grandchild = pids_printed(script.parent / "output.log")
    assert result.exit_code == 0
    assert gone_soon(grandchild)


def test_cancel_kills_the_running_tree_and_refuses_new_runs(tmp_path, monkeypatch, pids_printed, request):
    monkeypatch.setattr(process, "_cancelled", threading.Event())  # cancelling is for good: keep it to this test
    script = write_script(tmp_path, SPAWN_GRANDCHILD + SETSID_DAEMON + "time.sleep(30)\n")
    log = script.parent / "output.log"
    raised: list[BaseException] = []

    def run_in_thread() -> None:
        try:
            run(script)
        except BaseException as exc:
            raised.append(exc)

    runner = threading.Thread(target=run_in_thread)
    runner.start()
    deadline = time.monotonic() + 10
    while not (log.exists() and "daemon " in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child, grandchild = pids_printed(log)
    daemon = int(next(line for line in log.read_text().splitlines() if line.startswith("daemon ")).split()[1])
    request.addfinalizer(lambda: kill_if_ours(daemon, tmp_path))
    cancel_running_scripts()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert [type(exc) for exc in raised] == [RunCancelled]
    assert gone_soon(child)
    assert gone_soon(grandchild)
    assert gone_soon(daemon), f"daemon {daemon} outlived the cancel"

    later = write_script(tmp_path / "later", "print('never')\n")
    with pytest.raises(RunCancelled):
        run(later)
    assert not (later.parent / "output.log").exists()


def test_kill_leftover_kills_the_recorded_group(tmp_path, start_group_leader):
    run_dir = tmp_path / "run_1"
    run_dir.mkdir()
    leader, grandchild = start_group_leader(run_dir)
    pid_file = tmp_path / "child.json"
    pid_file.write_text(json.dumps({"pid": leader.pid, "cwd": str(run_dir.resolve())}))
    assert kill_leftover(pid_file) is True
    assert leader.wait(timeout=5) == -signal.SIGKILL
    assert gone_soon(grandchild)
    assert not pid_file.exists()


def test_kill_leftover_spares_a_process_in_another_folder(tmp_path, start_group_leader):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    leader, grandchild = start_group_leader(elsewhere)
    pid_file = tmp_path / "child.json"
    pid_file.write_text(json.dumps({"pid": leader.pid, "cwd": str(tmp_path / "run_1")}))
    assert kill_leftover(pid_file) is False
    time.sleep(0.2)
    assert leader.poll() is None
    assert alive(grandchild)
    assert not pid_file.exists()


def test_kill_leftover_with_a_stale_or_broken_record(tmp_path):
    pid_file = tmp_path / "child.json"
    assert kill_leftover(pid_file) is False

    pid_file.write_text("{not json")
    assert kill_leftover(pid_file) is False

    finished = subprocess.Popen(["true"], cwd=tmp_path)
    finished.wait()
    pid_file.write_text(json.dumps({"pid": finished.pid, "cwd": str(tmp_path)}))
    assert kill_leftover(pid_file) is False
    assert not pid_file.exists()


def test_a_bar_redrawn_in_place_reaches_on_redraw_before_its_line_ends(tmp_path: Path):
    # tqdm on a pipe redraws its bar after a carriage return and ends the line only when the bar closes.
    script = write_script(
        tmp_path,
        """
        import sys, time
        for done in range(1, 5):
            sys.stderr.write(f"\\rEpoch 1:  {done * 25}%|###| {done}/4 [00:0{done}<00:0{4 - done}, 1.00it/s]")
            sys.stderr.flush()
            time.sleep(0.4)
        sys.stderr.write("\\n")
        print("done", flush=True)
        """,
    )
    redrawn: list[str] = []
    lines: list[str] = []
    result = run(script, on_output=lines.extend, on_redraw=redrawn.append)
    assert result.exit_code == 0
    assert redrawn and all(line.startswith("Epoch 1:") and "\r" not in line for line in redrawn)
    assert any("2/4" in line for line in redrawn)  # seen while the bar was at 2 of 4, long before the line ended
    assert lines[-1] == "done"


def test_runs_started_at_the_same_moment_keep_their_own_processes(tmp_path: Path):
    """As a resume restarts the runs in flight: several run_script calls at once, over and over. None may adopt, kill or
    reap another's child (a child reaped by another run's tree comes back as exit 0 with an empty log)."""
    ended: list[tuple[int, int, int, str]] = []

    def runs(worker: int) -> None:
        for attempt in range(10):
            folder = tmp_path / f"{worker}-{attempt}"
            folder.mkdir()
            outcome = run_script(
                [sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(0.05)"],
                cwd=folder,
                log_path=folder / "output.log",
                limits=Limits(timeout_s=30, max_processes=8192),
                env={"PATH": os.environ["PATH"]},
                pid_file=folder / "child.json",
            )
            ended.append((worker, attempt, outcome.exit_code, (folder / "output.log").read_text()))

    workers = [threading.Thread(target=runs, args=(worker,)) for worker in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert len(ended) == 40
    assert [run for run in ended if run[2:] != (0, "hello\n")] == []


def test_a_runs_orphan_is_its_own_not_the_run_beside_it(tmp_path: Path):
    """Run A leaves an orphan (a backgrounded sleep) after run B began; B ends first: the orphan lives on with A, and ends with A."""
    orphan_pid = tmp_path / "orphan.pid"
    a_script = f"import subprocess, time\ntime.sleep(1.0)\nsubprocess.run(['sh', '-c', 'sleep 30 & echo $! > {orphan_pid}'])\ntime.sleep(3.0)\n"
    outcomes = {}

    def run(name: str, script: str, delay: float) -> None:
        time.sleep(delay)
        folder = tmp_path / name
        folder.mkdir()
        outcomes[name] = run_script(
            [sys.executable, "-c", script], cwd=folder, log_path=folder / "output.log", limits=Limits(timeout_s=30), env={"PATH": os.environ["PATH"]}
        )

    a = threading.Thread(target=run, args=("a", a_script, 0.0))
    b = threading.Thread(target=run, args=("b", "import time; time.sleep(2.0)", 0.5))
    a.start()
    b.start()
    b.join()
    orphan = int(orphan_pid.read_text())
    assert Path(f"/proc/{orphan}").exists() and b"sleep" in Path(f"/proc/{orphan}/cmdline").read_bytes()  # B's end left A's orphan alone
    a.join()
    assert not Path(f"/proc/{orphan}").exists() or Path(f"/proc/{orphan}/stat").read_text().split(")")[1].split()[0] == "Z"  # gone with A
    assert outcomes["a"].exit_code == 0 and outcomes["b"].exit_code == 0
