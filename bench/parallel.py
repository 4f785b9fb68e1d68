"""Parallel runs: how busy K workers keep their devices, on runs that only sleep, against the zero-latency LLM server (issue 14).

The experiment: 24 runs whose train.py sleeps a duration spread evenly over 1-4 s, in a seeded shuffle; run n sleeps the
n-th, the scripted LLM writing each run's code by its number. It runs in-process through run_experiment with K workers
and K fake GPUs (GPUS=0,...,K-1), so that each run holds a device of its own from its start to its end.

Device-busy fraction: the sum of the runs' durations (result.json's duration_s) / (wall time × K), for two wall times:
- runs: from the first run's start (its run_started event) to the last run's end (its run_done event). The bounds hold on
  this one: K=4 at least 0.85, K=1 at least 0.9, and runs per minute at K=4 at least 3.2 times K=1's.
- experiment: from calling run_experiment to its return. It adds what an experiment pays once whatever K is (opening
  the folder, the plan, the report), so it weighs more the shorter the experiment; reported beside it.
Beside them: the ideal, the busy fraction of the same durations with no runner cost (each run starting the moment a
worker frees, in run order), which is what the shuffle's tail leaves idle; and the idle time between runs, on one
device from a run's end to the next run's start: the runner's own cost per run.

Overlap: the same at K=4 with each LLM call answered after LLM_LATENCY_S, reported only (full size only). The graph makes its calls one
at a time, two a run (codegen, analyze), so it gives out at most one run per two calls' time: the devices are busy at
most (mean run) / (2 × latency × K) of the time, the estimate shown beside it with what one run at a time, training
and calls in turn, would reach.

--quick runs the bounded experiments only, the same 24 runs of 1-4 s. (At half the time scale the runner's time between
runs, about 0.1 s on a slow VM, weighed twice as much and came within 2% of the bound at K=1.)
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from figures import Figure, at_least, median, p95
from workload import FakeLLMServer, RealisticBrain, llm_settings, new_experiment

RUNS = 24
SHORTEST_S, LONGEST_S = 1.0, 4.0
"""The range the runs' sleeps are spread over, at full scale."""
SEED = 14
"""The shuffle's seed: the same order of durations on every machine and every try."""
WORKERS = 4
LLM_LATENCY_S = 1.0
"""Seconds each LLM call takes in the overlap experiment."""
BUSY_BOUNDS = {1: 0.9, WORKERS: 0.85}
"""The least device-busy fraction (over the runs' wall time) for each number of workers."""
SPEEDUP_BOUND = 3.2
"""The least ratio of runs per minute, K=4 over K=1."""
BENCH = "parallel runs"

SLEEP_TRAIN = """\
import json, os, time
print("run {run}: sleeping {seconds:.3f} s on GPU", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
time.sleep({seconds:.3f})
json.dump({{"accuracy": 0.5, "slept_s": {seconds:.3f}}}, open("metrics.json", "w"))
print("accuracy=0.5")
"""


def sleep_durations(scale: float = 1.0, runs: int = RUNS, seed: int = SEED) -> list[float]:
    """Seconds each run sleeps, in run order: spread evenly over SHORTEST_S-LONGEST_S (times `scale`), shuffled by `seed`."""
    step = (LONGEST_S - SHORTEST_S) / (runs - 1)
    durations = [round(scale * (SHORTEST_S + step * index), 3) for index in range(runs)]
    random.Random(seed).shuffle(durations)
    return durations


@dataclass
class Timeline:
    """One parallel experiment as it went: when each run held its device, and for how long its train.py ran."""

    workers: int
    experiment_s: float
    """From calling run_experiment to its return."""
    durations: dict[int, float] = field(default_factory=dict)
    """Each run's duration_s, from its result.json."""
    starts: dict[int, float] = field(default_factory=dict)
    """perf_counter() at each run's run_started event."""
    ends: dict[int, float] = field(default_factory=dict)
    """perf_counter() at each run's run_done event (its result.json is written)."""
    devices: dict[int, str] = field(default_factory=dict)
    """The fake GPU each run held."""

    @property
    def runs_s(self) -> float:
        """From the first run's start to the last run's end."""
        return max(self.ends.values()) - min(self.starts.values())

    def busy(self, wall_s: float) -> float:
        """The device-busy fraction over `wall_s`: the runs' durations over what K devices could have given."""
        return sum(self.durations.values()) / (wall_s * self.workers)

    def runs_per_minute(self) -> float:
        return len(self.durations) * 60 / self.runs_s


