"""Tests for adapters/plots.py: what best_run_curves.png is drawn from (x values and their label) and its axis ticks;
where tree.png places each run, and that it is a real PNG naming every run in the colours of their statuses; how both
plots show a run cancelled in flight."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fakes import make_run
from matplotlib.colors import to_rgb
from PIL import Image

from adapters.plots import (
    CANCELLED_EDGE,
    CANCELLED_FILL,
    LINE_X,
    PATH_COLOUR,
    STATUS_COLOURS,
    draw_curves,
    draw_metric_per_run,
    draw_tree,
    node_label,
    plot_curves,
    plot_metric_per_run,
    plot_tree,
    read_curves,
    tree_layout,
)
from state import RunRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_log(tmp_path: Path, text: str) -> Path:
    log = tmp_path / "output.log"
    log.write_text(text, encoding="utf-8")
    return log


def x_ticks(curves: dict) -> list[list[float]]:
    """The x ticks of each panel as drawn (within the axis range)."""
    figure = draw_curves(curves, "Run 1")
    figure.canvas.draw()
    ticks = []
    for ax in figure.axes:
        low, high = ax.get_xlim()
        ticks.append([t for t in ax.get_xticks() if low <= t <= high])
    return ticks


def test_curves_take_the_epoch_of_a_progress_form_as_x(tmp_path: Path):
    epochs = "".join(f"Epoch [{e}/3] loss: {loss} acc: {acc}\n" for e, loss, acc in ((1, 0.9, 0.5), (2, 0.6, 0.7), (3, 0.4, 0.8)))
    log = write_log(tmp_path, f"loading\n{epochs}acc: 0.79 on the test set\n")

    curves = read_curves(log).plottable(first="loss")

    assert curves["loss"] == ("epoch", [1.0, 2.0, 3.0], [0.9, 0.6, 0.4])
    assert curves["acc"][0] == LINE_X, "the test line names no epoch: acc is drawn against the log's lines"
    assert curves["acc"][1] == [2.0, 3.0, 4.0, 5.0]
    assert all(t == int(t) for panel in x_ticks(curves) for t in panel)


def test_curves_take_the_step_of_step_lines_and_tqdm_bars(tmp_path: Path):
    steps = write_log(tmp_path, "".join(f"step {s}/5000 loss={1 / s:.4f}\n" for s in (100, 200, 300)))
    assert read_curves(steps).plottable()["loss"][:2] == ("step", [100.0, 200.0, 300.0])

    bars = write_log(tmp_path, "".join(f"{s}%|#| {s}/100 [00:0{s // 40}<00:01, 9.9it/s, loss={1 - s / 100:.2f}]\n" for s in (20, 40, 80)))
    assert read_curves(bars).plottable()["loss"][:2] == ("iteration", [20.0, 40.0, 80.0])


def test_curves_of_a_log_that_names_no_step_run_along_its_lines_with_whole_ticks(tmp_path: Path):
    log = write_log(tmp_path, "start\nloss=0.9\nnoise\nloss=0.5\nloss=0.4\n")

    curves = read_curves(log).plottable()

    assert curves["loss"] == (LINE_X, [2.0, 4.0, 5.0], [0.9, 0.5, 0.4])
    [ticks] = x_ticks(curves)
    assert ticks and all(t == int(t) for t in ticks), ticks  # not 2.25, 2.5, ...


def test_epoch_curves_get_whole_ticks_and_the_png_is_written(tmp_path: Path):
    log = write_log(tmp_path, "epoch=1 loss=0.9\nepoch=2 loss=0.5\nepoch=3 loss=0.45\n")
    curves = read_curves(log).plottable()
    assert curves == {"loss": ("epoch", [1.0, 2.0, 3.0], [0.9, 0.5, 0.45])}

    assert x_ticks(curves) == [[1.0, 2.0, 3.0]]
    figure = draw_curves(curves, "Run 1")
    assert [ax.get_xlabel() for ax in figure.axes] == ["epoch"]

    plot_curves(curves, "Run 1", tmp_path / "best_run_curves.png")
    assert (tmp_path / "best_run_curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_fractional_epochs_keep_their_fractional_ticks(tmp_path: Path):
    log = write_log(tmp_path, "epoch=0.5 loss=0.9\nepoch=1.0 loss=0.5\nepoch=1.5 loss=0.45\n")
    curves = read_curves(log).plottable()

    assert curves["loss"][:2] == ("epoch", [0.5, 1.0, 1.5])
    assert any(t != int(t) for t in x_ticks(curves)[0])


def test_a_curve_named_like_broken_tex_is_drawn_as_written(tmp_path):
    # Labels are made under text.parse_math=False and keep it when the figure is saved afterwards.
    path = tmp_path / "curves.png"
    plot_curves({"$\\frac{$ loss": ("epoch", [1.0, 2.0, 3.0], [0.5, 0.4, 0.3])}, "run 1: $x", path)
    assert path.stat().st_size > 0


# the search tree


def search_tree() -> list[RunRecord]:
    """Three drafts; draft 2 failed and was debugged; the best line improved further, one improve timing out."""
    return [
        make_run(1, metrics={"acc": 0.9}, parent=None),
        make_run(2, status="failed", error="KeyError: 'label'", parent=None),
        make_run(3, metrics={"acc": 0.88}, parent=None),
        make_run(4, metrics={"acc": 0.93}, operator="debug", parent=2),
        make_run(5, metrics={"acc": 0.95}, parent=4),
        make_run(6, status="timeout", parent=5),
        make_run(7, metrics={"acc": 0.981}, parent=5),
        make_run(8, metrics={"acc": 0.9712345678}, parent=7),
    ]


def described_runs(path: Path) -> list[str]:
    """The lines of the PNG's Description text chunk: one per run."""
    with Image.open(path) as image:
        image.load()
        return image.text["Description"].splitlines()


