"""Tests for adapters/plots.py: what best_run_curves.png is drawn from (x values and their label) and its axis ticks."""

from __future__ import annotations

from pathlib import Path

from adapters.plots import LINE_X, draw_curves, plot_curves, read_curves

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
