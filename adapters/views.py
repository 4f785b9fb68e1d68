"""What the person watching sees: a live view on a terminal, one plain line per event elsewhere, or nothing but the outcome.

All three are fed the same way, by main.py from the graph's stream: `event()` for each custom event the
nodes emit (stage, run_started, output, run_done, ...) and `update()` for each node's state update (latest_run,
next_run, in_flight, usage, goal). Every run is named with how it came about (search.origin): `draft`, `improve ← 3`.

With WORKERS > 1 several runs are in flight at once and their events come interleaved, from the runs' own threads
as well as the graph's: every view takes Progress.lock for each event and update, and the live view for each frame.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from adapters.logs import RunProgress, format_metrics, latest_progress, one_line, parse_metrics, parse_progress
from adapters.machine import devices_text
from adapters.terminal import KeyReader
from goal import best_run, parse_goal
from search import origin
from state import add_usage, spend
from trust import FLAG_MARK

TAIL_LINES = 15
"""Lines of the running script's output the live view shows."""
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""What the plain view removes from the script's output: control characters (escape sequences lose their ESC), tab kept."""
PROGRESS_EVERY_S = 10.0
"""The plain view's progress line (percentage and time left) comes at most this often, however often a bar redraws."""


def as_shown(line: str) -> str:
    """What a terminal would leave of a line of output: the text after its last carriage return, no control characters."""
    line = line.rstrip("\r")
    return CONTROL_CHARS.sub("", line[line.rfind("\r") + 1 :])


def halt_mark(reason: str) -> tuple[str, str, str]:
    """How a stage cut short is marked: (mark, words, style); ✗ for a failure (fatal, llm_unavailable), ⊘ for Ctrl-C."""
    if reason == "interrupted":
        return "⊘", "interrupted", "yellow"
    return "✗", f"failed: {reason}", "red"


def run_origin(run: dict) -> str:
    """How a run came about (search.origin), or — for a record written before the tree search, which lacks it."""
    return origin(run) if run.get("operator") else "—"


def elapsed(seconds: float) -> str:
    """0:03:07 style, hours only when needed."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Running:
    """A run in flight as the views follow it: from its execute stage (or its first event) until its run_done."""

    number: int
    submitted: float
    """time.monotonic() when the view first heard of it."""
    operator: str | None = None
    parent: int | None = None
    started: float | None = None
    """time.monotonic() when its train.py started (run_started); None while it waits for a device."""
    gpus: list[str] = field(default_factory=list)
    node: str = ""
    """The Ray node it runs on (EXECUTOR=ray); empty here."""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    metrics: dict[str, float] = field(default_factory=dict)
    """Every metric its output named so far, the newest value of each."""
    latest: dict[str, float] = field(default_factory=dict)
    """The metrics of its newest output line that named any."""
    progress: RunProgress | None = None
    """Its newest progress line (tqdm bar, `epoch 3/10`...), if it printed one."""
    progress_at: float = 0.0
    """When `progress` was seen, for the time left."""

    @property
    def since(self) -> float:
        """When its time started: when train.py started, else when it was submitted."""
        return self.started if self.started is not None else self.submitted

    @property
    def how(self) -> str:
        """How it came about (search.origin: `improve ← 3`); empty until an event says."""
        return origin({"operator": self.operator, "parent": self.parent}) if self.operator else ""

    def hear(self, lines: list[str]) -> None:
        """Take in output lines: metrics from each, progress from the newest only (a flood costs no more), the tail's last lines."""
        for line in lines:
            if found := parse_metrics(line):
                self.metrics.update(found)
                self.latest = found
        if found_progress := latest_progress(lines):
            self.progress, self.progress_at = found_progress, time.monotonic()
        self.tail.extend(as_shown(line) for line in lines[-TAIL_LINES:])

    def time_left(self, now: float) -> float | None:
        """Seconds the script has left by its newest progress line: the bar's own estimate, else its time so far scaled by
        the fraction still to do; None without a progress line (or at 0%)."""
        progress = self.progress
        if progress is None:
            return None
        since = now - self.progress_at
        if progress.left_s is not None:
            return max(progress.left_s - since, 0.0)
        if progress.fraction <= 0:
            return None
        run_time = self.progress_at - self.since
        return max(run_time * (1 - progress.fraction) / progress.fraction - since, 0.0)


