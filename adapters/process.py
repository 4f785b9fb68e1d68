"""Running train.py as a child process: streamed and capped log, resource limits, and no process left behind."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from adapters.capped_log import CappedLog
from adapters.errors import SettingsError

READ_BYTES = 1024 * 1024
"""The most of the script's output read (and written to output.log) at once; also the pipe's size, where the kernel allows."""
ECHO_LINE_CHARS = 1000
ECHO_BUFFER_LINES = 200
"""Lines held between two flushes to the terminal; older ones are counted, not kept."""
KILL_GRACE_S = 5.0
"""How long a timed-out script has, after SIGTERM, to finish on its own before SIGKILL."""
KILL_WITHIN_S = 5.0
"""How long the runner keeps killing and reaping a stopped tree before it gives up on what is left (unkillable, in the kernel)."""
POLL_S = 0.25
WATCHDOG_POLL_S = 0.1
"""The poll interval when memory or process count is limited: a limit is enforced within about this long."""
PSS_EVERY_S = 1.0
"""How often, at most, the tree's proportional memory is read while its summed RSS stays over the limit."""
PID_FILE_EVERY_S = 1.0
"""How often, at most, the pid file is rewritten while the tree grows."""
MIB = 1024 * 1024
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER = 36
UTIL_LINUX_HINT = "install util-linux 2.33 or newer (Debian/Ubuntu: `apt-get install util-linux`)"
DIE_WITH_RUNNER = 'test "$PPID" = "$0" && exec "$@"'
"""Run by /bin/sh, $0 being the runner's pid, once setpriv has set the parent-death signal: a runner that died
before that moment can no longer signal the child, which is then an orphan and must not start the script."""


class RunCancelled(Exception):
    """The run was stopped from outside (Ctrl-C): it has no result to record."""


class LimitToolMissing(SettingsError):
    """A program that applies a run's limits (setpriv, prlimit) is missing; the message says which and how to install it."""


_running: set[int] = set()
"""Pids of the scripts running now, each the leader of its own process group."""
_trees: set[_ProcessTree] = set()
"""The process trees of the runs going on now (several run at once with WORKERS > 1): an orphan one of them has found is not another's."""
_running_lock = threading.Lock()
_cancelled = threading.Event()


def cancel_requested() -> bool:
    """Whether cancel_running_scripts() was called: the runner is stopping, so no new step should start."""
    return _cancelled.is_set()


def allow_new_runs() -> None:
    """Undo cancel_running_scripts() once the runner that asked for it has stopped (a Python caller may start another)."""
    _cancelled.clear()


def cancel_running_scripts() -> None:
    """Kill every running script's process group; run_script then kills the rest of its tree and raises RunCancelled, and no new one starts."""
    _cancelled.set()
    with _running_lock:
        for pgid in _running:
            kill_group(pgid)


@dataclass(frozen=True)
class Limits:
    """What one run may use; 0 means no limit."""

    timeout_s: float
    """Wall clock, from start to SIGTERM (then SIGKILL after KILL_GRACE_S)."""
    memory_mb: int = 0
    """Resident memory of the whole process tree, watched through /proc: summed RSS, confirmed by PSS (which counts a
    page shared by forked workers once) before the run is stopped. Not an address-space limit: CUDA maps huge ones."""
    file_size_mb: int = 0
    """The largest file the script may write (RLIMIT_FSIZE): past it a write fails with EFBIG or SIGXFSZ. output.log is not affected."""
    max_processes: int = 0
    """Tasks in the tree, every thread counted, as the kernel counts them for RLIMIT_NPROC: the kernel enforces it for a
    non-root uid (also after the sandbox drops to one), and the watchdog stops the run when the tree has more (root too)."""
    shared_processes: int = 0
    """The kernel's count for the whole uid (RLIMIT_NPROC) when runs in flight share one, as the sandbox's user: their
    max_processes together; 0: max_processes. The watchdog still holds each tree to max_processes."""
    log_max_bytes: int = 0
    """Size cap of output.log: past it the head and a rolling tail are kept (CappedLog)."""


