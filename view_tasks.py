"""Show an experiment's tasks and runs (a table, or the tree the search grew) from its files; it only reads, so it works while the runner is busy.

With several runs in flight, runs end out of order: run 3 may have its result.json while run 2 still trains. A run
folder without a result is shown by what its files say: running (the runner lists its processes in
.runner/child-N.json), interrupted (listed there, but no runner is working), not started (no output.log yet) or not
finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from adapters.files import ExperimentFiles
from adapters.logs import format_metrics
from adapters.views import run_origin, status_text
from goal import Goal, best_run, goal_from_plan, parse_goal
from search import origin

EXIT_OK, EXIT_USAGE = 0, 2
WATCH_INTERVAL_S = 2.0
"""How often --watch rereads the files when no interval is given."""
ERROR_CHARS = 80
"""Characters of a run's error shown in the runs table."""
TREE_ERROR_CHARS = 50
"""Characters of a failed run's error shown in the tree."""
TREE_RUNS = 60
"""Runs the tree shows whole. Past it, a long line of runs shows its ends and a run's many attempts their latest ones,
the rest counted in one line each; the best run and the latest stay in sight."""
TREE_KEEP = 3
"""In a folded tree: runs kept at each end of a long line, and the latest attempts kept under a run."""

TASK_STYLE = {"todo": "white", "in_progress": "yellow", "done": "green", "dropped": "dim"}
RUNNING, INTERRUPTED, NOT_STARTED, NOT_FINISHED = "running", "interrupted", "not started", "not finished"
"""Where a run without a result stands (see Unfinished.state)."""
UNFINISHED_STYLE = {RUNNING: "cyan", INTERRUPTED: "yellow", NOT_STARTED: "dim", NOT_FINISHED: "cyan"}


class ViewError(Exception):
    """The folder or its tasks.json cannot be shown; printed as one `error:` line, exit code 2."""


class NotStarted(ViewError):
    """No tasks.json yet: the experiment has not planned. --watch waits for it instead of failing."""


@dataclass
class Unfinished:
    """A run folder without a result: where the run stands, as the files tell."""

    state: str
    """running (.runner/child-N.json lists its processes and a runner is working), interrupted (listed, but no runner
    is working: a resume runs it again), not started (no output.log yet: waiting for a device, say) or not finished."""
    note: str
    """What the folder shows: its output.log's size, and the GPUs a running run was given."""
    elapsed_s: float | None = None
    """Seconds since the run started, when its child-N.json says when."""
    operator: str | None = None
    """How the run came about, when its child-N.json says: it then has its place in the tree."""
    parent: int | None = None
    """The run it builds on (None for a draft), when its child-N.json says."""


@dataclass
class Snapshot:
    """What the experiment's files say at one moment."""

    root: Path
    goal: str
    """PLAN.md's goal line, e.g. 'test_accuracy >= 0.98', or empty."""
    tasks: list[dict]
    results: list[dict]
    """Finished runs' result.json, in run order (a cancelled run too: it was stopped in flight, with a record)."""
    unfinished: dict[int, Unfinished] = field(default_factory=dict)
    """Run number -> where a run folder without a result stands; a gap among the finished runs is one of these."""
    report: Path | None = None
    """REPORT.md, once the experiment has finished."""


def read_tasks(path: Path) -> list[dict]:
    """tasks.json's list of tasks; NotStarted when it is missing, ViewError when it cannot be read."""
    if not path.is_file():
        raise NotStarted(f"no {path.name} in {path.parent} yet: the experiment has not started planning (--watch waits for it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ViewError(f"cannot read {path}: {exc}") from None
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, list) or not all(isinstance(task, dict) and isinstance(task.get("runs", []), list) for task in tasks):
        raise ViewError(f'{path} is garbled: expected {{"tasks": [{{"id", "title", "status", "notes", "runs": [...]}}, ...]}} as the runner writes it')
    return tasks