@dataclass
class Progress:
    """Where the experiment stands, kept up to date from the stream; the views only read it (under `lock`)."""

    experiment: str
    max_runs: int
    models: dict[str, str]
    """Stage name → model, e.g. {"plan, report": "...", "codegen": "...", "analyze": "..."}."""
    sandbox: str
    model_prices: dict[str, list[float]] = field(default_factory=dict)
    goal: str = ""
    runs: list[dict] = field(default_factory=list)
    """The ended runs' records, in run order: read from files when the view starts, then from each run_done and latest_run."""
    coming: dict | None = None
    """The coming run as the search chose it (state.NextRun: number, operator, parent, reason, and change once codegen names it)."""
    usage: list[dict] = field(default_factory=list)
    stage: str = ""
    stage_run: int | None = None
    stage_model: str | None = None
    stage_reason: str = ""
    """Why the stage runs, when its event says (wait: why no new run starts)."""
    stage_started: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    in_flight: dict[int, Running] = field(default_factory=dict)
    """The runs in flight by number, in the order the view heard of them."""
    ended: set[int] = field(default_factory=set)
    """The runs seen to end: an event the stream brings after the run's own thread said it ended does not bring it back."""
    halted: tuple[str, int | None, str] | None = None
    """(stage, run, stop reason) of the stage that was cut short (fatal, llm_unavailable, interrupted), once its update says so."""
    halted_at: float | None = None
    """When the halt was heard: the runs in flight were stopped then, and their time stops with it."""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    """Held for each event, update and frame: the runs' threads, the graph's stream and the live view's redraws take turns."""

    def seed(self, values: dict, runs: list[dict]) -> None:
        """Start from a saved state (a resume) and its finished runs, which live in files, not in the state (ExperimentFiles.runs_of)."""
        with self.lock:
            self.goal = values.get("goal", "") or self.goal
            self.max_runs = values.get("max_runs") or self.max_runs
            self.runs = list(runs)
            self.coming = values.get("next_run")
            self.usage = list(values.get("usage", []))
            for flight in values.get("in_flight") or []:  # they start again: their run_started comes
                self._hear_of(flight["number"], flight.get("operator"), flight.get("parent"))

    def event(self, event: dict) -> None:
        with self.lock:
            kind = event.get("event")
            if kind == "stage":
                self._stage(event)
            elif kind == "run_started":  # (again, after a resume: what was heard of it before is over)
                number, now = event["run"], time.monotonic()
                known = self.in_flight.get(number)
                self.ended.discard(number)
                gpus = list(event.get("gpus") or [])
                self.in_flight[number] = Running(
                    number, known.submitted if known else now, event.get("operator"), event.get("parent"), started=now, gpus=gpus, node=event.get("node") or ""
                )
            elif kind == "output" and (running := self._hear_of(event.get("run"))):
                running.hear(event["lines"])
            elif kind == "output_redraw" and (running := self._hear_of(event.get("run"))) and (found := parse_progress(event["line"])):
                running.progress, running.progress_at = found, time.monotonic()  # a bar redrawn in place, not ended yet
            elif kind == "run_done":  # in the table at once; wait's latest_run brings its whole record
                record = {"number": event["run"], "status": event["status"], "exit_code": None, "duration_s": event["duration_s"], "metrics": event["metrics"]}
                record |= {"error": event.get("error", ""), "operator": event.get("operator"), "parent": event.get("parent")}
                self._ended(event["run"], record | {name: event[name] for name in ("reported", "flags") if name in event})

    def _stage(self, event: dict) -> None:
        self.stage, self.stage_run, self.stage_model = event["stage"], event.get("run"), event.get("model")
        self.stage_reason = event.get("reason") or ""
        self.stage_started = time.monotonic()
        if "operator" in event:  # summarize, codegen and execute say what the coming run does
            known = self.coming if self.coming and self.coming["number"] == event.get("run") else {}
            self.coming = {**known, "number": event.get("run"), "operator": event["operator"], "parent": event.get("parent")}
            if event.get("reason"):
                self.coming["reason"] = event["reason"]
        if self.stage == "execute":  # submitted: it trains, or waits for a device
            how = self.coming if self.coming and self.coming["number"] == self.stage_run else {}
            self._hear_of(self.stage_run, how.get("operator"), how.get("parent"))

    def _hear_of(self, number: int | None, operator: str | None = None, parent: int | None = None) -> Running | None:
        """Run `number` in flight, known from now on; None for a run seen to end (or no run)."""
        if number is None or number in self.ended:
            return None
        running = self.in_flight.get(number)
        if running is None:
            running = self.in_flight[number] = Running(number, submitted=time.monotonic())
        if operator and not running.operator:
            running.operator, running.parent = operator, parent
        return running

    def _ended(self, number: int, record: dict | None = None) -> None:
        """Run `number` ended: out of flight for good, and its `record` into the runs (a record sent again, by latest_run
        or a resumed step, replaces the first)."""
        self.in_flight.pop(number, None)
        self.ended.add(number)
        if record is not None:
            self.runs = sorted([*(run for run in self.runs if run["number"] != number), record], key=lambda run: run["number"])

    def update(self, node: str, update: dict | None) -> None:
        if not isinstance(update, dict):
            return
        with self.lock:
            self.goal = update.get("goal") or self.goal
            self.max_runs = update.get("max_runs") or self.max_runs
            if latest := update.get("latest_run"):
                self._ended(latest["number"], latest)
            if "in_flight" in update:
                listed = update["in_flight"] or []
                for number in [] if listed else list(self.in_flight):  # none left (the final stop cancelled them), whatever the view missed
                    self._ended(number)
                for flight in listed:  # a resumed runner's, before they start again
                    self._hear_of(flight["number"], flight.get("operator"), flight.get("parent"))
            if "next_run" in update:
                self.coming = update["next_run"]
            self.usage = add_usage(self.usage, update.get("usage", []))  # summed as the state sums it: a few entries, however many calls
            if update.get("halted"):  # a resumed stage that succeeds carries halted: None; wait's halt (grade.py failing) resumes at analyze
                self.halted = (node, self.stage_run if self.stage == node else None, update.get("stop_reason") or "")
                self.halted_at = time.monotonic()

    def in_flight_runs(self) -> list[Running]:
        """The runs in flight, by number: the live view's lines, which keys 1–9 pick."""
        return sorted(self.in_flight.values(), key=lambda running: running.number)

    def followed(self, choice: int | None = None) -> Running | None:
        """The run the output tail follows: run `choice` while it is in flight, else the newest started (else submitted)."""
        if choice in self.in_flight:
            return self.in_flight[choice]
        return max(self.in_flight.values(), key=lambda running: (running.started is not None, running.since, running.number), default=None)

    @property
    def best(self) -> dict | None:
        return best_run(self.runs, self.goal)

    def origin_of(self, number: int | None) -> str:
        """How run `number` came about (`improve ← 3`), by its record, the search's choice or its flight; empty when none says."""
        for run in reversed(self.runs):
            if run["number"] == number and run.get("operator"):
                return origin(run)
        if self.coming and self.coming["number"] == number:
            return origin(self.coming)
        running = self.in_flight.get(number) if number is not None else None
        return running.how if running is not None else ""

    def coming_detail(self) -> str:
        """What the stage's run sets out to do, in words: the change codegen named, else why the search chose it."""
        if not self.coming or self.coming["number"] != self.stage_run:
            return ""
        return one_line(self.coming.get("change") or self.coming.get("reason") or "")

    def goal_value(self, run: dict) -> str:
        """The run's value of the goal metric, or its metrics when the goal names none; in a graded experiment its
        self-report beside: `accuracy=0.71 (self-reported 0.99)`."""
        parsed = parse_goal(self.goal)
        if parsed is None:
            shown = format_metrics(run["metrics"])
            return f"{shown} (self-reported: {format_metrics(run['reported'])})" if "reported" in run else shown
        shown = f"{parsed.metric}={run['metrics'][parsed.metric]:.6g}" if parsed.metric in run["metrics"] else "-"
        if parsed.metric in run.get("reported", {}):
            shown += f" (self-reported {run['reported'][parsed.metric]:.6g})"
        return shown

    def latest_metric(self, running: Running) -> str:
        """A run in flight's latest word on how it does: the goal's metric once it printed it, else its newest line's metrics."""
        parsed = parse_goal(self.goal)
        if parsed and parsed.metric in running.metrics:
            return format_metrics({parsed.metric: running.metrics[parsed.metric]})
        return format_metrics(running.latest) if running.latest else ""

    def spent(self) -> str:
        """`12,345 tokens (8,000 cached) · $0.0123`: the tokens spent, those read from a provider's prompt cache, the cost."""
        tokens = sum(u["input_tokens"] + u["output_tokens"] for u in self.usage)
        cached = sum(u.get("cached_tokens", 0) for u in self.usage)
        cost, _ = spend(self.usage, self.model_prices)
        return f"{tokens:,} tokens" + (f" ({cached:,} cached)" if cached else "") + (f" · ${cost:.4f}" if cost is not None else "")


