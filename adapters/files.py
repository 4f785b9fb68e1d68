"""The experiment folder: where each file lives, and atomic writes that never leave half a file."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from search import after
from state import RunRecord, Task

RESULT_FIELDS = tuple(RunRecord.__annotations__)
"""What run_N/result.json holds: every field of the run's record (number, status, exit_code, duration_s, metrics, error, operator, parent)."""
TREE_FIELDS = ("operator", "parent")
"""Fields a result.json written before the tree search lacks: read_runs gives such a run the parent of the linear loop."""
WHERE_FIELDS = ("node", "gpus")
"""Where the run ran: absent from a result.json written before they were kept, and from a cancelled run's."""
JUDGED_FIELDS = ("reported", "flags")
"""The self-report beside a grade, and the doubts about a run's numbers: absent without them, and before they were kept."""
OPTIONAL_FIELDS = TREE_FIELDS + WHERE_FIELDS + JUDGED_FIELDS

_RUNS: dict[Path, dict[int, RunRecord]] = {}
"""The run records read_runs has read, by experiment folder and run number, each read once."""
_RUNS_LOCK = threading.Lock()
_PARSED: dict[Path, tuple[tuple[int, int, int], Any]] = {}
"""KEY_FINDINGS.md's sections and tasks.json's tasks as last read or written by this process, with the file's (inode, size,
mtime) then: a step re-reads a file only when someone else changed it, so its cost does not grow with the experiment."""


def forget(root: Path) -> None:
    """Drop what this process remembers of the experiment in `root` (its outputs were moved aside)."""
    _RUNS.pop(root, None)
    for path in [path for path in _PARSED if path.parent == root]:
        del _PARSED[path]


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _parsed(path: Path, parse: Callable[[Path], Any]) -> Any:
    """parse(path), or what it gave last time while the file is unchanged."""
    key = _file_key(path)
    cached = _PARSED.get(path)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    value = parse(path)
    if key is not None:
        _PARSED[path] = (key, value)
    return value


def _remember(path: Path, value: Any) -> None:
    """What this process just wrote to `path`, so the next read need not parse it again."""
    if (key := _file_key(path)) is not None:
        _PARSED[path] = (key, value)


class ExperimentInputError(ValueError):
    """The experiment folder or IDEA.md cannot be used; the message says what to fix."""


RUN_SECTION = re.compile(r"^## Run (\d+)\b", re.MULTILINE)
"""The heading each run's section of KEY_FINDINGS.md starts with."""
LOCK_TRIES = 10
"""Tries, 50 ms apart, to take the runner lock before another runner is taken to hold it."""


