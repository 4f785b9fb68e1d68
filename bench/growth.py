"""The growing experiment behind the loop, prompt and state benchmarks: N runs in-process, paused once after run 10 to measure.

It runs through main's Python API (run_experiment) against the local server, as a notebook would: up to run
`split_at`, then resumed up to `runs`, every progress event timestamped on arrival.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import state_size
from workload import FakeLLMServer, llm_settings, new_experiment


@dataclass
class Growth:
    """What the growing experiment left to measure."""

    folder: Path
    split_at: int
    events: list[tuple[float, float, dict]] = field(default_factory=list)
    """Every progress event with the perf_counter() and process_time() of its arrival."""
    state: dict[int, dict] = field(default_factory=dict)
    """state_size.measure_checkpoints() after run `split_at` and after the last run."""
    seconds: float = 0.0


def run_growth(folder: Path, server: FakeLLMServer, runs: int, split_at: int = 10, sandbox: str = "none") -> Growth:
    """Run the experiment in `folder` to `split_at` runs (at most `runs`), measure its state, resume it to `runs`, measure again."""
    from runner import run_experiment  # the project is importable once workload has put it on sys.path

    new_experiment(folder)
    grown = Growth(folder=folder, split_at=split_at)
    settings = llm_settings(server, sandbox)

    def on_event(event: dict) -> None:
        grown.events.append((time.perf_counter(), time.process_time(), event))

    started = time.perf_counter()
    final = run_experiment(folder, max_runs=grown.split_at, on_event=on_event, **settings)
    _check(final, grown.split_at)
    grown.state[grown.split_at] = state_size.measure_checkpoints(folder)
    if runs > grown.split_at:
        final = run_experiment(folder, max_runs=runs, resume=True, on_event=on_event, **settings)
        _check(final, runs)
        grown.state[runs] = state_size.measure_checkpoints(folder)
    grown.seconds = time.perf_counter() - started
    return grown


def _check(final: dict, runs: int) -> None:
    done = final.get("run_count", 0)
    if final.get("stop_reason") != "max_runs" or done != runs:
        raise RuntimeError(f"the benchmark experiment stopped with {final.get('stop_reason')} ({final.get('stop_detail')}) after {done} of {runs} runs")
