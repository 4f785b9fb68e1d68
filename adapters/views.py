"""What the person watching sees: a live view on a terminal, one plain line per event elsewhere, or nothing but the outcome.

All three are fed the same way, by main.py from the graph's stream: `event()` for each custom event the
nodes emit (stage, output, run_done, ...) and `update()` for each node's state update (latest_run, next_run,
usage, goal). Every run is named with how it came about (search.origin): `draft`, `improve ← 3`, `debug ← 4`.
"""

from __future__ import annotations

import re
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
from goal import best_run, parse_goal
from search import origin
from state import add_usage, spend

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
class Progress:
    """Where the experiment stands, kept up to date from the stream; the views only read it."""

    experiment: str
    max_runs: int
    models: dict[str, str]
    """Stage name → model, e.g. {"plan, report": "...", "codegen": "...", "analyze": "..."}."""
    sandbox: str
    model_prices: dict[str, list[float]] = field(default_factory=dict)
    goal: str = ""
    runs: list[dict] = field(default_factory=list)
    """The finished runs' records, in run order: read from files when the view starts, then each latest_run update."""
    coming: dict | None = None
    """The coming run as the search chose it (state.NextRun: number, operator, parent, reason, and change once codegen names it)."""
    usage: list[dict] = field(default_factory=list)
    stage: str = ""
    stage_run: int | None = None
    stage_model: str | None = None
    stage_started: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    live_metrics: dict[str, float] = field(default_factory=dict)
    run_progress: RunProgress | None = None
    """The running script's latest progress line (tqdm bar, `epoch 3/10`...), if it printed one."""
    run_progress_at: float = 0.0
    """When run_progress was seen, for the time left."""
    halted: tuple[str, int | None, str] | None = None
    """(stage, run, stop reason) of the stage that was cut short (fatal, llm_unavailable, interrupted), once its update says so."""

    def seed(self, values: dict, runs: list[dict]) -> None:
        """Start from a saved state (a resume) and its finished runs, which live in files, not in the state (ExperimentFiles.read_runs)."""
        self.goal = values.get("goal", "") or self.goal
        self.max_runs = values.get("max_runs") or self.max_runs
        self.runs = list(runs)
        self.coming = values.get("next_run")
        self.usage = list(values.get("usage", []))

    def event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            self.stage, self.stage_run, self.stage_model = event["stage"], event.get("run"), event.get("model")
            self.stage_started = time.monotonic()
            if "operator" in event:  # summarize and codegen say what the coming run does
                known = self.coming if self.coming and self.coming["number"] == event.get("run") else {}
                self.coming = {**known, "number": event.get("run"), "operator": event["operator"], "parent": event.get("parent")}
                if event.get("reason"):
                    self.coming["reason"] = event["reason"]
            if self.stage == "execute":
                self.tail.clear()
                self.live_metrics = {}
                self.run_progress = None
        elif kind == "output":
            for line in event["lines"]:
                self.live_metrics.update(parse_metrics(line))
            if found := latest_progress(event["lines"]):  # the newest lines only: a flood costs no more
                self.run_progress, self.run_progress_at = found, time.monotonic()
            self.tail.extend(as_shown(line) for line in event["lines"][-TAIL_LINES:])
        elif kind == "output_redraw" and (found := parse_progress(event["line"])):  # a bar redrawn in place, not ended yet
            self.run_progress, self.run_progress_at = found, time.monotonic()

    def update(self, node: str, update: dict | None) -> None:
        if not isinstance(update, dict):
            return
        self.goal = update.get("goal") or self.goal
        self.max_runs = update.get("max_runs") or self.max_runs
        if latest := update.get("latest_run"):  # a resumed step may send the same run again: it replaces the first
            self.runs = sorted([*(run for run in self.runs if run["number"] != latest["number"]), latest], key=lambda run: run["number"])
        if "next_run" in update:
            self.coming = update["next_run"]
        self.usage = add_usage(self.usage, update.get("usage", []))  # summed as the state sums it: a few entries, however many calls
        if (halted := update.get("halted")) and halted.get("stage") == node:  # a resumed stage that succeeds carries halted: None
            self.halted = (node, self.stage_run if self.stage == node else None, update.get("stop_reason") or "")

    def time_left(self) -> float | None:
        """Seconds the running script has left by its latest progress line: the bar's own estimate, else the run's
        time so far scaled by the fraction still to do; None without a progress line (or at 0%)."""
        progress, now = self.run_progress, time.monotonic()
        if progress is None:
            return None
        since = now - self.run_progress_at
        if progress.left_s is not None:
            return max(progress.left_s - since, 0.0)
        if progress.fraction <= 0:
            return None
        run_time = self.run_progress_at - self.stage_started
        return max(run_time * (1 - progress.fraction) / progress.fraction - since, 0.0)

    @property
    def best(self) -> dict | None:
        return best_run(self.runs, self.goal)

    def origin_of(self, number: int | None) -> str:
        """How run `number` came about (`improve ← 3`), by its record or the search's choice; empty when neither says."""
        for run in reversed(self.runs):
            if run["number"] == number and run.get("operator"):
                return origin(run)
        if self.coming and self.coming["number"] == number:
            return origin(self.coming)
        return ""

    def coming_detail(self) -> str:
        """What the stage's run sets out to do, in words: the change codegen named, else why the search chose it."""
        if not self.coming or self.coming["number"] != self.stage_run:
            return ""
        return one_line(self.coming.get("change") or self.coming.get("reason") or "")

    def goal_value(self, run: dict) -> str:
        """The run's value of the goal metric, or its metrics when the goal names none."""
        parsed = parse_goal(self.goal)
        if parsed and parsed.metric in run["metrics"]:
            return f"{parsed.metric}={run['metrics'][parsed.metric]:.6g}"
        return format_metrics(run["metrics"]) if not parsed else "-"

    def spent(self) -> str:
        tokens = sum(u["input_tokens"] + u["output_tokens"] for u in self.usage)
        cost, _ = spend(self.usage, self.model_prices)
        return f"{tokens:,} tokens" + (f" · ${cost:.4f}" if cost is not None else "")


