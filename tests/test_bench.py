"""bench/run.py works: every benchmark runs at a tiny size and writes its figures; the bounds themselves are bench/run.py's to judge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # the benchmark modules, after the project and its tests

import loop_overhead  # noqa: E402
import prompt_size  # noqa: E402
import run  # noqa: E402
import state_size  # noqa: E402
from figures import growth_ratio  # noqa: E402

from nodes.prompts import BUDGET  # noqa: E402


def test_every_benchmark_runs_at_a_tiny_size_and_writes_its_figures(tmp_path: Path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--runs", "4", "--flood-mb", "4", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode in (0, 1), done.stderr  # 1: a bound is broken, which is for the benchmark to report, not this test
    results = json.loads(out.read_text())
    assert results["mode"] == "quick" and results["settings"]["runs"] == 4
    assert {"platform", "cpu_count", "python", "date"} <= results["machine"].keys()
    assert results["passed"] == (done.returncode == 0)
    figures = results["figures"]
    assert {f["benchmark"] for f in figures} == {"loop overhead", "prompt size", "state size", "output handling", "start-up"}
    bounded = [f for f in figures if f["bound"]]
    assert len(bounded) >= 8 and all(isinstance(f["passed"], bool) for f in bounded)
    assert all(f["value"] is not None for f in bounded), [f["name"] for f in bounded if f["value"] is None]
    failed = [f"{f['benchmark']}: {f['name']}" for f in figures if f["passed"] is False]
    assert ("FAILED: " + "; ".join(failed) if failed else "All bounds hold.") in done.stdout  # the table's verdict matches the file
    assert results["details"]["state"]["run_4"]["runs"] == 4
    assert (tmp_path / "work" / "growth" / "run_4" / "train.py").is_file()


def test_a_runs_own_time_is_its_loop_less_the_childs_runtime():
    def stage(name: str, run: int | None = None) -> dict:
        return {"event": "stage", "stage": name, "run": run}

    events = [
        (0.0, 0.0, stage("initialize")),
        (1.0, 0.5, stage("summarize", 1)),
        (1.1, 0.6, stage("codegen", 1)),
        (1.2, 0.7, stage("execute", 1)),
        (1.7, 0.8, {"event": "run_done", "run": 1, "duration_s": 0.4}),
        (1.8, 0.9, stage("analyze", 1)),
        (2.0, 1.0, stage("summarize", 2)),
        (3.0, 1.2, {"event": "run_done", "run": 2, "duration_s": 0.5}),
        (3.5, 1.5, stage("report")),
    ]

    loops = loop_overhead.per_run_overhead(events)

    assert loops.keys() == {1, 2}
    assert abs(loops[1]["runner_s"] - 0.6) < 1e-9 and abs(loops[1]["runner_cpu_s"] - 0.5) < 1e-9
    assert abs(loops[2]["wall_s"] - 1.5) < 1e-9 and abs(loops[2]["runner_s"] - 1.0) < 1e-9
    assert abs(loop_overhead.per_stage(events)[1]["execute"] - 0.2) < 1e-9  # 0.6 s from execute to analyze, less the child's 0.4 s


def test_the_codegen_budget_is_the_sum_of_its_parts_and_its_fixed_text():
    budget = prompt_size.stage_budgets()["codegen"]

    assert sum(BUDGET.values()) < budget < sum(BUDGET.values()) + 3_000


def state_at(runs: int, mib: float) -> dict:
    """What state_size.measure_checkpoints reports, at `runs` runs with a database of `mib` MiB."""
    return {"runs": runs, "file_bytes": round(mib * 2**20), "checkpoints": 52, "latest_checkpoint_bytes": 20_000, "channel_json_bytes": {"code": 4_000}}


def test_the_database_is_bounded_on_its_projection_to_a_thousand_runs():
    flat, growing = state_at(300, 1.5), state_at(300, 30)

    assert state_size.projected_file_bytes(state_at(10, 1), flat) == round(1.5 * 2**20 + 0.5 * 2**20 / 290 * 700)
    assert state_size.projected_file_bytes(state_at(10, 2), flat) == flat["file_bytes"]  # a file that shrank is not projected to shrink further
    [projected] = [f for f in state_size.figures(state_at(10, 1), growing) if f.bound == "< 64 MiB"]
    assert projected.name == "checkpoints.sqlite at run 1000, projected" and projected.passed is False  # 30 MiB + 0.1 MiB a run: 100 MiB
    assert projected.display() == "100.0 MiB (+102.4 KiB a run from run 10 to 300)"


def test_at_a_thousand_runs_the_database_is_bounded_as_measured():
    for mib, holds in ((63, True), (65, False)):
        found = state_size.figures(state_at(10, 1), state_at(1000, mib))
        [bounded] = [f for f in found if f.bound == "< 64 MiB"]
        assert bounded.name == "checkpoints.sqlite at run 1000" and bounded.passed is holds
        assert len({f.name for f in found}) == len(found)


def broken_once(values: list[float]):
    """Measurements of a ratio bounded to at most 1.2, one value per try, each try counted."""
    tries = []

    def measure() -> tuple[list, dict]:
        value = values[len(tries)]
        tries.append(value)
        return [growth_ratio("loop overhead", "late / early", value, 1.0, 1.2)], {"value": value}

    return measure, tries


def test_a_timing_that_holds_its_bound_is_measured_once():
    measure, tries = broken_once([1.05, 1.0])

    found, details = run.measured_twice(measure, measure, "loop overhead")

    assert tries == [1.05] and found[0].passed and details == {"value": 1.05}


def test_a_timing_that_breaks_its_bound_is_measured_again_and_the_second_try_counts_with_the_first_shown():
    measure, tries = broken_once([1.5, 1.1])

    found, details = run.measured_twice(measure, measure, "loop overhead")

    assert tries == [1.5, 1.1]
    assert found[0].passed and found[0].display() == "1.10x (first try 1.50x)"
    assert details["value"] == 1.1 and details["first_try"]["figures"][0]["value"] == 1.5


def test_a_bound_broken_on_both_tries_fails():
    measure, _ = broken_once([1.5, 1.4])

    found, _ = run.measured_twice(measure, measure, "loop overhead")

    assert found[0].passed is False and found[0].display() == "1.40x (first try 1.50x)"