def stage_title(progress: Progress) -> str:
    """`run 5 · codegen · improve ← 3 (model)`: the run, the stage, how the run comes about, the stage's model."""
    run = f"run {progress.stage_run} · " if progress.stage_run else ""
    how = progress.origin_of(progress.stage_run) if progress.stage_run else ""
    model = f" ({progress.stage_model})" if progress.stage_model else ""
    return f"{run}{progress.stage}{f' · {how}' if how else ''}{model}"


# The live view: one renderable, redrawn a few times a second.

KEYS_HINT = "Tab: next run · 1–9: the run on that line · 0: the newest"
"""What the keys do, under the output tail while more than one run is in flight (LiveView.on_key)."""


def render_live(progress: Progress, follow: int | None = None, keys: bool = False) -> RenderableType:
    """The whole live view for `progress` as it is now; the output tail follows run `follow` while it is in flight, else
    the newest; `keys`: the keys that pick the run are read (and named under the tail)."""
    with progress.lock:  # a snapshot: the runs' threads change the progress while the frame is drawn
        return _render_live(progress, follow, keys)


def _render_live(progress: Progress, follow: int | None, keys: bool) -> RenderableType:
    now = time.monotonic()
    parts: list[RenderableType] = [_header(progress)]

    done = len(progress.runs)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        Text(f"runs {done}/{progress.max_runs}", style="bold"),
        ProgressBar(total=max(progress.max_runs, 1), completed=done, width=30),
        Text(f"elapsed {elapsed(now - progress.started)}", style="dim"),
        Text(progress.spent(), style="dim"),
    )
    parts.append(bar)
    halted_here = progress.halted is not None and progress.halted[0] == progress.stage
    if progress.stage and not halted_here:
        detail = progress.coming_detail() or one_line(progress.stage_reason)
        title = Text.assemble((stage_title(progress), "bold cyan"), f"  {elapsed(now - progress.stage_started)}", (f"  {detail}" if detail else "", "dim"))
        title.no_wrap, title.overflow = True, "ellipsis"
        line = Table.grid()  # the spinner wraps a plain Text anew, which would wrap a long reason over lines
        line.add_row(title)
        parts.append(Spinner("dots", text=line))
    if progress.halted:
        stage, run, reason = progress.halted
        mark, words, style = halt_mark(reason)
        parts.append(Text(f"{mark} {f'run {run} · ' if run else ''}{stage} {words}", style=f"bold {style}"))
    if (shown := progress.followed(follow)) is not None:
        parts.append(in_flight_table(progress, shown, now))
        tail = Text("\n".join(shown.tail) or "(no output yet)", no_wrap=True, overflow="ellipsis", style="dim")
        hint = Text(KEYS_HINT) if keys and len(progress.in_flight) > 1 else None
        title = f"run {shown.number} · output.log (last {TAIL_LINES} lines)"
        parts.append(Panel(tail, title=title, title_align="left", subtitle=hint, subtitle_align="right", border_style="dim"))
        parts.append(Text(f"latest metrics: {format_metrics(shown.metrics)}"))
    if progress.runs:
        parts.append(runs_table(progress))
    if progress.usage:
        parts.append(usage_table(progress))
    return Group(*parts)