def stage_title(progress: Progress) -> str:
    """`run 5 · codegen · improve ← 3 (model)`: the run, the stage, how the run comes about, the stage's model."""
    run = f"run {progress.stage_run} · " if progress.stage_run else ""
    how = progress.origin_of(progress.stage_run) if progress.stage_run else ""
    model = f" ({progress.stage_model})" if progress.stage_model else ""
    return f"{run}{progress.stage}{f' · {how}' if how else ''}{model}"


# The live view: one renderable, redrawn a few times a second.


def render_live(progress: Progress) -> RenderableType:
    """The whole live view for `progress` as it is now."""
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
        detail = progress.coming_detail()
        title = Text.assemble((stage_title(progress), "bold cyan"), f"  {elapsed(now - progress.stage_started)}", (f"  {detail}" if detail else "", "dim"))
        title.no_wrap, title.overflow = True, "ellipsis"
        line = Table.grid()  # the spinner wraps a plain Text anew, which would wrap a long reason over lines
        line.add_row(title)
        parts.append(Spinner("dots", text=line))
    if progress.halted:
        stage, run, reason = progress.halted
        mark, words, style = halt_mark(reason)
        parts.append(Text(f"{mark} {f'run {run} · ' if run else ''}{stage} {words}", style=f"bold {style}"))
    if progress.stage == "execute":
        tail = Text("\n".join(progress.tail) or "(no output yet)", no_wrap=True, overflow="ellipsis", style="dim")
        parts.append(Panel(tail, title=f"run {progress.stage_run} · output.log (last {TAIL_LINES} lines)", title_align="left", border_style="dim"))
        if progress.run_progress and not halted_here:
            parts.append(progress_bar(progress.run_progress, progress.time_left()))
        parts.append(Text(f"latest metrics: {format_metrics(progress.live_metrics)}"))
    if progress.runs:
        parts.append(runs_table(progress))
    if progress.usage:
        parts.append(usage_table(progress))
    return Group(*parts)


def progress_bar(run_progress: RunProgress, left: float | None) -> Table:
    """The running script's progress as its output says it: what is counted, a bar, the percentage and the time left."""
    row = Table.grid(padding=(0, 1))
    row.add_row(
        Text(run_progress.counted, style="bold"),
        ProgressBar(total=1.0, completed=run_progress.fraction, width=30),
        Text(f"{run_progress.fraction:.0%}"),
        Text(f"ETA {elapsed(left)}" if left is not None else "ETA unknown", style="dim"),
    )
    return row


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
        style = {"ok": "green", "failed": "red", "timeout": "yellow"}.get(run["status"], "")
        table.add_row(f"{run['number']}{star}", run_origin(run), Text(run["status"], style=style), f"{run['duration_s']:.1f} s", progress.goal_value(run))
    return table