@dataclass
class ProcessResult:
    """How the child ended."""

    exit_code: int | None
    """Exit status; negative when a signal ended it; None when the runner stopped it."""
    duration_s: float
    timed_out: bool
    stopped: str = ""
    """Why the runner stopped it: "" (it ended by itself), "timeout", "memory", "processes" or "cancelled" (its `cancel` was set)."""
    peak_memory_mb: float = 0.0
    """The largest summed RSS of the tree seen while it ran: exact for one process, high for forked workers that share pages."""
    log_bytes_dropped: int = 0
    """Bytes of output that output.log's cap left out."""


def run_script(
    argv: list[str],
    *,
    cwd: Path,
    log_path: Path,
    limits: Limits,
    env: Mapping[str, str],
    on_output: Callable[[list[str]], None] | None = None,
    on_redraw: Callable[[str], None] | None = None,
    pid_file: Path | None = None,
    cancel: threading.Event | None = None,
    pid_note: Mapping[str, object] | None = None,
) -> ProcessResult:
    """Run `argv` in `cwd` within `limits`; stdout and stderr go, line by line, to `log_path` and `on_output`;
    a line redrawn in place before it ends (a tqdm bar) goes to `on_redraw` as it stands at each poll.

    Several may run at once, each in its own thread. Setting `cancel` stops this one run (its result then says
    stopped="cancelled"); cancel_running_scripts() stops them all and each raises RunCancelled. `pid_note` is written
    into `pid_file` beside the processes, for readers such as `status`.

    The child leads a new session. Every process it starts is tracked through /proc, those that left its
    group with setsid() included (the runner is their subreaper, so orphans come back to it). On timeout,
    on a limit, on any exception here (Ctrl-C included) and on return, the whole tree is killed and reaped;
    if the runner itself dies, the kernel kills the child and `pid_file` lets kill_leftover() find the rest.
    Raises LimitToolMissing, before anything starts, when a program child_command() needs is missing.
    """
    if _cancelled.is_set():
        raise RunCancelled("interrupted before the run started")
    command = child_command(argv, limits)
    _become_subreaper()
    start = time.monotonic()
    with CappedLog(log_path, limits.log_max_bytes) as log:
        with _running_lock:  # the runs beside this one must never see the child before it is known as a run's own
            proc = subprocess.Popen(
                command,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
            _running.add(proc.pid)
        with contextlib.suppress(OSError):  # a bigger pipe: fewer, larger reads while the script floods its output
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, READ_BYTES)
        tree = _ProcessTree.of_child(proc.pid)
        record = _PidRecord(pid_file, tree, Path(cwd).resolve(), pid_note)
        pump = _LogPump(proc.stdout, log)
        pump.start()

        def echo() -> None:
            if on_output and (lines := pump.take()):
                on_output(lines)
            if on_redraw and (line := pump.take_redraw()) is not None:
                on_redraw(line)

        watch = _Watch(proc.pid, tree, limits, cancel)
        try:
            watch.until_done(echo, record)
        finally:
            tree.kill(group=proc.pid, within_s=KILL_WITHIN_S)
            proc.wait()
            watch.close()
            with _running_lock:
                _running.discard(proc.pid)
            pump.join(timeout=2.0)
            pump.detach()  # a process that could not be killed may still hold the pipe: what it writes is dropped
            if not pump.is_alive():
                proc.stdout.close()
            record.remove()
            tree.forget()
        echo()
    if _cancelled.is_set():
        raise RunCancelled(f"run interrupted after {time.monotonic() - start:.1f} s")
    return ProcessResult(
        exit_code=None if watch.stopped else proc.returncode,
        duration_s=time.monotonic() - start,
        timed_out=watch.stopped == "timeout",
        stopped=watch.stopped,
        peak_memory_mb=round(watch.peak_memory_mb, 1),
        log_bytes_dropped=log.dropped,
    )