class ExperimentBusy(ExperimentInputError):
    """Another runner is working on this experiment."""


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write `content` (text as UTF-8) to `path` through a temporary file and a rename, so readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies; mkstemp would make it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _findings_sections(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    starts = [match.start() for match in RUN_SECTION.finditer(text)]
    ends = [*starts[1:], len(text)] if starts else []
    return [text[start:end].strip() for start, end in zip(starts, ends, strict=True)]


def section_run(section: str) -> int | None:
    """The run number of a KEY_FINDINGS.md section (one of read_findings()), from its `## Run N` heading."""
    return int(heading.group(1)) if (heading := RUN_SECTION.match(section)) else None


class ExperimentFiles:
    """Paths and reads/writes of one experiment folder, in the seed's layout."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.idea = self.root / "IDEA.md"
        self.plan = self.root / "PLAN.md"
        self.tasks = self.root / "tasks.json"
        self.findings = self.root / "KEY_FINDINGS.md"
        self.report = self.root / "REPORT.md"
        self.private = self.root / ".runner"
        self.checkpoints = self.private / "checkpoints.sqlite"
        self.lock = self.private / "lock"
        self.llm_calls = self.private / "llm_calls.jsonl"

    @contextmanager
    def runner_lock(self) -> Iterator[None]:
        """Hold .runner/lock while this process runs the experiment; ExperimentBusy if another runner holds it.

        An flock, so the kernel lets go when the holder dies, even by SIGKILL: a lock is never stale.
        """
        self.private.mkdir(exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < LOCK_TRIES - 1:  # `status` holds a shared lock for an instant to look: wait that out
                    time.sleep(0.05)
        else:
            holder = self.runner()
            os.close(fd)
            who = f"process {holder['pid']}, since {holder['started']}" if holder else "another process"
            raise ExperimentBusy(f"{self.root} is already being run by {who}") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
            yield
        finally:
            os.close(fd)  # never unlinked: a runner starting meanwhile could lock a file that is gone

    def runner(self) -> dict | None:
        """{"pid", "started"} of the runner working on this experiment now, or None."""
        try:
            fd = os.open(self.lock, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a runner is working
                try:
                    return json.loads(os.read(fd, 4096) or b"{}") or {"pid": "?", "started": "?"}
                except ValueError:
                    return {"pid": "?", "started": "?"}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def run_dir(self, number: int) -> Path:
        return self.root / f"run_{number}"

    def child_file(self, number: int) -> Path:
        """.runner/child-N.json: run N's processes, GPUs and origin while it runs (for kill_leftover() after a crash, and for readers)."""
        return self.private / f"child-{number}.json"

    def existing_runs(self) -> list[int]:
        """Numbers of the run_N folders present, sorted."""
        if not self.root.is_dir():
            return []
        numbers = (re.fullmatch(r"run_(\d+)", p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in numbers if m)

    def outputs(self) -> list[Path]:
        """What earlier experiments left in the folder: the runner's files and every run; IDEA.md, data/ and .env are the user's."""
        runner_files = self.private.is_dir() and any(entry != self.lock for entry in self.private.iterdir())
        named = [self.plan, self.tasks, self.findings, self.report, self.root / "report"] + ([self.private] if runner_files else [])
        return [path for path in named if path.exists()] + [self.run_dir(number) for number in self.existing_runs()]

    def move_aside(self) -> Path | None:
        """Move every output of earlier experiments into a new dated folder `earlier-YYYYmmdd-HHMMSS/`, deleting nothing;
        that folder, or None when there was nothing to move. Called under the runner lock, which stays in .runner/."""
        outputs = self.outputs()
        if not outputs:
            return None
        forget(self.root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.root / f"earlier-{stamp}"
        for suffix in itertools.count(2):
            try:
                aside.mkdir()
                break
            except FileExistsError:
                aside = self.root / f"earlier-{stamp}-{suffix}"
        for path in outputs:
            if path == self.private:  # the runner's files, but the lock this runner holds stays where every runner looks for it
                (aside / path.name).mkdir()
                for entry in path.iterdir():
                    if entry != self.lock:
                        entry.rename(aside / path.name / entry.name)
            else:
                path.rename(aside / path.name)
        return aside

    def read_idea(self) -> str:
        """IDEA.md's text; ExperimentInputError when the folder or file is missing or empty."""
        if not self.root.is_dir():
            raise ExperimentInputError(f"experiment directory {self.root} does not exist")
        if not self.idea.is_file():
            raise ExperimentInputError(f"{self.idea} not found: write your experiment idea there first")
        try:
            text = self.idea.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ExperimentInputError(f"cannot read {self.idea}: {exc}") from None
        if not text.strip():
            raise ExperimentInputError(f"{self.idea} is empty: describe the experiment you want")
        return text

    def write_plan(self, plan: str) -> None:
        write_atomic(self.plan, plan.rstrip() + "\n")

    def write_tasks(self, tasks: list[Task]) -> None:
        """tasks.json: every task, one a line (json's C encoder; `indent=` would take its pure-Python one, slow at hundreds of tasks)."""
        lines = ",\n".join(f"    {json.dumps(task, ensure_ascii=False)}" for task in tasks)
        write_atomic(self.tasks, '{\n  "tasks": [\n' + lines + ("\n" if lines else "") + "  ]\n}\n")
        _remember(self.tasks, [dict(task) for task in tasks])

    def read_tasks(self) -> list[Task]:
        """Every task in tasks.json (OSError, ValueError or KeyError when it cannot be read)."""
        tasks = _parsed(self.tasks, lambda path: json.loads(path.read_text(encoding="utf-8"))["tasks"])
        return [Task(**task) for task in tasks]

    def read_findings(self) -> list[str]:
        """KEY_FINDINGS.md's run sections (each from its `## Run N` heading), in order; none when the file is missing."""
        return list(_parsed(self.findings, _findings_sections))

    def write_findings(self, sections: list[str]) -> None:
        """Rewrite KEY_FINDINGS.md from every section, so the file always equals the state."""
        body = "\n\n".join(s.strip() for s in sections) if sections else "_No runs analysed yet._"
        write_atomic(self.findings, f"# Key findings\n\n{body}\n")
        _remember(self.findings, [s.strip() for s in sections])

    def write_result(self, record: RunRecord) -> None:
        """run_N/result.json: how the run ended, for readers of the folder (view_tasks.py, status); and its digest in
        .runner/, which the sandbox hides, so that a result.json the script wrote itself is never taken for the runner's."""
        result = {name: record[name] for name in RESULT_FIELDS if name in record}
        text = json.dumps(result, indent=2) + "\n"
        write_atomic(self.run_dir(record["number"]) / "result.json", text)
        write_atomic(self.recorded_file(record["number"]), hashlib.sha256(text.encode("utf-8")).hexdigest() + "\n")
        with _RUNS_LOCK:
            _RUNS.setdefault(self.root, {}).pop(record["number"], None)  # run again (a resume, a fork): read afresh

    def read_runs(self, count: int, in_flight: Collection[int] = ()) -> list[RunRecord]:
        """The records of the finished runs among 1 to `count`, from their result.json, in order; the runs `in_flight` are left out.

        The records live in these files, not in the state, so that a checkpoint stays small however many runs there
        are. A finished run's record never changes while the state counts it, so each is read once per process:
        a step costs nothing per earlier run. Records past `count`, and of runs in flight, are forgotten (a resume or
        a fork from an earlier checkpoint runs them again). ExperimentInputError when one is missing or unreadable.
        """
        with _RUNS_LOCK:  # a run in flight records itself from its own thread (write_result)
            known = _RUNS.setdefault(self.root, {})
            for number in [number for number in known if number > count or number in in_flight]:
                del known[number]
            if len(known) + len(in_flight) < count:
                for number in range(1, count + 1):
                    if number not in known and number not in in_flight:
                        known[number] = self._read_run(number, known)
            return [known[number] for number in range(1, count + 1) if number in known]

    def runs_of(self, state: Mapping[str, Any]) -> list[RunRecord]:
        """The finished runs of an experiment state: those given out (run_count + in flight), less those in flight."""
        in_flight = [flight["number"] for flight in state.get("in_flight") or []]
        return self.read_runs(state.get("run_count", 0) + len(in_flight), in_flight)

    def _read_run(self, number: int, known: dict[int, RunRecord]) -> RunRecord:
        path = self.run_dir(number) / "result.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or any(name not in record for name in RESULT_FIELDS if name not in OPTIONAL_FIELDS):
                raise ValueError("not a run record")
        except (OSError, ValueError) as exc:
            raise ExperimentInputError(f"{path} cannot be read ({exc}): every finished run keeps its record there") from None
        if "operator" not in record:  # written before the tree search: the linear loop's parent
            operator, parent = after(known.get(number - 1))
            record = {**record, "operator": operator, "parent": parent}
        return RunRecord(**{name: record[name] for name in RESULT_FIELDS if name in record})

    def read_result(self, number: int) -> RunRecord | None:
        """Run `number`'s record if the runner wrote its result.json (its digest says so) and it is whole, else None: it
        has not ended, was never recorded, or the record is the script's own (a run in flight can write its folder)."""
        try:
            digest = self.recorded_file(number).read_text(encoding="utf-8").strip()
            written = hashlib.sha256((self.run_dir(number) / "result.json").read_bytes()).hexdigest()
            return self._read_run(number, _RUNS.get(self.root, {})) if digest == written else None
        except (OSError, ExperimentInputError):
            return None

    def recorded_file(self, number: int) -> Path:
        """.runner/recorded/run_N.sha256: the digest of the result.json the runner wrote for run N."""
        return self.private / "recorded" / f"run_{number}.sha256"

    def read_results(self) -> list[dict]:
        """Every finished run's result.json, in run order; a run still going (or unreadable) is left out."""
        results = []
        for number in self.existing_runs():
            try:
                result = json.loads((self.run_dir(number) / "result.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(result, dict) and all(name in result for name in RESULT_FIELDS if name not in OPTIONAL_FIELDS):
                results.append(result)
        return results

    def write_report(self, report: str) -> None:
        write_atomic(self.report, report.rstrip() + "\n")