def colour_pixels(path: Path, colour: str) -> int:
    """How many pixels of the PNG are exactly `colour` (a matplotlib colour name)."""
    rgb = tuple(round(c * 255) for c in to_rgb(colour))
    with Image.open(path) as image:
        counts = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return sum(count for count, pixel in counts if pixel == rgb)


def test_tree_layout_puts_each_run_below_its_parent_and_drafts_side_by_side():
    places = tree_layout(search_tree())

    assert {number: depth for number, (_, depth) in places.items()} == {1: 0, 2: 0, 3: 0, 4: 1, 5: 2, 6: 3, 7: 3, 8: 4}
    x = {number: x for number, (x, _) in places.items()}
    assert x[1] < x[6] < x[8] < x[3]  # leaves in depth-first order, draft by draft
    assert x[7] == x[8] and x[5] == (x[6] + x[7]) / 2 and x[2] == x[4] == x[5]  # a parent over the middle of its children
    assert x[6] - x[1] == 1.5 and x[3] - x[8] == 1.5  # half a step between drafts' trees


def test_tree_layout_takes_a_run_whose_parent_is_not_an_earlier_run_as_a_root():
    places = tree_layout([make_run(1, parent=None), make_run(2, parent=9), make_run(3, parent=2)])
    assert [places[n][1] for n in (1, 2, 3)] == [0, 0, 1]


def test_node_labels_are_the_run_number_over_its_value_or_status():
    runs = search_tree()
    assert node_label(runs[6], "acc") == "7\nacc=0.981"
    assert node_label(runs[7], "acc") == "8\nacc=0.9712"  # a long value shortened; the PNG's text holds it whole
    assert node_label(runs[1], "acc") == "2\nfailed" and node_label(runs[5], "acc") == "6\ntimeout"
    assert node_label(make_run(7, metrics={"validation_accuracy": 0.981}), "validation_accuracy") == "7\n0.981"  # a long name is left to the title
    assert node_label(make_run(9, metrics={"loss": 1.0}), "acc") == "9\nacc=—"
    assert node_label(runs[6], "acc", with_value=False) == "7"


def test_the_tree_is_a_png_naming_every_run_in_the_colours_of_their_statuses(tmp_path: Path):
    path = tmp_path / "report" / "tree.png"
    plot_tree(search_tree(), "acc", True, path, best=7)

    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and 500 <= image.width <= 3000 and 300 <= image.height <= 3000
    assert described_runs(path) == [
        "1: draft, ok, acc=0.9",
        "2: draft, failed",
        "3: draft, ok, acc=0.88",
        "4: debug ← 2, ok, acc=0.93",
        "5: improve ← 4, ok, acc=0.95",
        "6: improve ← 5, timeout",
        "7: improve ← 5, ok, acc=0.981, best",
        "8: improve ← 7, ok, acc=0.9712345678",
    ]
    for colour in (STATUS_COLOURS["ok"], STATUS_COLOURS["failed"], STATUS_COLOURS["timeout"], PATH_COLOUR):
        assert colour_pixels(path, colour) > 150, colour  # a node's fill besides the legend's marker (under 100 pixels)
    assert [p.name for p in path.parent.iterdir()] == ["tree.png"]  # no temporary file left