class _Watch:
    """Waits for the child to exit while holding its tree to the limits; `stopped` says which one ended it."""

    def __init__(self, pid: int, tree: _ProcessTree, limits: Limits, cancel: threading.Event | None = None):
        self.pid, self.tree, self.limits, self.cancel = pid, tree, limits, cancel
        self.stopped = ""
        self.peak_memory_mb = 0.0
        self.pss_read_at = -PSS_EVERY_S
        self.exit_poll = select.poll()
        try:
            self.pidfd: int | None = os.pidfd_open(pid)  # readable once the child exits, without reaping it
            self.exit_poll.register(self.pidfd, select.POLLIN)
        except OSError:
            self.pidfd = None

    def until_done(self, echo: Callable[[], None], record: _PidRecord) -> None:
        deadline = time.monotonic() + self.limits.timeout_s if self.limits.timeout_s > 0 else float("inf")
        interval = WATCHDOG_POLL_S if self.limits.memory_mb or self.limits.max_processes else POLL_S
        while not _cancelled.is_set():
            if self.cancel is not None and self.cancel.is_set():
                if not self.exited(0):  # one that ended already ended by itself: its result stands
                    self.stopped = "cancelled"
                return
            members = self.tree.scan()
            self.tree.reap(members)
            self.stopped = self.over_limit(members)
            if not self.stopped and time.monotonic() >= deadline:
                self.stopped = "timeout"
                self.tree.signal(members, group=self.pid, signum=signal.SIGTERM)
                self.exited(KILL_GRACE_S)
            if self.stopped:
                return
            record.update(self.tree)
            echo()
            if self.exited(min(interval, max(deadline - time.monotonic(), 0.0))):
                return

    def over_limit(self, members: Mapping[int, _Proc]) -> str:
        """Which limit the tree is over now: "memory", "processes", or "" for none. Updates the peak memory too."""
        live = [pid for pid, proc in members.items() if not proc.gone]
        resident_mb = sum(members[pid].rss_pages for pid in live) * PAGE_BYTES / MIB
        self.peak_memory_mb = max(self.peak_memory_mb, resident_mb)
        if self.limits.memory_mb and resident_mb > self.limits.memory_mb and time.monotonic() - self.pss_read_at >= PSS_EVERY_S:
            # Summed RSS counts a page shared by forked workers once per worker: confirm with PSS, which splits it.
            self.pss_read_at = time.monotonic()
            if _proportional_mb(live, members) > self.limits.memory_mb:
                return "memory"
        tasks = sum(max(proc.threads, 1) for proc in members.values())  # a zombie still holds its pid
        if self.limits.max_processes and tasks > self.limits.max_processes:
            return "processes"
        return ""

    def exited(self, timeout: float) -> bool:
        """Wait up to `timeout` for the child to exit; leave it unreaped, so that its pid and group id stay ours."""
        if self.pidfd is not None:
            self.exit_poll.poll(timeout * 1000)
        else:
            time.sleep(timeout)
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)


class _Proc(NamedTuple):
    """One line of /proc/<pid>/stat, the fields the runner uses."""

    ppid: int
    pgrp: int
    session: int
    state: bytes
    threads: int
    start: int
    """Clock ticks after boot: with the pid, it names a process for good (pids are reused)."""
    rss_pages: int

    @property
    def gone(self) -> bool:
        """Exited (a zombie waiting for its parent) or being reaped."""
        return self.state in (b"Z", b"X")


