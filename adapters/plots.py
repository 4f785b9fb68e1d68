"""The report's plots as PNG files: a metric per run with the best so far, the search tree, and the training curves a log holds.

matplotlib is imported only when a plot is drawn, and only its Agg canvas is used: no window, no global
pyplot state, nothing that needs a display.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from adapters.files import write_atomic
from adapters.logs import log_lines, parse_metrics, parse_progress
from search import lineage, lineage_text, origin
from state import RunRecord

X_NAMES = ("global_step", "step", "iteration", "iter", "epoch")
"""Names in a log line that give the x of the other values in it, the finest first; else a progress form (`epoch 3/10`) does."""
LINE_X = "log line"
"""The x label of a curve whose lines name no x of their own (or not the same one): the number of the line in output.log."""
MAX_POINTS = 2_000
"""Points kept of one curve; a longer log is thinned evenly as it is read."""
MAX_SERIES = 32
"""Metric names followed in one log; later new names are ignored."""
MAX_PANELS = 6
"""Curves drawn, one panel each."""


@dataclass
class Curve:
    """One metric's values over a log, thinned to at most MAX_POINTS as they stream in."""

    points: list[tuple[float | None, int, float]] = field(default_factory=list)
    """(x named in the line or None, the line's number in the log, value)."""
    stride: int = 1
    """Every stride-th value is kept; doubled each time the points overflow."""
    seen: int = 0
    last: tuple[float | None, int, float] | None = None
    """The newest value, kept so a thinned curve still ends where the log does."""

    def add(self, point: tuple[float | None, int, float]) -> None:
        if self.seen % self.stride == 0:
            self.points.append(point)
            if len(self.points) > MAX_POINTS:
                self.points = self.points[::2]
                self.stride *= 2
        self.seen += 1
        self.last = point

    def kept(self) -> list[tuple[float | None, int, float]]:
        """The points kept, ending with the newest value."""
        return self.points if self.last is None or self.points[-1] == self.last else [*self.points, self.last]


@dataclass
class Curves:
    """The curves of one log, by metric name in order of first appearance."""

    series: dict[str, Curve] = field(default_factory=dict)
    x_names: dict[str, str] = field(default_factory=dict)
    """The x name each curve's lines carry, while all its lines carry the same one."""
    mixed: set[str] = field(default_factory=set)
    """Curves whose lines name different x, or some none: drawn against the log's line numbers."""
    lines: int = 0
    """Log lines read so far."""

    def add_line(self, line: str) -> None:
        """Add the values one log line names, against its epoch or step if it names one (`epoch=3`, `Epoch [3/10]`)."""
        self.lines += 1
        values = parse_metrics(line)
        if not values:
            return
        x_name = next((name for name in X_NAMES if name in values), None)
        x = values[x_name] if x_name else None
        if x_name is None and (progress := parse_progress(line)):
            x_name, x = ("iteration" if progress.unit == "it" else progress.unit), progress.done
        for name, value in values.items():
            if name in X_NAMES:
                continue
            curve = self.series.get(name)
            if curve is None:
                if len(self.series) >= MAX_SERIES:
                    continue
                curve = self.series[name] = Curve()
                if x_name:
                    self.x_names[name] = x_name
            if self.x_names.get(name) != x_name and name not in self.mixed:
                self.mixed.add(name)
                self.x_names.pop(name, None)
            curve.add((x, self.lines, value))

    def plottable(self, first: str | None = None) -> dict[str, tuple[str, list[float], list[float]]]:
        """Curves with at least two points, `first` ahead of the others, at most MAX_PANELS: name -> (x label, xs, ys)."""
        result = {}
        for name in sorted(self.series, key=lambda name: name != first):
            points = self.series[name].kept()
            if len(points) < 2:
                continue
            x_name = self.x_names.get(name)
            xs = [x for x, _, _ in points]
            if x_name is None or any(b <= a for a, b in zip(xs, xs[1:], strict=False)):  # a step count restarting each epoch, say
                x_name, xs = None, [float(order) for _, order, _ in points]
            result[name] = (x_name or LINE_X, xs, [value for _, _, value in points])
            if len(result) == MAX_PANELS:
                break
        return result