def read_goal(path: Path) -> str:
    """The goal PLAN.md states, or empty when there is no plan (yet)."""
    try:
        return goal_from_plan(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return ""


def read_snapshot(files: ExperimentFiles) -> Snapshot:
    """Read tasks, goal and runs; ViewError (or NotStarted) when there is nothing to show."""
    if not files.root.is_dir():
        raise ViewError(f"experiment directory {files.root} does not exist")
    tasks = read_tasks(files.tasks)
    results = files.read_results()
    finished = {result["number"] for result in results}
    pending = [number for number in files.existing_runs() if number not in finished]
    working = bool(pending) and files.runner() is not None
    unfinished = {number: unfinished_run(files, number, working, time.time()) for number in pending}
    report = files.report if files.report.is_file() else None
    return Snapshot(files.root, read_goal(files.plan), tasks, results, unfinished, report)


def unfinished_run(files: ExperimentFiles, number: int, working: bool, now: float) -> Unfinished:
    """Where run `number`, whose folder holds no readable result, stands; `working`: whether a runner holds the experiment."""
    run_dir = files.run_dir(number)
    if (run_dir / "result.json").exists():
        return Unfinished(NOT_FINISHED, "result.json unreadable")
    try:
        log = f"output.log {human_size((run_dir / 'output.log').stat().st_size)}"
    except OSError:
        log = ""
    child = read_child(files.child_file(number))
    if child is None:
        return Unfinished(NOT_FINISHED if log else NOT_STARTED, log or "no output.log yet")
    note = log or "no output.log yet"
    if gpus := [str(gpu) for gpu in child.get("gpus") or []]:
        note += f" · GPU{'s' if len(gpus) > 1 else ''} {','.join(gpus)}"
    if node := child.get("node"):
        note += f" · on {node}"
    started = child.get("started")
    elapsed = max(0.0, now - started) if isinstance(started, int | float) else None
    operator, parent = child.get("operator"), child.get("parent")
    if not isinstance(operator, str) or not (parent is None or isinstance(parent, int)):
        operator, parent = None, None  # the file does not say how the run came about: it is listed apart from the tree
    if not working:
        return Unfinished(INTERRUPTED, f"{note} · no runner is working: a resume runs it again", None, operator, parent)
    return Unfinished(RUNNING, note, elapsed, operator, parent)


def read_child(path: Path) -> dict | None:
    """What a run's child-N.json says (the runner writes it while the run's processes live), {} when it cannot be read, None without one."""
    try:
        child = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return child if isinstance(child, dict) else {}


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} KiB" if size < 1024**2 else f"{size / 1024**2:.1f} MiB"