def in_flight_table(progress: Progress, shown: Running, now: float) -> Table:
    """One line per run in flight: ▸ marks the one the tail follows; how it came about, its devices, its time so far, its
    latest metric and its progress bar. After a halt the runs were stopped: their time stops and their bars go."""
    table = Table.grid(padding=(0, 2))
    for name in ("run", "from", "devices", "time", "metric", "counted", "bar", "percent", "left"):
        # Only the metric and what is counted give way on a narrow terminal, cut with an ellipsis (their Text's no_wrap).
        table.add_column(
            name, no_wrap=name not in ("metric", "counted"), max_width=28 if name == "metric" else None, justify="right" if name == "time" else "left"
        )
    until = min(now, progress.halted_at) if progress.halted_at is not None else now
    for running in progress.in_flight_runs():
        here = running is shown
        devices = devices_text(running.gpus, running.node) if running.started is not None else "waiting"
        cells: list[RenderableType] = [
            Text(f"{'▸' if here else ' '} run {running.number}", style="bold" if here else ""),
            Text(running.how),
            Text(devices, style="dim"),
            Text(elapsed(max(until - running.since, 0.0))),
            Text(progress.latest_metric(running), no_wrap=True, overflow="ellipsis"),
        ]
        if running.progress is not None and progress.halted is None:
            left = running.time_left(now)
            cells += [
                Text(running.progress.counted, style="bold", no_wrap=True, overflow="ellipsis"),
                ProgressBar(total=1.0, completed=running.progress.fraction, width=10),
                Text(f"{running.progress.fraction:.0%}"),
                Text(f"ETA {elapsed(left)}" if left is not None else "ETA unknown", style="dim"),
            ]
        table.add_row(*cells)
    return table