def run_parallel(
    folder: Path, durations: list[float], workers: int, latency_s: float = 0.0, sandbox: str = "none", ahead: int = 0, executor: str = "local"
) -> Timeline:
    """Run the sleeping experiment in `folder` with `workers` workers (and `ahead` runs written ahead), each LLM call
    answered after `latency_s`, here or as Ray tasks (`executor`); its Timeline."""
    from runner import run_experiment  # the project is importable once workload has put it on sys.path

    brain = RealisticBrain([SLEEP_TRAIN.format(run=run, seconds=seconds) for run, seconds in enumerate(durations, 1)])
    new_experiment(folder)
    arrivals: list[tuple[float, dict]] = []

    def on_event(event: dict) -> None:
        if event.get("event") in ("run_started", "run_done"):
            arrivals.append((time.perf_counter(), event))

    with FakeLLMServer(lambda body: {**brain(body), "delay": latency_s}) as server:
        devices = ",".join(str(device) for device in range(workers))
        started = time.perf_counter()
        final = run_experiment(
            folder, max_runs=len(durations), on_event=on_event, workers=workers, ahead=ahead, gpus=devices, executor=executor, **llm_settings(server, sandbox)
        )
        timeline = Timeline(workers, time.perf_counter() - started)
    runs = final.get("runs", [])
    if final.get("stop_reason") != "max_runs" or len(runs) != len(durations) or any(run["status"] != "ok" for run in runs):
        not_ok = "; ".join(f"run {run['number']} {run['status']}: {run['error']}" for run in runs if run["status"] != "ok")
        raise RuntimeError(f"the experiment in {folder} stopped with {final.get('stop_reason')} after {len(runs)} runs; {not_ok or 'every run ok'}")
    timeline.durations = {run["number"]: run["duration_s"] for run in runs}
    for at, event in arrivals:
        if event["event"] == "run_started":
            timeline.starts[event["run"]], timeline.devices[event["run"]] = at, ",".join(event["gpus"])
        else:
            timeline.ends[event["run"]] = at
    return timeline


def ideal_seconds(durations: list[float], workers: int) -> float:
    """How long `durations` take on `workers` workers at no cost between runs: each run, in order, on the first worker free."""
    free_at = [0.0] * workers
    for seconds in durations:
        earliest = free_at.index(min(free_at))
        free_at[earliest] += seconds
    return max(free_at)


def idle_between_runs(timeline: Timeline) -> list[float]:
    """Seconds each device stood idle from a run's end to the next run's start on it."""
    by_device: dict[str, list[int]] = {}
    for run in sorted(timeline.starts, key=timeline.starts.get):
        by_device.setdefault(timeline.devices[run], []).append(run)
    return [timeline.starts[later] - timeline.ends[earlier] for runs in by_device.values() for earlier, later in zip(runs, runs[1:], strict=False)]


def figures(one: Timeline, many: Timeline) -> tuple[list[Figure], dict]:
    """The gated figures: each experiment's busy fractions and the speed-up of `many` workers over `one`; and the details."""
    found: list[Figure] = []
    for timeline in (one, many):
        found += timeline_figures(timeline, bound=BUSY_BOUNDS.get(timeline.workers))
    speedup = many.runs_per_minute() / one.runs_per_minute()
    whole_speedup = one.experiment_s / many.experiment_s  # the same runs: the ratio of runs per minute is that of the times
    found.append(
        Figure(
            BENCH,
            f"runs per minute, K={many.workers} / K={one.workers}",
            round(speedup, 2),
            "x",
            shown=f"{speedup:.2f}x ({many.runs_per_minute():.1f} / {one.runs_per_minute():.1f}; over the experiment {whole_speedup:.2f}x)",
            bound=f">= {SPEEDUP_BOUND:g}",
            passed=at_least(speedup, SPEEDUP_BOUND),
        )
    )
    return found, {f"k{timeline.workers}": timeline_details(timeline) for timeline in (one, many)}