def human_duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def short(text: str, limit: int = ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tasks_table(tasks: list[dict]) -> Table:
    """Every task in file order: status, title, notes and the runs that worked on it."""
    counts = Counter(str(task.get("status", "")).replace("_", " ") for task in tasks)
    table = Table(title=f"Tasks ({', '.join(f'{n} {status}' for status, n in counts.items())})", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("Status", no_wrap=True)
    table.add_column("Title", overflow="fold")
    table.add_column("Notes", overflow="fold")
    table.add_column("Runs")
    for task in tasks:
        status, title, notes = (str(task.get(name, "")) for name in ("status", "title", "notes"))
        runs = ", ".join(map(str, task.get("runs") or []))
        table.add_row(str(task.get("id", "")), Text(status, style=TASK_STYLE.get(status, "")), Text(title), Text(notes), runs)
    return table


def metric_text(result: dict, parsed: Goal | None) -> str:
    """The run's value of the goal metric ("-" when it reported none), or all its metrics when there is no numeric goal;
    a cancelled run's are where its log had got to when it was stopped, and say so. In a graded experiment the grade,
    with the self-report of the goal metric beside when there is one: `0.71 (self-reported 0.99)`."""
    stopped = " when stopped" if result["status"] == "cancelled" else ""
    if parsed is None:
        return format_metrics(result["metrics"]) + (stopped if result["metrics"] else "")
    value = result["metrics"].get(parsed.metric)
    text = "-" if value is None else f"{value:.6g}"
    text += stopped if result["metrics"] else ""
    if (reported := result.get("reported", {}).get(parsed.metric)) is not None:
        text += f" (self-reported {reported:.6g}{stopped})"
    return text


def error_text(result: dict, limit: int) -> str:
    """The run's error, cut to `limit`; for a cancelled run, why it was stopped."""
    error = result.get("error") or ""
    return short(error.removeprefix("cancelled: ") if result["status"] == "cancelled" else error, limit)


def unfinished_status(run: Unfinished) -> Text:
    """Where a run without a result stands, over what its folder shows."""
    return Text(f"{run.state}\n{run.note}", style=UNFINISHED_STYLE[run.state])


def runs_table(snapshot: Snapshot) -> Table:
    """One row a run: how it came about (its operator and parent: `improve ← 3`), status, duration, the goal metric (or
    all metrics without a numeric goal), error; the best run starred. A run without a result says where it stands, and
    a running run how long it has run."""
    parsed = parse_goal(snapshot.goal)
    best = best_run(snapshot.results, snapshot.goal)
    table = Table(title="Runs", title_justify="left")
    table.add_column("Run", justify="right", no_wrap=True)
    table.add_column("From", no_wrap=True)
    table.add_column("Status")
    table.add_column("Duration", justify="right", no_wrap=True)
    table.add_column(parsed.metric if parsed else "Metrics", justify="right" if parsed else "left", overflow="fold")
    table.add_column("Error", overflow="fold")
    rows = [(result["number"], result) for result in snapshot.results] + [(number, None) for number in snapshot.unfinished]
    for number, result in sorted(rows, key=lambda row: row[0]):
        if result is None:
            run = snapshot.unfinished[number]
            since = "-" if run.elapsed_s is None else human_duration(run.elapsed_s)
            table.add_row(str(number), unfinished_origin(run), unfinished_status(run), since, "-", "")
            continue
        star = " ★" if best is not None and best["number"] == number else ""
        duration = human_duration(result["duration_s"])
        table.add_row(f"{number}{star}", run_origin(result), status_text(result), duration, metric_text(result, parsed), Text(error_text(result, ERROR_CHARS)))
    return table


def unfinished_origin(run: Unfinished) -> str:
    """How a run without a result came about, when its child-N.json says; else empty."""
    return run_origin({"operator": run.operator, "parent": run.parent}) if run.operator else ""


def runs_tree(snapshot: Snapshot, limit: int = TREE_RUNS) -> Tree:
    """The runs as the search grew them: drafts as roots, each run under the run it builds on, ★ on the best.

    A line of runs where each has a single child is one node, a run a row, each building on the row above: a long
    line of improvements or fixes stays at one depth. Runs from before the tree search (no parent) are roots. A run
    in flight stands under its parent when its child-N.json says which that is; any other run without a result is
    listed last. Past `limit` runs, long lines and long lists of attempts are folded (TREE_RUNS).
    """
    grown = RunTree(snapshot, folded=len(snapshot.results) > limit)
    title = "Runs as a tree: each under the run it builds on, ★ the best"
    if grown.folded:
        title = f"Runs as a tree, folded: {len(snapshot.results)} runs, the best run's line at the top, ★ the best"
    tree = Tree(Text(title, style="bold"), guide_style="dim")
    stack = [(tree, number) for number in reversed(grown.shown_children(tree, None))]
    while stack:  # depth first, without recursion: a tree of a thousand runs may be as deep
        branch, number = stack.pop()
        line = [number]
        while len(only := grown.children.get(line[-1], [])) == 1:
            line.append(only[0])
        node = branch.add(grown.line_text(line))
        # Folded, the best run's line goes on at this depth (each row names its parent), however deep it grew.
        stack += [(branch if child in grown.spine else node, child) for child in reversed(grown.shown_children(node, line[-1]))]
    for number, run in sorted(snapshot.unfinished.items()):
        if number not in grown.flights:
            tree.add(unfinished_line(number, run))
    return tree


def unfinished_line(number: int, run: Unfinished, text: Text | None = None) -> Text:
    """`8 improve ← 5 · running · 1.5 min · output.log 2.0 KiB · GPU 0`, appended to `text` when given."""
    text = Text() if text is None else text
    text.append(f"{number}{f' {unfinished_origin(run)}' if run.operator else ''} · ").append(run.state, style=UNFINISHED_STYLE[run.state])
    since = "" if run.elapsed_s is None else f" · {human_duration(run.elapsed_s)}"
    return text.append(f"{since} · {run.note}", style="dim")


class RunTree:
    """The finished runs as a tree, with the runs in flight that say their parent, and what a folded tree keeps in sight:
    the best run, the latest and those in flight, and the way to them."""

    def __init__(self, snapshot: Snapshot, folded: bool):
        self.results = {result["number"]: result for result in snapshot.results}
        self.flights = {
            number: run
            for number, run in snapshot.unfinished.items()
            if run.operator and (run.parent is None or (run.parent in self.results and run.parent < number))
        }
        """The runs without a result whose child-N.json says how they came about: leaves under their parent (or drafts)."""
        self.best = best_run(snapshot.results, snapshot.goal)
        self.goal = parse_goal(snapshot.goal)
        self.folded = folded
        self.parent: dict[int, int | None] = {}
        self.children: dict[int | None, list[int]] = {}
        for number in sorted([*self.results, *self.flights]):  # by number, not by when they ended: runs in flight end out of order
            parent = self.results[number].get("parent") if number in self.results else self.flights[number].parent
            self.parent[number] = parent if parent in self.results and parent < number else None  # a parent always starts first
            self.children.setdefault(self.parent[number], []).append(number)
        self.sizes: dict[int, int] = {}
        """How many runs each run's subtree holds, itself included."""
        for number in sorted(self.parent, reverse=True):
            self.sizes[number] = 1 + sum(self.sizes[child] for child in self.children.get(number, []))
        latest = {max(self.results)} if self.results else set()
        self.marked = latest | ({self.best["number"]} if self.best else set()) | set(self.flights)
        """The runs a folded tree never hides: the best, the latest finished and those in flight."""
        self.leading = {ancestor for number in self.marked for ancestor in self.lineage(number)}
        """The marked runs and their ancestors: a folded list of attempts keeps the one that leads to them."""
        self.spine = set(self.lineage(self.best["number"])) if folded and self.best else set()
        """Folded, the best run and its ancestors: shown at one depth, so that a deep tree stays readable."""

    def lineage(self, number: int) -> list[int]:
        """Run `number` and its ancestors."""
        chain = [number]
        while (parent := self.parent.get(chain[-1])) is not None:
            chain.append(parent)
        return chain

    def shown_children(self, node: Tree, number: int | None) -> list[int]:
        """The children of run `number` (None: the roots) the tree shows: all, or when folded the latest TREE_KEEP and
        the one leading to a marked run; the others are counted in one row added to `node`."""
        children = self.children.get(number, [])
        if not self.folded or len(children) <= TREE_KEEP + 1:
            return children
        shown = [child for i, child in enumerate(children) if i >= len(children) - TREE_KEEP or child in self.leading]
        hidden = [child for child in children if child not in shown]
        runs = sum(self.sizes[child] for child in hidden)
        node.add(Text(f"… {len(hidden)} earlier attempt{plural(len(hidden))} not shown ({runs} run{plural(runs)} in all)", style="dim"))
        return shown

    def line_text(self, line: list[int]) -> Text:
        """A line of runs, one a row: how it came about, its status and goal metric (its error when it failed, why when it was
        cancelled); a run in flight where it stands.

        Folded, a long line shows its ends and its marked runs; the runs between are counted in a row."""
        rows: list[int | str] = []
        hidden: list[int] = []
        for i, number in enumerate(line):
            if self.folded and TREE_KEEP <= i < len(line) - TREE_KEEP and number not in self.marked:
                hidden.append(number)
                continue
            if len(hidden) > 1:  # the last TREE_KEEP are always shown: every gap is closed here
                rows.append(f"⋮ {len(hidden)} runs not shown, each building on the one above")
            else:
                rows += hidden  # one run folded would take a row all the same
            rows.append(number)
            hidden = []
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, row in enumerate(rows):
            text.append("\n" if i else "")
            if isinstance(row, str):
                text.append(row, style="dim")
                continue
            if row in self.flights:
                unfinished_line(row, self.flights[row], text)
                continue
            result = self.results[row]
            star = self.best is not None and row == self.best["number"]
            text.append(f"{row}{' ★' if star else ''}", style="bold" if star else "")
            text.append(f" {origin(result)}" if result.get("operator") else "")  # written before the tree search: no origin
            text.append(" · ").append(status_text(result))
            metric = metric_text(result, self.goal)
            if result["status"] == "ok" or metric not in ("-", format_metrics({})):  # a failed run's error says more than "-"
                text.append(f" · {metric}")
            if result["status"] != "ok" and result.get("error"):
                text.append(f" · {error_text(result, TREE_ERROR_CHARS)}", style="dim")
        return text


def plural(count: int) -> str:
    return "" if count == 1 else "s"


def summary_line(snapshot: Snapshot) -> str:
    """N runs finished (C cancelled), how many stand where (running, ...), the best run against the goal, and the report once there is one."""
    finished = len(snapshot.results)
    cancelled = sum(result["status"] == "cancelled" for result in snapshot.results)
    standing = Counter(run.state for run in snapshot.unfinished.values())
    counts = "".join(f", {standing[state]} {state}" for state in (RUNNING, INTERRUPTED, NOT_STARTED, NOT_FINISHED) if standing[state])
    parts = [f"{finished} run{plural(finished)} finished" + (f" ({cancelled} cancelled)" if cancelled else "") + counts]
    parsed = parse_goal(snapshot.goal)
    best = best_run(snapshot.results, snapshot.goal)
    if parsed is None:
        parts.append("no numeric goal in PLAN.md")
    elif best is None:
        parts.append(f"no run reported {parsed.metric} yet (goal {snapshot.goal})")
    else:
        value = best["metrics"][parsed.metric]
        verdict = "goal met" if parsed.met_by(best["metrics"]) else "goal not met"
        parts.append(f"best run {best['number']} with {parsed.metric}={value:.6g} vs target {parsed.op} {parsed.written} ({verdict})")
    if snapshot.report is not None:
        parts.append(f"report: {snapshot.report}")
    return " · ".join(parts)


def render(snapshot: Snapshot, updated: str = "", tree: bool = False) -> RenderableType:
    """The header, the tasks table, the runs (a table, or with `tree` the tree) and the summary line."""
    header = Text.assemble(("Experiment ", "bold"), str(snapshot.root), " · goal: ", snapshot.goal or "none stated yet")
    if updated:
        header.append(f" · {updated}", style="dim")
    tasks = tasks_table(snapshot.tasks) if snapshot.tasks else Text("No tasks yet.")
    runs = (runs_tree if tree else runs_table)(snapshot) if snapshot.results or snapshot.unfinished else Text("No runs yet.")
    return Group(header, tasks, runs, Text(summary_line(snapshot), style="bold"))


def render_or_wait(files: ExperimentFiles, interval: float, tree: bool = False) -> RenderableType:
    """What one --watch refresh shows: the snapshot, or a waiting line until tasks.json appears."""
    updated = f"{time.strftime('%H:%M:%S')}, every {interval:g} s, Ctrl-C to stop"
    try:
        return render(read_snapshot(files), updated, tree)
    except NotStarted:
        return Text(f"waiting for the experiment to start: no tasks.json in {files.root} yet · {updated}")


def watch(files: ExperimentFiles, interval: float, console: Console, tree: bool = False) -> NoReturn:
    """Reread and redraw every `interval` seconds until Ctrl-C (or a ViewError); a fresh plain snapshot each time when not a terminal."""
    if not console.is_terminal:
        while True:
            console.print(render_or_wait(files, interval, tree))
            console.print()
            time.sleep(interval)
    with Live(render_or_wait(files, interval, tree), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(render_or_wait(files, interval, tree), refresh=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise ViewError(message)


def seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {raw!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="view_tasks.py", description="Show an experiment's tasks and runs; it only reads files, so it works while the runner is busy.")
    parser.add_argument("-d", "--experiment-dir", default=".", help="experiment folder (default: current directory)")
    every = f"refresh every SECONDS (default {WATCH_INTERVAL_S:g}) until Ctrl-C"
    parser.add_argument("-w", "--watch", nargs="?", type=seconds, const=WATCH_INTERVAL_S, metavar="SECONDS", help=every)
    parser.add_argument("--interval", type=seconds, metavar="SECONDS", help="same as --watch SECONDS")
    parser.add_argument("--tree", action="store_true", help="show the runs as the tree the search grew, each under the run it builds on")
    args = parser.parse_args(argv)
    args.watch = args.interval or args.watch
    return args


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    """Show the experiment once, or keep showing it with --watch; returns the exit code."""
    console = console or Console(highlight=False)
    try:
        args = parse_args(argv)
        files = ExperimentFiles(args.experiment_dir)
        if args.watch:
            watch(files, args.watch, console, args.tree)
        else:
            console.print(render(read_snapshot(files), tree=args.tree))
    except ViewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        pass
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
