"""The report's plots as PNG files: a metric per run with the best so far, and the training curves a log holds.

matplotlib is imported only when a plot is drawn, and only its Agg canvas is used: no window, no global
pyplot state, nothing that needs a display.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adapters.files import write_atomic
from adapters.logs import log_lines, parse_metrics, parse_progress

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


def _save(figure, path: Path) -> None:
    """Write the PNG as every file of the experiment is written: whole or not at all (write_atomic)."""
    png = io.BytesIO()
    figure.savefig(png, format="png")
    write_atomic(path, png.getvalue())


@_literal_text
def plot_metric_per_run(
    values: dict[int, float | None], metric: str, higher_is_better: bool, path: Path, *, target: str | None = None, best: int | None = None
) -> None:
    """The metric of each run (runs without it marked), the best so far as a step line, the goal's target (as written) and the best run."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(8, 4.5)
    ax = figure.add_subplot()
    scored = [(run, value) for run, value in sorted(values.items()) if value is not None and math.isfinite(value)]
    missing = [run for run, value in sorted(values.items()) if value is None]
    if scored:
        runs, metric_values = zip(*scored, strict=True)
        pick = max if higher_is_better else min
        best_so_far = [pick(metric_values[: i + 1]) for i in range(len(metric_values))]
        ax.plot(runs, metric_values, "o", color="tab:blue", label=metric)
        ax.step(runs, best_so_far, where="post", color="tab:orange", label="best so far")
    for i, run in enumerate(missing):
        ax.axvline(run, color="tab:red", linestyle=":", alpha=0.6, label="no value (run failed or did not report it)" if i == 0 else None)
    if target is not None:
        ax.axhline(float(target), color="tab:green", linestyle="--", label=f"goal {'≥' if higher_is_better else '≤'} {target}")
    if best is not None and values.get(best) is not None:
        ax.plot([best], [values[best]], "*", markersize=16, color="gold", markeredgecolor="black", label=f"best: run {best}")
    ax.set_xlabel("run")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per run ({'higher' if higher_is_better else 'lower'} is better)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    _save(figure, path)


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