def test_colours_appear_only_for_what_the_tree_holds(tmp_path: Path):
    # The pixel checks above mean something: without a failed run or a best run, their colours are nowhere.
    path = tmp_path / "tree.png"
    plot_tree([make_run(1, metrics={"acc": 0.5}, parent=None), make_run(2, metrics={"acc": 0.6})], "acc", True, path)

    assert colour_pixels(path, STATUS_COLOURS["ok"]) > 50
    assert colour_pixels(path, STATUS_COLOURS["failed"]) == 0 and colour_pixels(path, PATH_COLOUR) == 0
    assert described_runs(path) == ["1: draft, ok, acc=0.5", "2: improve ← 1, ok, acc=0.6"]


def test_a_tree_without_a_metric_and_a_metric_named_like_broken_tex(tmp_path: Path):
    runs = [make_run(1, status="failed", error="OSError: x", parent=None), make_run(2, status="failed", operator="debug")]
    plot_tree(runs, None, True, tmp_path / "none.png")
    assert described_runs(tmp_path / "none.png") == ["1: draft, failed", "2: debug ← 1, failed"]

    plot_tree(search_tree(), "$x_1", False, tmp_path / "tex.png", best=3)
    assert described_runs(tmp_path / "tex.png")[0] == "1: draft, ok"  # no run reports $x_1
    assert colour_pixels(tmp_path / "tex.png", PATH_COLOUR) > 0


def random_tree(count: int) -> list[RunRecord]:
    """A bushy search of `count` runs: three drafts, then runs on one of the 20 latest (or any earlier) run, some failing."""
    import random

    pick = random.Random(7)
    runs = [make_run(n, metrics={"val_accuracy": pick.random()}, parent=None) for n in (1, 2, 3)]
    for number in range(4, count + 1):
        parent = pick.choice(runs[-20:] if pick.random() < 0.8 else runs)
        status = pick.choice(["ok", "ok", "ok", "failed", "timeout"])
        operator = "improve" if parent["status"] == "ok" else "debug"
        metrics = {"val_accuracy": pick.random()} if status == "ok" else None
        runs.append(make_run(number, status=status, metrics=metrics, operator=operator, parent=parent["number"]))
    return runs


@pytest.mark.parametrize("shape", ["bushy", "linear"])
def test_a_tree_of_400_runs_draws_within_seconds_at_a_bounded_size(tmp_path: Path, shape: str):
    runs = random_tree(400) if shape == "bushy" else [make_run(n, metrics={"val_accuracy": n / 1000}) for n in range(1, 401)]
    path = tmp_path / "tree.png"

    started = time.monotonic()
    plot_tree(runs, "val_accuracy", True, path, best=400)
    assert time.monotonic() - started < 15  # about a second here

    with Image.open(path) as image:
        assert image.width <= 3000 and image.height <= 3000
    lines = described_runs(path)
    assert [int(line.split(":")[0]) for line in lines] == list(range(1, 401))
    assert lines[-1].endswith(", best")


# runs in flight: out of order, and cancelled


def cancelled_run(number: int, parent: int | None, metrics: dict[str, float] | None = None) -> RunRecord:
    """A run stopped in flight when another run ended the experiment, as execute.stop_runs records it."""
    run = make_run(number, status="cancelled", metrics=metrics, error="cancelled: the experiment stopped (goal_met) while it ran", parent=parent)
    return RunRecord(**{**run, "exit_code": None})


def parallel_runs() -> list[RunRecord]:
    """Four runs in flight at once, in the order they ended: run 4 (on 3) before run 2, run 3 before 2; run 6 was
    cancelled when run 5 met the goal."""
    return [
        make_run(1, metrics={"acc": 0.9}, parent=None),
        make_run(3, metrics={"acc": 0.93}, parent=1),
        make_run(4, metrics={"acc": 0.95}, parent=3),
        make_run(2, metrics={"acc": 0.85}, parent=None),
        make_run(5, metrics={"acc": 0.99}, parent=4),
        cancelled_run(6, parent=2, metrics={"acc": 0.995}),
    ]