def _process_table() -> dict[int, _Proc]:
    """Every process on the machine (threads aside), by pid."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := _read_stat(int(name))):
            table[int(name)] = proc
    return table


def _proportional_mb(pids: Iterable[int], procs: Mapping[int, _Proc]) -> float:
    """Proportional set size summed over `pids`: each shared page split among those that map it. The kernel walks
    the page tables to compute it (some ms per GB), so it is read only to confirm what the cheap RSS suggests."""
    total_kb = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
                total_kb += next(int(line.split()[1]) for line in rollup if line.startswith(b"Pss:"))
        except (OSError, StopIteration, ValueError):  # gone, or a kernel without smaps_rollup: count its RSS
            total_kb += procs[pid].rss_pages * PAGE_BYTES / 1024
    return total_kb / 1024


def _read_stat(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold anything
        return _Proc(
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            state=fields[0],
            threads=int(fields[17]),
            start=int(fields[19]),
            rss_pages=int(fields[21]),
        )
    except (OSError, IndexError, ValueError):
        return None


class _ProcessTree:
    """Every process a run started, found through /proc by parent links and remembered with its start time.

    A process that left the child's group with setsid() is still found through its parent; once its parent is
    gone it is re-parented to the runner, the subreaper, and found there: any child of the runner that started
    after the run's child and is not another run's child is taken as an orphan of this run.
    """

    def __init__(self, seen: dict[int, int], *, child: int | None):
        self.seen = seen
        """Start time of every process of the tree found and not reaped yet, by pid: how the next scan finds those
        that no parent link leads to any more. One that is gone from /proc is forgotten: its pid names another
        process once reused, so it could never be found again anyway."""
        self.child = child
        """The run's child, the runner's own; None for the tree of a runner that died."""
        self.adopt_since = seen[child] if child is not None else None
        if child is not None:
            with _running_lock:
                _trees.add(self)

    def forget(self) -> None:
        """The run is over: its processes are no longer this tree's to claim (another run's tree may adopt none of them either)."""
        with _running_lock:
            _trees.discard(self)

    @classmethod
    def of_child(cls, pid: int) -> _ProcessTree:
        proc = _read_stat(pid)
        return cls({pid: proc.start if proc else 0}, child=pid)

    def scan(self) -> dict[int, _Proc]:
        """The tree's processes now, zombies included; new ones are remembered, those reaped since forgotten."""
        table = _process_table()
        children: dict[int, list[int]] = defaultdict(list)
        for pid, proc in table.items():
            children[proc.ppid].append(pid)
        queue = [pid for pid, start in self.seen.items() if pid in table and table[pid].start == start]
        if self.adopt_since is not None:
            with _running_lock:  # what the runs going on beside this one have found is theirs
                others = [tree for tree in _trees if tree is not self]
                claimed = (_running - self.seen.keys()).union(*(tree.seen.keys() for tree in others))
                sessions = {tree.child for tree in others}
                younger = [tree.adopt_since for tree in others if tree.adopt_since is not None and tree.adopt_since > self.adopt_since]
            # Each run's child leads a session of its own, which its orphans keep unless they called setsid(): by that they
            # are told apart. One that did is this tree's if it started before any run beside it began.
            until = min(younger, default=None)
            queue += [
                pid
                for pid in children[os.getpid()]
                if table[pid].start >= self.adopt_since
                and pid not in claimed
                and (table[pid].session == self.child or (table[pid].session not in sessions and (until is None or table[pid].start < until)))
            ]
        members: dict[int, _Proc] = {}
        while queue:
            pid = queue.pop()
            if pid not in members:
                members[pid] = table[pid]
                queue += children[pid]
        self.seen = {pid: proc.start for pid, proc in members.items()}  # DataLoader workers come and go every epoch
        return members

    def reap(self, members: Mapping[int, _Proc]) -> None:
        """Collect the exit status of the tree's zombies that are the runner's children (orphans it adopted).

        The run's own child is left to subprocess, which waits for it; waitpid(-1) would steal other children too.
        """
        me = os.getpid()
        for pid, proc in members.items():
            if proc.gone and proc.ppid == me and pid != self.child:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def signal(self, members: Iterable[int], *, group: int | None, signum: int) -> None:
        if group is not None:
            try:
                os.killpg(group, signum)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in members:
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def kill(self, *, group: int | None, within_s: float) -> None:
        """SIGKILL the group and the whole tree, again and again until nothing of it runs, and reap what is ours.

        Each round kills everything found; a process forked since is found by the next round, and a killed one
        forks no more, so even a fork bomb is gone in a few rounds. Gives up after `within_s`.
        """
        deadline = time.monotonic() + within_s
        while True:
            members = self.scan()
            self.signal(members, group=group, signum=signal.SIGKILL)  # a zombie leader's other threads may still run
            running = [pid for pid, proc in members.items() if not proc.gone]
            self.reap(members)
            # A run's zombies all come back to the runner once their parents are gone; a dead runner's are init's to reap.
            unreaped = self.child is not None and any(proc.gone and pid != self.child for pid, proc in members.items())
            if not running and not unreaped or time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _become_subreaper() -> None:
    """Make orphans of the runner's descendants its own children instead of init's, so that a setsid()'d daemon cannot hide."""
    global _subreaper
    if not _subreaper:
        _subreaper = True
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


