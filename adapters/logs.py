"""Mechanical reading of a run's log: metrics, traceback, tail and progress, read as a stream in bounded memory; and the hint for a missing package."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import shlex
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINE_BYTES = 64 * 1024
"""Longer lines are read in pieces, so one huge line never sits in memory whole."""
MAX_METRICS = 64
"""Metric names kept; later new names are ignored (values of known ones still update)."""
MAX_TRACEBACK_LINES = 40
LINE_CHARS = 400
"""Characters kept of each tail or traceback line."""

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_METRIC = re.compile(rf"(?<![\w.])([A-Za-z_][\w./-]*(?: [A-Za-z_][\w./-]*){{0,3}})\s*[:=]\s*({_NUMBER})(?![\w.:])")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)\b|^[A-Za-z_][\w.]*: ")


@functools.lru_cache(maxsize=4096)
def metric_name(raw: str) -> str:
    """'Test Accuracy' -> 'test_accuracy'."""
    return re.sub(r"[\s/-]+", "_", raw.strip()).lower()


def parse_metrics(line: str) -> dict[str, float]:
    """Numbers named in one log line: a flat JSON object, or `name=value` / `name: value` pairs."""
    if "=" not in line and ":" not in line:  # most lines of a long log: skip the regex
        return {}
    stripped = line.strip()
    if stripped.startswith("{") and stripped.endswith("}") and (numbers := json_numbers(stripped)) is not None:
        return numbers
    found = {}
    for name, value in _METRIC.findall(line):
        number = float(value)
        if math.isfinite(number):
            found[metric_name(name)] = number
    return found


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def json_numbers(text: str) -> dict[str, float] | None:
    """The numbers of the flat JSON object `text` is, named as metric_name reads them (booleans, strings, NaN and integers
    too big for a float left out); None when `text` is no JSON object."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    if not isinstance(obj, dict):
        return None
    return {metric_name(str(k)): float(v) for k, v in obj.items() if _is_number(v)}