def _header(progress: Progress) -> Panel:
    lines = Table.grid(padding=(0, 2))
    lines.add_row("goal", Text(progress.goal or "(the planner proposes one)"))
    lines.add_row("models", Text(" · ".join(f"{stage}: {model}" for stage, model in progress.models.items())))
    lines.add_row("sandbox", Text(progress.sandbox))
    return Panel(lines, title=Text(f"experiment {progress.experiment}", style="bold"), title_align="left")


def runs_table(progress: Progress, limit: int = 12) -> Table:
    """The latest runs: how each came about, status, duration, goal metric; ★ marks the best."""
    best = progress.best
    table = Table(title=None, box=None, header_style="bold", pad_edge=False)
    for column in ("run", "from", "status", "duration", "goal metric" if parse_goal(progress.goal) else "metrics"):
        table.add_column(column)
    shown = progress.runs[-limit:]
    if len(progress.runs) > limit:
        table.add_row("…", f"{len(progress.runs) - limit} earlier runs", "", "", "")
        if best is not None and best not in shown:
            shown = [best, *shown[1:]]  # the best run stays in sight
    for run in shown:
        star = " ★" if best is not None and run["number"] == best["number"] else ""
        table.add_row(f"{run['number']}{star}", run_origin(run), status_text(run), f"{run['duration_s']:.1f} s", progress.goal_value(run))
    return table


