"""Mechanical summary of a run's log: metrics, traceback and tail, read as a stream in bounded memory."""

from __future__ import annotations

import functools
import json
import math
import re
from collections import deque
from collections.abc import Iterator
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
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return {metric_name(k): float(v) for k, v in obj.items() if _is_number(v)}
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


def read_metrics_file(path: Path) -> dict[str, float] | None:
    """The flat JSON object of numbers in metrics.json, or None when absent or unusable."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    return {metric_name(str(k)): float(v) for k, v in obj.items() if _is_number(v)}


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


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in metrics.items()) or "none found"


SUMMARY_CHARS = 4000
"""The most characters of a run's summary as the LLM reads it."""


def render_summary(number: int, status: str, exit_code: int | None, duration_s: float, log: LogSummary, budget: int = SUMMARY_CHARS) -> str:
    """The run's summary as the LLM reads it, at most `budget` characters."""
    exit_text = "no exit code" if exit_code is None else f"exit {exit_code}"
    parts = [
        f"Run {number}: {status} ({exit_text}) after {duration_s:.1f} s; log {log.lines} lines, {log.bytes} bytes.",
        f"Metrics ({log.metrics_source}): {format_metrics(log.metrics)}",
    ]
    if log.error:
        parts.append(f"Error: {log.error}")
    if log.traceback:
        parts.append("Traceback:\n" + "\n".join(log.traceback))
    parts.append(f"Log tail (last {len(log.tail)} lines):\n" + "\n".join(log.tail))
    return clip("\n".join(parts), budget)