def test_tree_layout_places_runs_by_their_parent_not_by_when_they_ended():
    in_order = sorted(parallel_runs(), key=lambda run: run["number"])
    for ended in (parallel_runs(), list(reversed(in_order))):  # a child ahead of its parent in the list
        places = tree_layout(ended)
        assert places == tree_layout(in_order)
        assert {number: depth for number, (_, depth) in places.items()} == {1: 0, 2: 0, 3: 1, 4: 2, 5: 3, 6: 1}
        x = {number: x for number, (x, _) in places.items()}
        assert x[1] == x[3] == x[4] == x[5] < x[2] == x[6]  # draft 1's line, then draft 2 with its cancelled child


def test_tree_layout_with_a_gap_where_a_run_is_still_in_flight():
    # Run 2 trains on; runs 3 and 4 have ended: the tree holds them without it.
    places = tree_layout([make_run(1, parent=None), make_run(3, parent=1), make_run(4, parent=3)])
    assert {number: depth for number, (_, depth) in places.items()} == {1: 0, 3: 1, 4: 2}


def test_a_cancelled_run_in_the_tree_is_pale_dashed_named_so_and_never_the_best(tmp_path: Path):
    path = tmp_path / "tree.png"
    plot_tree(parallel_runs(), "acc", True, path, best=6)  # a caller that passes the cancelled run as best

    assert described_runs(path) == [
        "1: draft, ok, acc=0.9",
        "2: draft, ok, acc=0.85",
        "3: improve ← 1, ok, acc=0.93",
        "4: improve ← 3, ok, acc=0.95",
        "5: improve ← 4, ok, acc=0.99",
        "6: improve ← 2, cancelled while in flight, acc=0.995 when stopped",
    ]
    assert node_label(parallel_runs()[-1], "acc") == "6\ncancelled"
    assert colour_pixels(path, PATH_COLOUR) == 0, "no best run's line drawn to a cancelled run"
    without = tmp_path / "without.png"
    plot_tree(parallel_runs()[:-1], "acc", True, without)
    assert colour_pixels(path, CANCELLED_FILL) > colour_pixels(without, CANCELLED_FILL) + 150  # the node's pale fill

    figure = draw_tree(parallel_runs(), "acc", True, best=5)
    nodes = {collection.get_label(): collection for collection in figure.axes[0].collections if collection.get_label() in ("ok", "cancelled")}
    [(_, dashes)] = nodes["cancelled"].get_linestyle()
    assert dashes, "a dashed outline"
    assert all(dashes is None for _, dashes in nodes["ok"].get_linestyle())
    assert [tuple(colour[:3]) for colour in nodes["cancelled"].get_edgecolor()] == [to_rgb(CANCELLED_EDGE)]
    assert [tuple(colour[:3]) for colour in nodes["cancelled"].get_facecolor()] == [to_rgb(STATUS_COLOURS["cancelled"])]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[:2] == ["ok", "cancelled"] and legend[2].startswith("best run's line: run 5 ← 4 ← 3 ← 1")
    assert "6 runs from 2 drafts" in figure.get_suptitle() and "· 1 cancelled" in figure.get_suptitle()


def test_the_metric_plot_draws_cancelled_runs_apart_and_never_as_the_best(tmp_path: Path):
    values = {1: 0.9, 2: 0.85, 3: 0.93, 4: 0.995, 5: 0.97, 6: None}  # 4 and 6 cancelled; 4 had got past every run that ended
    figure = draw_metric_per_run(values, "acc", True, target="0.99", best=4, cancelled={4, 6})

    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert list(lines["best so far"].get_ydata()) == [0.9, 0.9, 0.93, 0.97]  # run 4's value left out
    assert list(lines["acc"].get_xdata()) == [1, 2, 3, 5]
    assert list(lines["cancelled: its value when stopped"].get_xdata()) == [4]
    assert list(lines["cancelled before it reported a value"].get_xdata()) == [6, 6]
    assert not any(label.startswith("best:") for label in lines), "no star on a cancelled run"
    assert "best: run 5" in {line.get_label() for line in draw_metric_per_run(values, "acc", True, best=5, cancelled={4, 6}).axes[0].get_lines()}

    path = tmp_path / "goal.png"
    plot_metric_per_run(values, "acc", True, path, best=5, cancelled={4, 6})
    assert described_runs(path) == [
        "1: acc=0.9",
        "2: acc=0.85",
        "3: acc=0.93",
        "4: cancelled, acc=0.995 when stopped",
        "5: acc=0.97, best",
        "6: cancelled, no acc",
    ]