def read_metrics_file(path: Path) -> dict[str, float] | None:
    """The flat JSON object of numbers in metrics.json, or None when absent or unusable."""
    try:
        return json_numbers(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not UTF-8
        return None


@dataclass
class LogSummary:
    """What the log says, in bounded size whatever the log's size."""

    metrics: dict[str, float] = field(default_factory=dict)
    metrics_source: str = "none"
    """metrics.json, log or none."""
    error: str = ""
    """The exception line of the last traceback."""
    traceback: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    lines: int = 0
    bytes: int = 0


def _clip_line(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + f" …[{len(line) - LINE_CHARS} chars cut]"


def log_lines(log_path: Path) -> Iterator[tuple[str, int]]:
    """The log's lines, decoded and without their line ending, each with the bytes it took in the file; read as a stream
    in bounded memory. A line longer than MAX_LINE_BYTES is read in pieces and only its first piece kept. Nothing when
    there is no log; the lines so far when it cannot be read to its end."""
    try:
        log = open(log_path, "rb")
    except OSError:
        return
    with log:
        pending, size = "", 0  # the first piece of a line longer than MAX_LINE_BYTES, and the bytes of its pieces so far
        try:
            while chunk := log.readline(MAX_LINE_BYTES):
                size += len(chunk)
                if not chunk.endswith(b"\n") and log.peek(1):
                    pending = pending or chunk.decode("utf-8", "replace")
                    continue  # the line goes on: only its first piece is kept
                yield (pending or chunk.decode("utf-8", "replace")).rstrip("\r\n"), size
                pending, size = "", 0
        except OSError:
            return


def summarize_log(log_path: Path, metrics_path: Path | None = None, *, tail_lines: int = 30) -> LogSummary:
    """Stream `log_path` once, keeping only the last metric values, the last traceback and the tail."""
    summary = LogSummary()
    tail: deque[str] = deque(maxlen=tail_lines)
    traceback: deque[str] = deque(maxlen=MAX_TRACEBACK_LINES)
    in_traceback = False
    log_metrics: dict[str, float] = {}
    for line, size in log_lines(log_path):
        summary.bytes += size
        summary.lines += 1
        tail.append(_clip_line(line))
        if line.startswith("Traceback (most recent call last)"):
            traceback.clear()
            summary.error = ""
            in_traceback = True
        if in_traceback:
            traceback.append(_clip_line(line))
            if line and not line[0].isspace() and _EXCEPTION.match(line):
                summary.error = _clip_line(line.strip())
                in_traceback = False
        for name, value in parse_metrics(line).items():
            if name in log_metrics or len(log_metrics) < MAX_METRICS:
                log_metrics[name] = value
    file_metrics = read_metrics_file(metrics_path) if metrics_path else None
    if file_metrics:
        summary.metrics, summary.metrics_source = file_metrics, "metrics.json"
    elif log_metrics:
        summary.metrics, summary.metrics_source = log_metrics, "log"
    summary.traceback = list(traceback)
    summary.tail = list(tail)
    return summary


def one_line(text: str, limit: int | None = None) -> str:
    """`text` with its line breaks and runs of spaces folded into single spaces, cut to `limit` characters with "…" (None: whole)."""
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def clip(text: str, budget: int) -> str:
    """`text` cut to at most `budget` characters, keeping its head and tail."""
    if len(text) <= budget:
        return text
    marker = f"\n…[{len(text) - budget} characters cut]…\n"
    keep = max(budget - len(marker), 0)
    head = keep // 2
    return text[:head] + marker + text[len(text) - (keep - head) :] if keep else text[:budget]


def exact_number(value: float) -> str:
    """A number as metrics.json gave it: the shortest text that reads back as the same float (0.1, 42, 1e-05)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in metrics.items()) or "none found"


SUMMARY_CHARS = 4000
"""The most characters of a run's summary as the LLM reads it."""


def render_summary(
    number: int,
    status: str,
    exit_code: int | None,
    duration_s: float,
    log: LogSummary,
    budget: int = SUMMARY_CHARS,
    graded: dict[str, float] | None = None,
    flags: Sequence[str] = (),
) -> str:
    """The run's summary as the LLM reads it, at most `budget` characters. `graded`: the grader's metrics, in a graded
    experiment (the log's are then the script's self-report); `flags`: the doubts about its numbers (trust.py)."""
    exit_text = "no exit code" if exit_code is None else f"exit {exit_code}"
    parts = [f"Run {number}: {status} ({exit_text}) after {duration_s:.1f} s; log {log.lines} lines, {log.bytes} bytes."]
    if graded is None:
        parts.append(f"Metrics ({log.metrics_source}): {format_metrics(log.metrics)}")
    else:
        parts.append(f"Graded metrics (the experiment's grader; these count): {format_metrics(graded) if graded else 'none (not graded)'}")
        parts.append(f"Self-reported metrics ({log.metrics_source}; not trusted): {format_metrics(log.metrics)}")
    if flags:
        parts.append("Flags: " + "; ".join(flags))
    if log.error:
        parts.append(f"Error: {log.error}")
    if log.traceback:
        parts.append("Traceback:\n" + "\n".join(log.traceback))
    parts.append(f"Log tail (last {len(log.tail)} lines):\n" + "\n".join(log.tail))
    return clip("\n".join(parts), budget)


# Progress lines: how far a run has got, from what training prints anyway.

_SIZE = r"\d+(?:\.\d+)?[kMGT]?"
_TQDM = re.compile(
    rf"(?P<percent>\d{{1,3}})%\|[^|]*\|\s*(?P<done>{_SIZE})/(?P<total>{_SIZE})"
    r"(?:\s*\[[\d:]+<(?P<left>\d+(?::\d+){0,2}|\?)(?:,\s*(?:\?|[\d.]+)(?P<unit>[^\s/,\]]+)/s)?)?"
)
COUNTED = ("epoch", "step", "iter", "batch")
"""What a counter line (`epoch 3/10`, `Epoch [3/10]`, `step: 1200/5000`) counts; `iteration` is read as iter."""
_COUNTER = re.compile(r"(?P<unit>epoch|step|iter(?:ation)?|batch)s?[\s:=#]*\[?\s*(?P<done>\d+)\s*/\s*(?P<total>\d+)")
"""Matched at each place a counted word starts in the lowered line: far cheaper than searching the whole line with it."""
_SUFFIX = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
PROGRESS_LOOKBACK = 20
"""Lines looked at, from the newest back, for the latest progress line of a batch: a flood costs no more than a trickle."""
PROGRESS_TAIL_BYTES = 64 * 1024
"""How much of the end of output.log run_progress reads."""


@dataclass(frozen=True)
class RunProgress:
    """How far a run has got, as its latest progress line says: a tqdm bar, `epoch 3/10`, `Epoch [3/10]`, `step 1200/5000`."""

    unit: str
    """What is counted: epoch, step, iter or batch; a tqdm bar's unit ("it" by default)."""
    done: float
    total: float
    label: str = ""
    """A tqdm bar's description ("Epoch 3"), else empty."""
    left: str = ""
    """The time left as the bar itself estimates it (tqdm's `00:15`), else empty."""
    count: str = ""
    """A tqdm bar's count as it shows it (`450/1000`, `1.2k/5.0k`), else empty."""

    @property
    def fraction(self) -> float:
        return min(max(self.done / self.total, 0.0), 1.0)

    @property
    def left_s(self) -> float | None:
        """`left` in seconds, or None."""
        if not self.left:
            return None
        seconds = 0
        for part in self.left.split(":"):
            seconds = seconds * 60 + int(part)
        return float(seconds)

    @property
    def counted(self) -> str:
        """'epoch 3/10', or for a bar 'Epoch 3: 450/1000 it'."""
        if not self.count:
            return f"{self.unit} {_count(self.done)}/{_count(self.total)}"
        return f"{self.label + ': ' if self.label else ''}{self.count} {self.unit}"

    def __str__(self) -> str:
        """'epoch 3/10 (30%)', or with the bar's own estimate '450/1000 it (45%, 00:15 left)'."""
        left = f", {self.left} left" if self.left else ""
        return f"{self.counted} ({self.fraction:.0%}{left})"


def _count(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:g}"


def _size(text: str) -> float:
    """tqdm's counts: '450', '1.2k', '3M'."""
    return float(text[:-1]) * _SUFFIX[text[-1]] if text[-1] in _SUFFIX else float(text)


def parse_progress(line: str) -> RunProgress | None:
    """The progress one line of output reports (what a terminal shows of a bar redrawn with carriage returns), or None."""
    if "/" not in line:  # every form names done/total: most lines end here
        return None
    line = line.rstrip("\r")
    line = line[line.rfind("\r") + 1 :]
    if "%|" in line and (bar := _TQDM.search(line)):
        total = _size(bar["total"])
        if total > 0:
            left = bar["left"] if bar["left"] and bar["left"] != "?" else ""
            count = f"{bar['done']}/{bar['total']}"
            label = line[: bar.start()].strip().rstrip(":").strip()  # tqdm's desc, `Epoch 3: ` before the percentage
            return RunProgress(bar["unit"] or "it", _size(bar["done"]), total, label, left, count)
    lowered, counters = line.lower(), []
    for word in COUNTED:
        start = lowered.find(word)
        while start != -1:
            if (start == 0 or not (lowered[start - 1].isalnum() or lowered[start - 1] == "_")) and (counter := _COUNTER.match(lowered, start)):
                counters.append(counter)
            start = lowered.find(word, start + 1)
    for counter in sorted(counters, key=lambda c: c.start(), reverse=True):  # the innermost: `epoch 2/5 step 300/1000` is at a step
        done, total = int(counter["done"]), int(counter["total"])
        if 0 < total and done <= total:
            unit = counter["unit"]
            return RunProgress("iter" if unit.startswith("iter") else unit, float(done), float(total))
    return None


def latest_progress(lines: list[str], lookback: int = PROGRESS_LOOKBACK) -> RunProgress | None:
    """The progress the newest line reporting one says, looking at the last `lookback` of `lines` only."""
    for line in reversed(lines[-lookback:]):
        if progress := parse_progress(line):
            return progress
    return None


def run_progress(output_log: Path) -> str | None:
    """How far a running run has got, from the end of its output.log: e.g. 'epoch 3/10 (30%)'; None when it says nothing.

    Reads only the last PROGRESS_TAIL_BYTES of the log, so it costs the same for a log of any size.
    """
    try:
        with open(output_log, "rb") as log:
            log.seek(max(log.seek(0, 2) - PROGRESS_TAIL_BYTES, 0))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return None
    progress = latest_progress(re.split(r"[\r\n]+", text), lookback=200)
    return str(progress) if progress else None


# A package train.py imports that the training environment lacks.

_MISSING_MODULE = re.compile(r"\bModuleNotFoundError: No module named '([\w.]+)'")
PIP_NAMES = {
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "cv2": "opencv-python",
    "PIL": "Pillow",
    "yaml": "PyYAML",
    "bs4": "beautifulsoup4",
    "Crypto": "pycryptodome",
    "dateutil": "python-dateutil",
}
"""Modules whose package on PyPI has another name."""


def missing_module(error: str) -> str | None:
    """The module a `ModuleNotFoundError: No module named 'xgboost'` names, or None."""
    found = _MISSING_MODULE.search(error)
    return found.group(1) if found else None


def missing_package_hint(error: str, python: str) -> str | None:
    """What to do about a run that failed for a module the training environment lacks, or None for any other error."""
    module = missing_module(error)
    if module is None:
        return None
    top = module.split(".")[0]
    package = PIP_NAMES.get(top, top.replace("_", "-"))
    return (
        f"module {module!r} is not installed in the training environment (TRAIN_PYTHON: {python}): "
        f"install it there, e.g. `{shlex.quote(python)} -m pip install {package}`, or tell the model not to use it"
    )


def run_summary(
    run_dir: Path,
    number: int,
    status: str,
    exit_code: int | None,
    duration_s: float,
    error: str,
    python: str,
    log: LogSummary | None = None,
    graded: dict[str, float] | None = None,
    flags: Sequence[str] = (),
) -> str:
    """The bounded summary of a finished run as the LLM reads it, made from its folder (output.log, metrics.json) and its record.

    `log` is summarize_log's reading of the folder when the caller has it already (a log may be 100 MiB: read once);
    `error` is the record's (a limit the runner enforced wins over the log's own); a module the training
    environment lacks is said first, with what to do about it.
    """
    log = log or summarize_log(run_dir / "output.log", run_dir / "metrics.json")
    if error and error != log.error:
        log = dataclasses.replace(log, error=error)
    summary = render_summary(number, status, exit_code, duration_s, log, graded=graded, flags=flags)
    if hint := missing_package_hint(error, python):
        summary = f"Run {number} failed because {hint}.\n{summary}"
    return summary