_subreaper = False


def child_command(argv: list[str], limits: Limits) -> list[str]:
    """`argv` behind the util-linux programs that make the child die with the runner and take the rlimits.

    They do in the child, after exec, what a preexec_fn would do between fork and exec, where Python code is
    unsafe while the runner's other threads run (a lock held by one of them at the fork stays held in the child).
    Raises LimitToolMissing rather than run without a limit.
    """
    runner = os.getpid()
    rlimits = []
    if limits.file_size_mb:
        rlimits.append(f"--fsize={_within_hard_limit(resource.RLIMIT_FSIZE, limits.file_size_mb * MIB)}")
    if limits.max_processes:
        # The kernel counts every task of the uid; a non-root runner's own session counts too, so it gets that much more.
        others = _tasks_of_uid(os.getuid()) if os.getuid() != 0 else 0
        rlimits.append(f"--nproc={_within_hard_limit(resource.RLIMIT_NPROC, (limits.shared_processes or limits.max_processes) + others)}")
    # SIGKILL when the runner dies, even by SIGKILL; prlimit sets soft and hard limits alike, so the script cannot raise them.
    command = [_util_linux("setpriv", needs="--pdeathsig"), "--pdeathsig", "KILL", "--", "/bin/sh", "-c", DIE_WITH_RUNNER, str(runner)]
    if rlimits:
        command += [_util_linux("prlimit"), *rlimits, "--"]
    return command + list(argv)


def check_limit_tools() -> None:
    """Raise LimitToolMissing when setpriv (with --pdeathsig) or prlimit is missing: without them no run can start."""
    _util_linux("setpriv", needs="--pdeathsig")
    _util_linux("prlimit")


@functools.cache
def _util_linux(name: str, needs: str = "") -> str:
    """The path of util-linux program `name`, which must know the option `needs`; LimitToolMissing when it is not there."""
    path = shutil.which(name)
    if path and needs:
        try:
            usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL).stdout
        except (OSError, subprocess.TimeoutExpired):
            usage = ""
        if needs not in usage:
            raise LimitToolMissing(f"{path} has no {needs} option, which train.py's limits need: {UTIL_LINUX_HINT}")
    if not path:
        raise LimitToolMissing(f"{name} is not installed, and train.py's limits need it: {UTIL_LINUX_HINT}")
    return path


