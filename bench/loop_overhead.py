"""Loop overhead: the runner's own time per run (the loop's wall time less the child's runtime), early against late runs.

A run's loop is timed from its `summarize` stage event to the next run's (or to the report's): summarize,
codegen and its LLM call, review, execute, analyze and its LLM call, and every checkpoint between them.
Less the child's own runtime (run_done's duration_s), that is what the runner costs a run. The floor for
scale: starting `python -c pass`, as often as there are runs, in the same process.

Wall time on a shared machine picks up other processes' load, so the runner's CPU time per loop (this
process's, the in-process fake server's threads included, the child's not) is reported beside it.
"""

from __future__ import annotations

import sys

from figures import Figure, growth_ratio, median, p95
from workload import command_seconds

WINDOW = 10
"""Runs compared at each end of the experiment."""
GROWTH_BOUND = 1.2
"""The late runs' median overhead may be at most this many times the early runs'."""

Event = tuple[float, float, dict]
"""A progress event with the perf_counter() and process_time() of its arrival."""


def per_run_overhead(events: list[Event]) -> dict[int, dict[str, float]]:
    """For each run: its loop's wall time, the child's runtime, the difference (the runner's own time) and the runner's CPU time, in seconds."""
    starts: dict[int, tuple[float, float]] = {}
    ends: dict[int, tuple[float, float]] = {}
    child: dict[int, float] = {}
    current = None
    for wall, cpu, event in events:
        kind, stage = event.get("event"), event.get("stage")
        if kind == "stage" and stage in ("summarize", "report") and current is not None:
            ends.setdefault(current, (wall, cpu))
            current = None
        if kind == "stage" and stage == "summarize":
            current = event["run"]
            starts[current] = (wall, cpu)
        elif kind == "run_done":
            child[event["run"]] = event["duration_s"]
    loops = {}
    for run in sorted(set(starts) & set(ends) & set(child)):
        wall = ends[run][0] - starts[run][0]
        loops[run] = {"wall_s": wall, "child_s": child[run], "runner_s": wall - child[run], "runner_cpu_s": ends[run][1] - starts[run][1]}
    return loops


def per_stage(events: list[Event]) -> dict[int, dict[str, float]]:
    """For each run: seconds from each stage event to the next one (execute less the child's runtime): the stage and the checkpoint after it."""
    stages: dict[int, dict[str, float]] = {}
    child = {event["run"]: event["duration_s"] for _, _, event in events if event.get("event") == "run_done"}
    marks = [(wall, event) for wall, _, event in events if event.get("event") == "stage"]
    for (at, event), (next_at, _) in zip(marks, marks[1:], strict=False):
        run = event.get("run")
        if run is None or event["stage"] == "report":
            continue
        stages.setdefault(run, {})[event["stage"]] = next_at - at - (child.get(run, 0.0) if event["stage"] == "execute" else 0.0)
    return stages


def python_start_floor(times: int) -> list[float]:
    """Seconds to start and finish `python -c pass`, measured `times` times."""
    return command_seconds([sys.executable, "-c", "pass"], times)


def figures(events: list[Event], runs: int, floor_s: list[float]) -> tuple[list[Figure], dict]:
    """Median and p95 of the runner's time per run, first and last WINDOW runs, beside the floor; and the per-run details."""
    bench = "loop overhead"
    loops = per_run_overhead(events)
    window = min(WINDOW, runs)
    early_runs, late_runs = range(1, window + 1), range(runs - window + 1, runs + 1)
    early_name, late_name = f"runs {early_runs[0]}-{early_runs[-1]}", f"runs {late_runs[0]}-{late_runs[-1]}"

    def of(key: str, window_runs: range) -> list[float]:
        return [loops[run][key] * 1000 for run in window_runs if run in loops]

    early, late = of("runner_s", early_runs), of("runner_s", late_runs)
    cpu_early, cpu_late = median(of("runner_cpu_s", early_runs)), median(of("runner_cpu_s", late_runs))
    cpu_ratio = cpu_late / cpu_early if cpu_early and cpu_late else None
    floor = [s * 1000 for s in floor_s]
    result = [
        Figure(bench, f"runner time per run, {early_name}, median", _round(median(early)), "ms"),
        Figure(bench, f"runner time per run, {early_name}, p95", _round(p95(early)), "ms"),
        Figure(bench, f"runner time per run, {late_name}, median", _round(median(late)), "ms"),
        Figure(bench, f"runner time per run, {late_name}, p95", _round(p95(late)), "ms"),
        growth_ratio(bench, f"median, {late_name} / {early_name}", median(late), median(early), GROWTH_BOUND),
        Figure(
            bench,
            f"runner CPU per run, median, {early_name} -> {late_name}",
            _round(cpu_ratio, 2),
            "x",
            shown=f"{cpu_early:.1f} -> {cpu_late:.1f} ms ({cpu_ratio:.2f}x)" if cpu_ratio else "n/a",
        ),
        Figure(bench, "child's runtime per run (train.py), median", _round(median(of("child_s", range(1, runs + 1)))), "ms"),
        Figure(bench, f"floor: `python -c pass` x{len(floor)}, median", _round(median(floor)), "ms", shown=f"{median(floor):.1f} ms (p95 {p95(floor):.1f} ms)"),
    ]
    stages = per_stage(events)
    early_stages, late_stages = _stage_medians(stages, early_runs), _stage_medians(stages, late_runs)
    growth = {name: late_stages[name] - early_stages[name] for name in early_stages if name in late_stages}
    shown = ", ".join(f"{name} {ms:+.1f}" for name, ms in sorted(growth.items(), key=lambda item: -item[1]))
    result.append(Figure(bench, f"median by stage, {late_name} less {early_name} (ms)", None, "ms", shown=shown or "n/a"))
    details = {
        "per_run_ms": {str(run): {k: round(v * 1000, 2) for k, v in loop.items()} for run, loop in loops.items()},
        "per_stage_ms": {str(run): {k: round(v * 1000, 2) for k, v in by_stage.items()} for run, by_stage in stages.items()},
        "stage_median_ms": {early_name: early_stages, late_name: late_stages},
        "floor_ms": [round(f, 2) for f in floor],
    }
    return result, details


def _stage_medians(stages: dict[int, dict[str, float]], runs: range) -> dict[str, float]:
    """Each stage's median milliseconds over `runs`."""
    names = dict.fromkeys(name for run in runs for name in stages.get(run, {}))
    return {name: round(median([stages[r][name] * 1000 for r in runs if name in stages.get(r, {})]), 1) for name in names}


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