def read_curves(log_path: Path) -> Curves:
    """Every metric the log names, as a curve, read as a stream in bounded memory; empty when there is no log."""
    curves = Curves()
    for line, _ in log_lines(log_path):  # none without a log; the curves so far when it cannot be read to its end
        curves.add_line(line)
    return curves


def _literal_text(plot: Callable) -> Callable:
    """Draw `plot` with its labels taken as written: a metric named like `$x$` is not TeX to matplotlib here."""

    @functools.wraps(plot)
    def drawn(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return drawn


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write the PNG as every file of the experiment is written: whole or not at all (write_atomic); `metadata` as its text chunks."""
    png = io.BytesIO()
    figure.savefig(png, format="png", metadata=metadata)
    write_atomic(path, png.getvalue())


CANCELLED_FILL = "lightgray"
CANCELLED_EDGE = "dimgray"
"""A cancelled run (stopped in flight when another run ended the experiment; its metrics are where its log had got
to) is drawn apart from the runs that ended: pale, its outline or line dashed, never the best."""


def plot_metric_per_run(
    values: dict[int, float | None],
    metric: str,
    higher_is_better: bool,
    path: Path,
    *,
    target: str | None = None,
    best: int | None = None,
    cancelled: Collection[int] = (),
) -> None:
    """The metric per run as draw_metric_per_run draws it; the PNG's Description names each run's value (metric_description)."""
    metadata = {"Title": f"{metric} per run", "Description": metric_description(values, metric, best, cancelled)}
    _save(draw_metric_per_run(values, metric, higher_is_better, target=target, best=best, cancelled=cancelled), path, metadata=metadata)


@_literal_text
def draw_metric_per_run(
    values: dict[int, float | None],
    metric: str,
    higher_is_better: bool,
    *,
    target: str | None = None,
    best: int | None = None,
    cancelled: Collection[int] = (),
):
    """The metric of each run (runs without it marked), the best so far as a step line, the goal's target (as written) and the best run.

    The `cancelled` runs are drawn apart, hollow and grey at the value their log had reached when they were stopped:
    they count for neither the best so far nor the best run.
    """
    from matplotlib.ticker import MaxNLocator

    figure = _figure(8, 4.5)
    ax = figure.add_subplot()
    ended = sorted((run, value) for run, value in values.items() if run not in cancelled)
    stopped = sorted((run, value) for run, value in values.items() if run in cancelled)
    scored = [(run, value) for run, value in ended if value is not None and math.isfinite(value)]
    missing = [run for run, value in ended if value is None]
    if scored:
        runs, metric_values = zip(*scored, strict=True)
        pick = max if higher_is_better else min
        best_so_far = [pick(metric_values[: i + 1]) for i in range(len(metric_values))]
        ax.plot(runs, metric_values, "o", color="tab:blue", label=metric)
        ax.step(runs, best_so_far, where="post", color="tab:orange", label="best so far")
    for i, run in enumerate(missing):
        ax.axvline(run, color="tab:red", linestyle=":", alpha=0.6, label="no value (run failed or did not report it)" if i == 0 else None)
    if stopped_scored := [(run, value) for run, value in stopped if value is not None and math.isfinite(value)]:
        runs, metric_values = zip(*stopped_scored, strict=True)
        ax.plot(runs, metric_values, "o", markerfacecolor="none", markeredgecolor=CANCELLED_EDGE, linestyle="", label="cancelled: its value when stopped")
    for i, run in enumerate(run for run, value in stopped if value is None):
        ax.axvline(run, color=CANCELLED_EDGE, linestyle="--", alpha=0.6, label="cancelled before it reported a value" if i == 0 else None)
    if target is not None:
        ax.axhline(float(target), color="tab:green", linestyle="--", label=f"goal {'≥' if higher_is_better else '≤'} {target}")
    if best is not None and best not in cancelled and values.get(best) is not None:
        ax.plot([best], [values[best]], "*", markersize=16, color="gold", markeredgecolor="black", label=f"best: run {best}")
    ax.set_xlabel("run")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per run ({'higher' if higher_is_better else 'lower'} is better)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return figure


def metric_description(values: dict[int, float | None], metric: str, best: int | None = None, cancelled: Collection[int] = ()) -> str:
    """A line per run, as the metric plot's Description holds it: `3: acc=0.8, best`, `5: cancelled, acc=0.7 when stopped`, `2: no acc`."""
    lines = []
    for run, value in sorted(values.items()):
        shown = f"no {metric}" if value is None else f"{metric}={value!r}"
        if run in cancelled:
            lines.append(f"{run}: cancelled, {shown}{'' if value is None else ' when stopped'}")
        else:
            lines.append(f"{run}: {shown}{', best' if run == best else ''}")
    return "\n".join(lines)


STATUS_COLOURS = {"ok": "tab:green", "failed": "tab:red", "timeout": "tab:orange", "cancelled": CANCELLED_FILL}
"""A tree node's fill by its run's status; any other status is grey."""
OTHER_COLOUR = "tab:gray"
PATH_COLOUR = "tab:blue"
"""The line from the best run back to its draft: its edges and the outlines of its nodes."""
MAX_TREE_INCHES = (30.0, 30.0)
"""The tree figure's largest width and height (3000 px a side at 100 dpi): past them nodes and labels shrink instead."""
MIN_LABEL_POINTS = 4.5
"""Where a node's label would be smaller than this, it keeps only the run number."""


def tree_layout(runs: list[RunRecord]) -> dict[int, tuple[float, int]]:
    """Where each run sits in the tree figure: run number -> (x, depth), whatever order `runs` come in.

    A draft (or a run whose parent is not an earlier run among `runs`) is a root at depth 0, each other run one level
    below its parent. Leaves take x = 0, 1, 2... in depth-first order, children by run number; a parent sits midway
    over its first and last child; each draft's tree starts half a step after the one before. Runs in flight end
    out of order, so the records may too: a run's place depends on its parent only, never on when it ended.
    """
    numbers = {run["number"] for run in runs}
    children: dict[int, list[int]] = {number: [] for number in sorted(numbers)}
    roots: list[int] = []
    for run in sorted(runs, key=lambda run: run["number"]):
        parent = run["parent"]
        (children[parent] if parent in numbers and parent < run["number"] else roots).append(run["number"])  # a parent always starts first
    places: dict[int, tuple[float, int]] = {}
    next_x = 0.0
    for root in roots:
        stack: list[tuple[int, int, bool]] = [(root, 0, False)]  # by hand, not recursion: a linear search is one line hundreds deep
        while stack:
            number, depth, placed_children = stack.pop()
            kids = children[number]
            if placed_children:
                places[number] = ((places[kids[0]][0] + places[kids[-1]][0]) / 2, depth)
            elif not kids:
                places[number] = (next_x, depth)
                next_x += 1
            else:
                stack.append((number, depth, True))
                stack.extend((kid, depth + 1, False) for kid in reversed(kids))
        next_x += 0.5
    return places


def short_number(value: float) -> str:
    """A value in a node's few characters: exactly when that is short (0.981, 42), else to 4 significant digits."""
    exact = repr(value).removesuffix(".0")
    return exact if len(exact) <= 7 else f"{value:.4g}"


def node_label(run: RunRecord, metric: str | None, with_value: bool = True) -> str:
    """`7` over `acc=0.981` (the metric's name left to the title when long), or over the status of a run that did not end ok."""
    number = str(run["number"])
    if not with_value:
        return number
    if run["status"] != "ok":
        return f"{number}\n{run['status']}"
    if metric is None:
        return number
    value = run["metrics"].get(metric)
    name = f"{metric}=" if len(metric) <= 8 else ""
    return f"{number}\n{name}{'—' if value is None else short_number(value)}"


def ranked_best(runs: list[RunRecord], best: int | None) -> int | None:
    """`best`, unless it names a cancelled run: its metric is from the middle of its training, so it is never the best."""
    return None if any(run["number"] == best and run["status"] == "cancelled" for run in runs) else best


def tree_description(runs: list[RunRecord], metric: str | None, best: int | None = None) -> str:
    """A line per run in run order, as the tree PNG's Description holds it: `7: improve ← 3, ok, acc=0.981` (the value
    exactly as recorded), `9: improve ← 7, cancelled while in flight, acc=0.95 when stopped`."""
    best = ranked_best(runs, best)
    lines = []
    for run in sorted(runs, key=lambda run: run["number"]):
        stopped = run["status"] == "cancelled"
        parts = [f"{run['number']}: {origin(run)}", "cancelled while in flight" if stopped else run["status"]]
        if metric is not None and metric in run["metrics"]:
            parts.append(f"{metric}={run['metrics'][metric]!r}" + (" when stopped" if stopped else ""))
        if run["number"] == best:
            parts.append("best")
        lines.append(", ".join(parts))
    return "\n".join(lines)


def path_text(runs: list[RunRecord], best: int) -> str:
    """The best run's line for the legend: search.lineage_text, its middle left out when it is long."""
    chain = [run["number"] for run in lineage(runs, best)]
    if len(chain) <= 8:
        return lineage_text(runs, best)
    return f"run {' ← '.join(map(str, chain[:4]))} ← … ← {chain[-1]} ({len(chain)} runs)"


def label_points(labels: list[str], room_x: float, room_y: float) -> float:
    """The largest font size (at most 9 points) at which every label fits the room a node has, in points."""
    chars = max((len(line) for label in labels for line in label.splitlines()), default=1)
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    return min(9.0, room_x * 0.9 / (0.62 * chars), room_y * 0.85 / (1.2 * lines))


def plot_tree(runs: list[RunRecord], metric: str | None, higher_is_better: bool, path: Path, *, best: int | None = None) -> None:
    """The search tree as draw_tree draws it; the PNG's Description names every run (tree_description)."""
    metadata = {"Title": f"Search tree of {len(runs)} runs", "Description": tree_description(runs, metric, best)}
    _save(draw_tree(runs, metric, higher_is_better, best=best), path, metadata=metadata)


@_literal_text
def draw_tree(runs: list[RunRecord], metric: str | None, higher_is_better: bool, *, best: int | None = None):
    """The search tree: each run under the run it builds on, filled by status and labelled with its number and `metric`,
    the line from the best run back to its draft marked. A cancelled run is pale with a dashed outline and edge, and
    never the best.

    The figure grows with the tree up to MAX_TREE_INCHES, then its nodes and labels shrink; labels too small to read
    keep only the run number.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    best = ranked_best(runs, best)
    places = tree_layout(runs)
    xs = [x for x, _ in places.values()] or [0.0]
    span, levels = max(xs) - min(xs) + 1, max((depth for _, depth in places.values()), default=0) + 1
    width = min(max(6.0, 1.0 + 0.6 * span), MAX_TREE_INCHES[0])
    height = min(max(3.5, 2.0 + 0.9 * levels), MAX_TREE_INCHES[1])
    figure = _figure(width, height)
    ax = figure.add_subplot()
    ax.set_axis_off()

    # 1. Sizes from the room each node has, in points (72 an inch; about 2 inches go to the title and the legend).
    #    Labels go below their node or, where that leaves them larger (a deep, narrow tree), beside it.
    room_x, room_y = (width - 0.5) * 72 / span, (height - 2.0) * 72 / levels
    marker = min(max(min(room_x, room_y) * 0.35, 3.0), 14.0)
    labels = {run["number"]: node_label(run, metric) for run in runs}
    below, beside = label_points(list(labels.values()), room_x, room_y - marker), label_points(list(labels.values()), room_x - marker, room_y)
    with_values = max(below, beside) >= MIN_LABEL_POINTS
    if not with_values:
        labels = {run["number"]: node_label(run, metric, with_value=False) for run in runs}
        below, beside = label_points(list(labels.values()), room_x, room_y - marker), label_points(list(labels.values()), room_x - marker, room_y)
    size = max(below, beside, 2.0)

    # 2. Edges parent -> child, the best run's line over the others, an edge to a cancelled run dashed.
    on_path = {run["number"] for run in lineage(runs, best)} if best is not None else set()
    edges, path_edges, cancelled_edges = [], [], []
    for run in runs:
        if places[run["number"]][1] > 0:  # not a root
            (px, pd), (cx, cd) = places[run["parent"]], places[run["number"]]
            if run["number"] in on_path and run["parent"] in on_path:
                path_edges.append([(px, -pd), (cx, -cd)])
            else:
                (cancelled_edges if run["status"] == "cancelled" else edges).append([(px, -pd), (cx, -cd)])
    ax.add_collection(LineCollection(edges, colors="0.6", linewidths=1.0, zorder=1))
    ax.add_collection(LineCollection(cancelled_edges, colors="0.6", linewidths=1.0, linestyles="--", zorder=1))
    ax.add_collection(LineCollection(path_edges, colors=PATH_COLOUR, linewidths=3.0, zorder=2))

    # 3. Nodes by status, the best run's line outlined, cancelled runs in dashes, and their labels.
    statuses = list(dict.fromkeys(run["status"] for run in runs))
    for status in statuses:
        group = [run["number"] for run in runs if run["status"] == status]
        outline = CANCELLED_EDGE if status == "cancelled" else "white"
        ax.scatter(
            [places[n][0] for n in group],
            [-places[n][1] for n in group],
            s=[(marker * (1.4 if n == best else 1.0)) ** 2 for n in group],
            c=STATUS_COLOURS.get(status, OTHER_COLOUR),
            edgecolors=[PATH_COLOUR if n in on_path else outline for n in group],
            linewidths=[max(1.0, min(2.5, marker / 5)) if n in on_path or status == "cancelled" else 0.5 for n in group],
            linestyles="--" if status == "cancelled" else "-",
            zorder=3,
            label=status,
        )
    box = {"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}  # edges pass behind labels
    for number, (x, depth) in places.items():
        gap = marker * (1.4 if number == best else 1.0) / 2 + (3 if number in on_path else 1)
        offset, align = ((0, -gap), {"ha": "center", "va": "top"}) if below >= beside else ((gap, 0), {"ha": "left", "va": "center"})
        ax.annotate(labels[number], (x, -depth), xytext=offset, textcoords="offset points", fontsize=size, bbox=box, zorder=4, **align)
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(-(levels - 1) - 0.9, 0.4)

    # 4. Title and legend.
    drafts = sum(depth == 0 for _, depth in places.values())
    shown = f"run number and {metric} ({'higher' if higher_is_better else 'lower'} is better)" if metric and with_values else "run number"
    roots = f"{drafts} draft{'s' if drafts != 1 else ''}"
    stopped = sum(run["status"] == "cancelled" for run in runs)
    cancelled = f" · {stopped} cancelled" if stopped else ""
    figure.suptitle(f"Search tree: {len(runs)} runs from {roots}, each under the run it builds on\nLabels: {shown}{cancelled}", fontsize="medium")
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markersize=8,
            markerfacecolor=STATUS_COLOURS.get(status, OTHER_COLOUR),
            markeredgecolor=CANCELLED_EDGE if status == "cancelled" else STATUS_COLOURS.get(status, OTHER_COLOUR),
            label=status,
        )
        for status in statuses
    ]
    if on_path:
        handles.append(Line2D([], [], color=PATH_COLOUR, linewidth=3, label=f"best run's line: {path_text(runs, best)}"))
    if handles:
        # Three columns at most: with four, the best run's line (a long label) runs off a narrow figure.
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize="small", frameon=False)
    return figure


def plot_curves(curves: dict[str, tuple[str, list[float], list[float]]], title: str, path: Path) -> None:
    """One panel per curve (name -> (x label, xs, ys)), as read_curves gives them; its labels as written (see draw_curves)."""
    _save(draw_curves(curves, title), path)


@_literal_text
def draw_curves(curves: dict[str, tuple[str, list[float], list[float]]], title: str):
    """The figure plot_curves writes; whole-numbered x (epochs, steps, log lines) gets whole-numbered ticks."""
    from matplotlib.ticker import MaxNLocator

    columns = 1 if len(curves) == 1 else 2
    rows = math.ceil(len(curves) / columns)
    figure = _figure(6 * columns, 3.2 * rows + 0.6)
    figure.suptitle(title)
    for i, (name, (x_label, xs, ys)) in enumerate(curves.items()):
        ax = figure.add_subplot(rows, columns, i + 1)
        ax.plot(xs, ys, marker="." if len(xs) <= 60 else None, color=f"C{i}")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(x_label)
        if all(x == int(x) for x in xs):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    return figure