def usage_table(progress: Progress) -> Table:
    """Tokens and cost per stage, and in total; the input tokens read from a prompt cache once a provider reported some."""
    cached = any(call.get("cached_tokens") for call in progress.usage)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("stage", "calls", "input tokens", *(("cached",) if cached else ()), "output tokens", "cost"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    stages: dict[str, list[dict]] = {}
    for call in progress.usage:
        stages.setdefault(call["stage"], []).append(call)
    for stage, calls in [*stages.items(), ("total", progress.usage)]:
        cost, _ = spend(calls, progress.model_prices)
        table.add_row(
            Text(stage, style="bold" if stage == "total" else ""),
            str(sum(c.get("calls", 1) for c in calls)),
            f"{sum(c['input_tokens'] for c in calls):,}",
            *((f"{sum(c.get('cached_tokens', 0) for c in calls):,}",) if cached else ()),
            f"{sum(c['output_tokens'] for c in calls):,}",
            "unknown" if cost is None else f"${cost:.4f}",
        )
    return table


# The three views.


HELD_LINES = 200
"""Lines held back while the plain view is paused; more are dropped (output.log and the runs table keep everything)."""


def event_line(event: dict) -> Text | None:
    """The one line an event is shown as, or None for events shown otherwise (output) or not at all."""
    kind = event.get("event")
    how = f" · {run_origin(event)}" if "operator" in event else ""
    if kind == "stage":
        run = f"run {event['run']} · " if event.get("run") else ""
        line = Text(f"▶ {run}{event['stage']}{how}", style="bold cyan")
        if event.get("model"):
            line.append(f" ({event['model']})", style="dim")
        if event.get("in_flight", 0) > 1:
            line.append(f" · {event['in_flight']} in flight", style="dim")
        return line.append(f" · {one_line(event['reason'])}", style="dim") if event.get("reason") else line
    if kind == "run_started" and (event.get("gpus") or event.get("node")):  # on a CPU here it starts as submitted: its execute line said so
        return Text(f"▷ run {event['run']} started on {devices_text(event.get('gpus') or [], event.get('node') or '')}{how}", style="cyan")
    if kind == "run_done":
        return run_done_line(event, how)
    if kind == "analysis":
        return Text.assemble((f"✎ run {event['run']}:", "magenta"), f" {event['summary']}")
    if kind == "syntax_retry":
        return Text(f"! run {event['run']}: generated code does not compile ({event['error']}); asking once more", style="yellow")
    if kind == "warning":
        return Text(f"! {event['message']}", style="yellow")
    if kind == "structured_output":
        return Text(f"· {structured_output_line(event['model'], event['method'], event.get('refused') or [])}", style="dim")
    return None


def structured_output_line(model: str, method: str, refused: list[str]) -> str:
    """`structured output of model m: prompt`, and what the server refused before it (STRUCTURED_OUTPUT=auto)."""
    return f"structured output of model {model}: {method}" + (f" ({'; '.join(refused)})" if refused else "")


RUN_STYLE = {"ok": "green", "failed": "red", "grade_failed": "red", "timeout": "yellow", "cancelled": "dim"}
"""Each status's colour in the runs tables (the live view's, view_tasks.py's)."""


def status_text(run: dict) -> Text:
    """A run's status in its colour, ⚑ after it when its numbers are in doubt (its flags)."""
    return Text(run["status"], style=RUN_STYLE.get(run["status"], "")).append(FLAG_MARK if run.get("flags") else "", style="yellow")


def run_done_line(event: dict, how: str) -> Text:
    """`■ run 3 ok in 1.5 s · draft · metrics: ...`, then its self-report (a graded experiment), why grade.py failed on it,
    and the first doubt about its numbers."""
    colour = {"ok": "green", "cancelled": "yellow"}.get(event["status"], "red")
    line = Text(f"■ run {event['run']} {event['status']}", style=colour)
    line.append(f" in {event['duration_s']:.1f} s{how} · metrics: {format_metrics(event['metrics'])}")
    if "reported" in event:
        line.append(f" · self-reported: {format_metrics(event['reported'])}")
    if event["status"] == "grade_failed" and event.get("error"):
        line.append(f" · {one_line(event['error'])}", style="red")
    if flags := event.get("flags"):
        more = f" (and {len(flags) - 1} more)" if len(flags) > 1 else ""
        line.append(f" ·{FLAG_MARK} {one_line(flags[0])}{more}", style="yellow")
    return line


class PlainView:
    """One line per event: stage started or finished, run result, analysis, warnings; the scripts' output dimmed, each
    line after its run's number (`  run 3 │ epoch 1/4`), however many runs are in flight."""

    def __init__(self, console: Console, progress: Progress, echo_output: bool = True):
        self.console = console
        self.progress = progress
        self.echo_output = echo_output
        self.progress_shown: dict[int, tuple[RunProgress, float]] = {}
        """Each run's progress line printed last, and when."""
        self.held: list[Text] | None = None
        """While paused (the review prompt has the terminal): the lines to print after it; None when not paused."""
        self.held_output = 0
        """Output lines of runs in flight left unprinted while paused (output.log has them)."""

    def start(self) -> None:
        p = self.progress
        models = ", ".join(f"{stage}={model}" for stage, model in p.models.items())
        goal = f" · goal: {p.goal}" if p.goal else ""
        self.console.print(Text(f"experiment {p.experiment}{goal} · sandbox: {p.sandbox} · models: {models}"), soft_wrap=True)

    def event(self, event: dict) -> None:
        with self.progress.lock:  # a run's output and the graph's lines never mix within a line
            self.progress.event(event)
            kind = event.get("event")
            if self.held is not None:  # the runs in flight go on while the review prompt waits: their news waits instead
                if kind == "output":
                    self.held_output += len(event["lines"])
                elif (line := event_line(event)) is not None and len(self.held) < HELD_LINES:
                    self.held.append(line)
                return
            if kind == "output":
                if self.echo_output:
                    self.echo(event.get("run"), event["lines"])
                self.show_progress(event.get("run"))
            elif kind == "output_redraw":
                self.show_progress(event.get("run"))
            elif line := event_line(event):
                self.console.print(line, soft_wrap=True)

    def echo(self, run: int | None, lines: list[str]) -> None:
        """Run `run`'s output lines, dimmed, after its number, written straight to the console's file in one write.

        Through rich, 200 long lines cost the main thread some 50 ms, and a flood brings such a batch every
        poll: time the thread copying the output into output.log waits for (the GIL). This costs 2 ms.
        """
        dim, undim = ("\x1b[2m", "\x1b[0m") if self.console.color_system else ("", "")
        gutter = f"  run {run} │ " if run is not None else "  │ "
        self.console.file.write("".join(f"{dim}{gutter}{as_shown(line)}{undim}\n" for line in lines))
        self.console.file.flush()

    def show_progress(self, run: int | None) -> None:
        """A line with the run's percentage and time left, when its progress moved, at most every PROGRESS_EVERY_S per run."""
        running = self.progress.in_flight.get(run) if run is not None else None
        if running is None or running.progress is None:
            return
        now = time.monotonic()
        shown, shown_at = self.progress_shown.get(running.number, (None, 0.0))
        if running.progress == shown or now - max(shown_at, running.since) < PROGRESS_EVERY_S:
            return
        self.progress_shown[running.number] = (running.progress, now)
        left = running.time_left(now)
        eta = f" · ETA {elapsed(left)}" if left is not None else ""
        self.console.print(Text(f"  ⋯ run {running.number} · {running.progress.counted} ({running.progress.fraction:.0%}){eta}", style="cyan"), soft_wrap=True)

    def update(self, node: str, update: dict | None) -> None:
        with self.progress.lock:
            self.progress.update(node, update)
            self.print_update(node, update)

    def print_update(self, node: str, update: dict | None) -> None:
        """`✓ node (time) · spent`, with what the update says worth a word (the goal, the change named); or how it was cut short."""
        seconds = time.monotonic() - self.progress.stage_started
        halted = update.get("halted") if isinstance(update, dict) else None
        if halted and halted.get("stage") == node:
            mark, words, style = halt_mark(update.get("stop_reason") or "")
            took = f" ({seconds:.1f} s)" if self.progress.stage == node else ""  # stopped before it began: no time of its own
            self.console.print(Text(f"  {mark} {node} {words}{took} · {self.progress.spent()}", style=style), soft_wrap=True)
            return
        line = Text(f"  ✓ {node} ({seconds:.1f} s) · {self.progress.spent()}", style="dim")
        if isinstance(update, dict) and update.get("goal"):
            line.append(f" · goal: {update['goal']}")
        if isinstance(update, dict) and (change := (update.get("next_run") or {}).get("change")):
            line.append(f" · change: {one_line(change)}")
        self.console.print(line, soft_wrap=True)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold what the runs in flight say while the terminal is needed for something else (the review prompt); print it after."""
        with self.progress.lock:
            self.held, self.held_output = [], 0
        try:
            yield
        finally:
            with self.progress.lock:
                held, self.held = self.held, None
                for line in held:
                    self.console.print(line, soft_wrap=True)
                if self.held_output:
                    self.console.print(Text(f"  … {self.held_output} lines of output while paused (each run's output.log has them)", style="dim"))

    def stop(self) -> None:
        pass


class QuietView(PlainView):
    """Nothing until the outcome (warnings aside, which go to stderr)."""

    def __init__(self, console: Console, progress: Progress, warnings: Console):
        super().__init__(console, progress)
        self.warnings = warnings

    def start(self) -> None:
        pass

    def event(self, event: dict) -> None:
        self.progress.event(event)
        if event.get("event") == "warning":
            self.warnings.print(f"! {event['message']}", markup=False, soft_wrap=True)

    def update(self, node: str, update: dict | None) -> None:
        self.progress.update(node, update)


class LiveView:
    """The live view on a terminal: header, runs progress, the stage with its spinner, the runs in flight, the output
    tail of one of them (picked with keys: see on_key), runs and tokens."""

    def __init__(self, console: Console, progress: Progress, keys: KeyReader | None = None):
        self.console = console
        self.progress = progress
        self.keys = keys if keys is not None else KeyReader()
        self.reading_keys = False
        self.follow: int | None = None
        """The run the output tail follows, picked with a key; None: the newest started."""
        self.live = self._new_live()

    def _new_live(self) -> Live:
        def frame() -> RenderableType:
            return render_live(self.progress, self.follow, keys=self.reading_keys)

        return Live(console=self.console, get_renderable=frame, refresh_per_second=4, transient=False)

    def start(self) -> None:
        self.reading_keys = self.keys.start(self.on_key)
        self.live.start()

    def event(self, event: dict) -> None:
        self.progress.event(event)  # not holding the lock while printing: a redraw holds Live's lock and then takes it
        if event.get("event") in ("warning", "analysis", "syntax_retry", "structured_output"):  # kept above the view, as a log
            self.live.console.print(event_line(event), soft_wrap=True)

    def update(self, node: str, update: dict | None) -> None:
        self.progress.update(node, update)

    def on_key(self, key: str) -> None:
        """Tab: the output tail follows the next run in flight; 1–9: the run on that line; 0: the newest again."""
        with self.progress.lock:
            lines = self.progress.in_flight_runs()
            if key == "\t" and (shown := self.progress.followed(self.follow)) is not None:
                self.follow = lines[(lines.index(shown) + 1) % len(lines)].number
            elif "1" <= key <= "9" and int(key) <= len(lines):
                self.follow = lines[int(key) - 1].number
            elif key == "0":
                self.follow = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop redrawing, and reading keys, while the terminal is needed for something else (the review prompt)."""
        self.keys.stop()
        self.live.stop()
        try:
            yield
        finally:
            self.live = self._new_live()  # a restarted Live would redraw over what was printed meanwhile
            self.reading_keys = self.keys.start(self.on_key)
            self.live.start()

    def stop(self) -> None:
        """Give the terminal back as it was (its settings, the cursor), after a last frame without the spinner."""
        self.keys.stop()
        self.reading_keys = False
        if self.live.is_started:
            with self.progress.lock:
                self.progress.stage = ""
            self.live.refresh()
            self.live.stop()