def usage_table(progress: Progress) -> Table:
    """Tokens and cost per stage, and in total."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("stage", "calls", "input tokens", "output tokens", "cost"):
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
            f"{sum(c['output_tokens'] for c in calls):,}",
            "unknown" if cost is None else f"${cost:.4f}",
        )
    return table


# The three views.


def event_line(event: dict) -> Text | None:
    """The one line an event is shown as, or None for events shown otherwise (output) or not at all."""
    kind = event.get("event")
    how = f" · {run_origin(event)}" if "operator" in event else ""
    if kind == "stage":
        run = f"run {event['run']} · " if event.get("run") else ""
        line = Text(f"▶ {run}{event['stage']}{how}", style="bold cyan")
        if event.get("model"):
            line.append(f" ({event['model']})", style="dim")
        return line.append(f" · {one_line(event['reason'])}", style="dim") if event.get("reason") else line
    if kind == "run_done":
        colour = "green" if event["status"] == "ok" else "red"
        line = Text(f"■ run {event['run']} {event['status']}", style=colour)
        return line.append(f" in {event['duration_s']:.1f} s{how} · metrics: {format_metrics(event['metrics'])}")
    if kind == "analysis":
        return Text.assemble((f"✎ run {event['run']}:", "magenta"), f" {event['summary']}")
    if kind == "syntax_retry":
        return Text(f"! run {event['run']}: generated code does not compile ({event['error']}); asking once more", style="yellow")
    if kind == "warning":
        return Text(f"! {event['message']}", style="yellow")
    return None


class PlainView:
    """One line per event: stage started or finished, run result, analysis, warnings; the script's output dimmed."""

    def __init__(self, console: Console, progress: Progress, echo_output: bool = True):
        self.console = console
        self.progress = progress
        self.echo_output = echo_output
        self.progress_shown: tuple[RunProgress | None, float] = (None, 0.0)
        """The progress line printed last, and when."""

    def start(self) -> None:
        p = self.progress
        models = ", ".join(f"{stage}={model}" for stage, model in p.models.items())
        goal = f" · goal: {p.goal}" if p.goal else ""
        self.console.print(Text(f"experiment {p.experiment}{goal} · sandbox: {p.sandbox} · models: {models}"), soft_wrap=True)

    def event(self, event: dict) -> None:
        self.progress.event(event)
        if event.get("event") == "output":
            if self.echo_output:
                self.echo(event["lines"])
            self.show_progress()
        elif event.get("event") == "output_redraw":
            self.show_progress()
        elif line := event_line(event):
            self.console.print(line, soft_wrap=True)

    def echo(self, lines: list[str]) -> None:
        """The script's output lines, dimmed, written straight to the console's file in one write.

        Through rich, 200 long lines cost the main thread some 50 ms, and a flood brings such a batch every
        poll: time the thread copying the output into output.log waits for (the GIL). This costs 2 ms.
        """
        dim, undim = ("\x1b[2m", "\x1b[0m") if self.console.color_system else ("", "")
        self.console.file.write("".join(f"{dim}  │ {as_shown(line)}{undim}\n" for line in lines))
        self.console.file.flush()

    def show_progress(self) -> None:
        """A line with the run's percentage and time left, when its progress moved, at most every PROGRESS_EVERY_S."""
        p, now = self.progress, time.monotonic()
        shown, shown_at = self.progress_shown
        if p.run_progress is None or p.run_progress == shown or now - max(shown_at, p.stage_started) < PROGRESS_EVERY_S:
            return
        self.progress_shown = (p.run_progress, now)
        left = p.time_left()
        line = f"  ⋯ run {p.stage_run} · {p.run_progress.counted} ({p.run_progress.fraction:.0%})" + (f" · ETA {elapsed(left)}" if left is not None else "")
        self.console.print(Text(line, style="cyan"), soft_wrap=True)

    def update(self, node: str, update: dict | None) -> None:
        self.progress.update(node, update)
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
        yield

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
    """The live view on a terminal: header, runs progress, the stage with its spinner, the output tail, runs and tokens."""

    def __init__(self, console: Console, progress: Progress):
        self.console = console
        self.progress = progress
        self.live = self._new_live()

    def _new_live(self) -> Live:
        return Live(console=self.console, get_renderable=lambda: render_live(self.progress), refresh_per_second=4, transient=False)

    def start(self) -> None:
        self.live.start()

    def event(self, event: dict) -> None:
        self.progress.event(event)
        if event.get("event") in ("warning", "analysis", "syntax_retry"):  # kept above the view, as a log
            self.live.console.print(event_line(event), soft_wrap=True)

    def update(self, node: str, update: dict | None) -> None:
        self.progress.update(node, update)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop redrawing while the terminal is needed for something else (the review prompt)."""
        self.live.stop()
        try:
            yield
        finally:
            self.live = self._new_live()  # a restarted Live would redraw over what was printed meanwhile
            self.live.start()

    def stop(self) -> None:
        """Draw the last frame without the spinner and give the terminal back (cursor included)."""
        if self.live.is_started:
            self.progress.stage = ""
            self.live.refresh()
            self.live.stop()
