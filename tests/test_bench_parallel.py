"""bench/parallel.py: the sleeping runs it schedules, its arithmetic of busy devices, and one tiny experiment through it."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # the benchmark modules, after the project and its tests

import parallel  # noqa: E402
import run  # noqa: E402
from parallel import Timeline  # noqa: E402


def test_the_sleeps_are_spread_evenly_over_the_range_in_the_same_shuffle_every_time():
    durations = parallel.sleep_durations()

    assert durations == parallel.sleep_durations()
    assert sorted(durations) == [round(1 + 3 * index / 23, 3) for index in range(24)]
    assert durations != sorted(durations)
    halves = parallel.sleep_durations(0.5)  # scaled: the same order, half as long
    assert all(abs(half - seconds / 2) <= 0.001 for half, seconds in zip(halves, durations, strict=True))


def test_the_ideal_schedule_starts_each_run_in_order_on_the_first_worker_free():
    assert parallel.ideal_seconds([3, 1, 1, 1], 2) == 3  # runs 2-4 one after another beside run 1
    assert parallel.ideal_seconds([1, 1, 1, 3], 2) == 4  # the long run last: one worker idles for 2 s
    assert parallel.ideal_seconds([2, 2, 2], 1) == 6


def two_workers() -> Timeline:
    """Runs 1 and 2 start together on GPUs 0 and 1; run 3 starts on GPU 0 0.1 s after run 1 ends, and ends last."""
    return Timeline(
        workers=2,
        experiment_s=5.0,
        durations={1: 1.0, 2: 2.9, 3: 1.9},
        starts={1: 10.0, 2: 10.0, 3: 11.1},
        ends={1: 11.0, 2: 13.0, 3: 13.0},
        devices={1: "0", 2: "1", 3: "0"},
    )


def test_busy_is_the_runs_durations_over_the_wall_time_of_every_device():
    timeline = two_workers()

    assert timeline.runs_s == 3.0
    assert abs(timeline.busy(timeline.runs_s) - 5.8 / 6) < 1e-9
    assert abs(timeline.busy(timeline.experiment_s) - 5.8 / 10) < 1e-9
    assert abs(timeline.runs_per_minute() - 60) < 1e-9
    assert [round(gap, 3) for gap in parallel.idle_between_runs(timeline)] == [0.1]  # GPU 0 between runs 1 and 3; GPU 1 ran once


def test_the_bounds_hold_on_the_runs_wall_time_and_the_speedup():
    one = Timeline(1, 13.0, {1: 1.0, 2: 2.0, 3: 3.0}, {1: 0.0, 2: 1.5, 3: 4.0}, {1: 1.0, 2: 3.5, 3: 7.0}, {1: "0", 2: "0", 3: "0"})
    many = two_workers()

    found, details = parallel.figures(one, many)
    by_name = {figure.name: figure for figure in found}

    k1 = by_name["K=1: device-busy fraction, first run's start to last run's end"]
    assert k1.value == round(6 / 7, 3) and k1.passed is False  # 6 s of runs in 7 s: below 0.9
    assert by_name["K=2: device-busy fraction, first run's start to last run's end"].passed is None  # only K=1 and K=4 are bounded
    speedup = by_name["runs per minute, K=2 / K=1"]
    assert speedup.value == round(7 / 3, 2) and speedup.passed is False
    assert "over the experiment 2.60x" in speedup.shown  # 13 s over 5 s
    assert details["k1"]["runs"]["2"] == {"duration_s": 2.0, "start_s": 1.5, "end_s": 3.5, "gpu": "0"}
    assert details["k1"]["idle_between_runs_ms"] == [500.0, 500.0]


def test_the_slow_llm_figure_is_reported_beside_its_ceiling_and_never_gated():
    found, details = parallel.overlap_figures(two_workers(), latency_s=1.0)

    assert all(figure.passed is None for figure in found)
    assert found[-1].value == round((5.8 / 3) / (2 * 1.0 * 2), 3)  # mean run 1.93 s, one run every two 1 s calls, on 2 workers
    assert found[-1].shown.endswith(f"(training and calls in turn: {(5.8 / 3) / ((5.8 / 3 + 2) * 2):.3f})")
    assert details["llm_latency_s"] == 1.0


def test_parallel_runs_only_when_named():
    assert "parallel" not in run.parse_args([]).only
    assert run.parse_args(["--only", "parallel", "--quick"]).only == ["parallel"]


def test_a_small_experiment_runs_on_every_worker_and_records_every_run(tmp_path: Path):
    durations = parallel.sleep_durations(0.05, runs=8)  # 0.05-0.2 s: the runs end out of order

    timeline = parallel.run_parallel(tmp_path / "experiment", durations, workers=4)

    assert sorted(timeline.durations) == sorted(timeline.starts) == sorted(timeline.ends) == list(range(1, 9))
    assert all(timeline.durations[run] >= seconds for run, seconds in enumerate(durations, 1))
    assert set(timeline.devices.values()) <= {"0", "1", "2", "3"} and len(set(timeline.devices.values())) > 1
    assert all(gap >= 0 for gap in parallel.idle_between_runs(timeline))  # no GPU held by two runs at once
    assert any(timeline.starts[later] < timeline.ends[earlier] for earlier in timeline.starts for later in timeline.starts if later > earlier)
    assert 0 < timeline.busy(timeline.runs_s) <= 1 and timeline.runs_s < timeline.experiment_s