def overlap_figures(timeline: Timeline, latency_s: float) -> tuple[list[Figure], dict]:
    """The busy fraction with slow LLM calls, beside the most that two calls a run, one at a time, allow; reported, never gated."""
    found = timeline_figures(timeline, bound=None, label=f", LLM {latency_s:g} s a call")
    mean_s = sum(timeline.durations.values()) / len(timeline.durations)
    ceiling = min(1.0, mean_s / (2 * latency_s * timeline.workers))
    in_turn = mean_s / ((mean_s + 2 * latency_s) * timeline.workers)
    name = f"K={timeline.workers}, LLM {latency_s:g} s a call: the most two calls a run, one at a time, allow (estimate)"
    found.append(Figure(BENCH, name, round(ceiling, 3), "x", shown=f"{ceiling:.3f} (training and calls in turn: {in_turn:.3f})"))
    return found, {**timeline_details(timeline), "llm_latency_s": latency_s}


AHEAD_WORKERS = 2
AHEAD_LATENCY_S = 0.3
"""Written ahead: 2 workers and LLM calls of 0.3 s, where the LLM keeps up on average (two calls a run, 0.6 s, against a run
ending every 1.25 s) but a freed worker would wait for them; reported, never gated."""


def ahead_figures(without: Timeline, with_ahead: Timeline) -> tuple[list[Figure], dict]:
    """The busy fraction with slow-ish LLM calls, without and with one run written ahead; reported, never gated."""
    found = timeline_figures(without, bound=None, label=f", LLM {AHEAD_LATENCY_S:g} s a call")
    found += timeline_figures(with_ahead, bound=None, label=f", LLM {AHEAD_LATENCY_S:g} s a call, 1 written ahead")
    return found, {"without": timeline_details(without), "ahead_1": timeline_details(with_ahead), "llm_latency_s": AHEAD_LATENCY_S}


RAY_WORKERS = 2
"""Workers of the Ray comparison: a local Ray instance on this machine's CPUs (2 on CI's), one CPU a run."""


def ray_figures(local: Timeline, on_ray: Timeline) -> tuple[list[Figure], dict]:
    """The same runs here and as Ray tasks of a local Ray instance: busy fractions and the idle time between runs, which
    with Ray adds the task's placement, its worker, the run folder sent and the output streamed back; reported, never gated."""
    found = timeline_figures(local, bound=None, label=", here") + timeline_figures(on_ray, bound=None, label=", Ray tasks")
    return found, {"local": timeline_details(local), "ray": timeline_details(on_ray)}


def timeline_figures(timeline: Timeline, bound: float | None, label: str = "") -> list[Figure]:
    """Busy over the runs' wall time (bounded when `bound` is given), over the experiment's, the ideal, and the idle between runs."""
    k = f"K={timeline.workers}{label}"
    busy, whole = timeline.busy(timeline.runs_s), timeline.busy(timeline.experiment_s)
    ideal = timeline.busy(ideal_seconds([timeline.durations[run] for run in sorted(timeline.durations)], timeline.workers))
    gaps_ms = [gap * 1000 for gap in idle_between_runs(timeline)]
    return [
        Figure(
            BENCH,
            f"{k}: device-busy fraction, first run's start to last run's end",
            round(busy, 3),
            "x",
            shown=f"{busy:.3f} ({timeline.runs_s:.1f} s for {sum(timeline.durations.values()):.1f} s of runs; ideal {ideal:.3f})",
            bound="" if bound is None else f">= {bound:g}",
            passed=None if bound is None else at_least(busy, bound),
        ),
        Figure(BENCH, f"{k}: device-busy fraction, whole experiment", round(whole, 3), "x", shown=f"{whole:.3f} ({timeline.experiment_s:.1f} s)"),
        Figure(BENCH, f"{k}: idle between runs on a device, median (p95)", _round(median(gaps_ms)), "ms", shown=_ms(gaps_ms)),
    ]


def timeline_details(timeline: Timeline) -> dict:
    """What results.json keeps of an experiment: the times, and each run's start and end from the first start, in seconds."""
    first = min(timeline.starts.values())
    return {
        "workers": timeline.workers,
        "experiment_s": round(timeline.experiment_s, 3),
        "runs_s": round(timeline.runs_s, 3),
        "idle_between_runs_ms": [round(gap * 1000, 1) for gap in idle_between_runs(timeline)],
        "runs": {
            str(run): {
                "duration_s": timeline.durations[run],
                "start_s": round(timeline.starts[run] - first, 3),
                "end_s": round(timeline.ends[run] - first, 3),
                "gpu": timeline.devices[run],
            }
            for run in sorted(timeline.durations)
        },
    }


def _ms(values: list[float]) -> str:
    return f"{median(values):.1f} ms (p95 {p95(values):.1f} ms)" if values else "n/a"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