def _within_hard_limit(which: int, value: int) -> int:
    hard = resource.getrlimit(which)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _tasks_of_uid(uid: int) -> int:
    count = 0
    for pid, proc in _process_table().items():
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += proc.threads
        except OSError:
            pass
    return count


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _PidRecord:
    """The pid file: the child's group, its folder, and every process of its tree, for kill_leftover() after a crash."""

    def __init__(self, path: Path | None, tree: _ProcessTree, cwd: Path, note: Mapping[str, object] | None = None):
        """Write the file at once, the child alone in it: a runner killed a moment later must leave it behind."""
        self.path, self.pgid, self.cwd, self.note = path, tree.child, cwd, dict(note or {})
        self.written: dict[int, int] = {}
        self.written_at = -PID_FILE_EVERY_S
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.update(tree)

    def update(self, tree: _ProcessTree) -> None:
        if self.path is None or tree.seen == self.written or time.monotonic() - self.written_at < PID_FILE_EVERY_S:
            return
        self.written, self.written_at = dict(tree.seen), time.monotonic()
        record = {**self.note, "pid": self.pgid, "cwd": str(self.cwd), "tree": [[pid, start] for pid, start in self.written.items()]}
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(record))
        partial.replace(self.path)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def kill_leftover(pid_file: Path) -> bool:
    """Kill what a runner that died left of its run, as recorded in `pid_file`; True if anything of it still ran.

    The recorded processes are recognised by their start time, and their descendants through /proc; the
    recorded group is killed if any member still works in that run's folder (its leader may be gone).
    """
    try:
        record = json.loads(pid_file.read_text())
        pgid, cwd = int(record["pid"]), record["cwd"]
        recorded = {int(pid): int(start) for pid, start in record.get("tree", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    pid_file.unlink(missing_ok=True)
    table = _process_table()
    survivors = {pid: start for pid, start in recorded.items() if pid in table and table[pid].start == start and not table[pid].gone}
    group_here = any(proc.pgrp == pgid and not proc.gone and _cwd(pid).startswith(cwd) for pid, proc in table.items())
    if not survivors and not group_here:
        return False
    _ProcessTree(survivors, child=None).kill(group=pgid if group_here else None, within_s=KILL_WITHIN_S)
    return True


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


class _LogPump(threading.Thread):
    """Copies the child's output into the log and keeps recent lines for the terminal, in bounded memory."""

    def __init__(self, pipe, log: CappedLog):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.log: CappedLog | None = log
        self.lock = threading.Lock()
        self.pending: deque[str] = deque(maxlen=ECHO_BUFFER_LINES)
        self.skipped = 0
        self.redraw = b""
        """What a terminal would show now of the line not ended yet (after its last carriage return)."""
        self.redraw_changed = False

    def run(self) -> None:
        partial = b""  # the start of a line not ended yet (only its first ECHO_LINE_CHARS matter)
        while chunk := self.pipe.read1(READ_BYTES):  # whatever is there, up to READ_BYTES: one write per chunk, not per line
            with self.lock:
                if self.log is not None:
                    self.log.write(chunk)
                    self.log.flush()
            ended = chunk.count(b"\n")
            if not ended:
                partial += chunk[: ECHO_LINE_CHARS - len(partial)]  # partial never holds more than ECHO_LINE_CHARS
                self._redrawn(chunk, continued=True)
                continue
            # Only the last lines can be shown: find where they start instead of splitting the whole chunk.
            keep = min(ended, ECHO_BUFFER_LINES)
            last = chunk.rfind(b"\n")
            start = last
            for _ in range(keep):
                start = chunk.rfind(b"\n", 0, start)
            lines = chunk[start + 1 : last].split(b"\n")
            if keep == ended:  # the first of them began in an earlier chunk
                lines[0] = partial + lines[0]
            partial = chunk[last + 1 : last + 1 + ECHO_LINE_CHARS]
            shown = [line[:ECHO_LINE_CHARS].decode("utf-8", "replace").rstrip("\r") for line in lines]
            self._show(shown, never_held=ended - keep)
            self._redrawn(chunk[last + 1 :], continued=False)
        if partial:  # the last line had no newline
            self._show([partial.decode("utf-8", "replace").rstrip("\r")])

    def _redrawn(self, rest: bytes, continued: bool) -> None:
        """Follow what a terminal would show of the line not ended yet: a progress bar redraws it after each carriage return."""
        with self.lock:
            if b"\r" in rest:
                segment = rest[rest.rfind(b"\r") + 1 :] or rest.rstrip(b"\r").rsplit(b"\r", 1)[-1]
                self.redraw = segment[-ECHO_LINE_CHARS:]
            else:
                self.redraw = ((self.redraw if continued else b"") + rest)[-ECHO_LINE_CHARS:]
            self.redraw_changed = True

    def take_redraw(self) -> str | None:
        """What the unfinished line shows now, when it changed since the last call (a bar redrawn in place), else None."""
        with self.lock:
            if not self.redraw_changed or not self.redraw:
                return None
            self.redraw_changed = False
            return self.redraw.decode("utf-8", "replace")

    def _show(self, lines: list[str], never_held: int = 0) -> None:
        with self.lock:
            self.skipped += max(len(self.pending) + len(lines) - ECHO_BUFFER_LINES, 0) + never_held
            self.pending.extend(lines)

    def detach(self) -> None:
        """Write nothing more to the log, which is about to be closed."""
        with self.lock:
            self.log = None

    def take(self) -> list[str]:
        with self.lock:
            lines = ([f"… {self.skipped} lines not shown"] if self.skipped else []) + list(self.pending)
            self.pending.clear()
            self.skipped = 0
        return lines
