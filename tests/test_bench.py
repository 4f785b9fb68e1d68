"""bench/run.py works: every benchmark runs at a tiny size and writes its figures; the bounds themselves are bench/run.py's to judge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # the benchmark modules, after the project and its tests

import loop_overhead  # noqa: E402
import prompt_cache  # noqa: E402
import prompt_size  # noqa: E402
import run  # noqa: E402
import state_size  # noqa: E402
from figures import growth_ratio  # noqa: E402

from nodes import prompts  # noqa: E402
from nodes.prompts import ANALYZE_STABLE, ANALYZE_VOLATILE, BUDGET, CODEGEN_STABLE, CODEGEN_VOLATILE  # noqa: E402


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
    assert {f["benchmark"] for f in figures} == {"loop overhead", "prompt size", "prompt cache", "state size", "output handling", "start-up"}
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


PLAN = "1. A baseline.\n2. A wider network.\n3. A learning-rate sweep."


def codegen_line(run: int, plan: str = PLAN) -> dict:
    """An audit log line of a codegen request for `run`, its prompt in two content blocks as for an Anthropic model."""
    stable = CODEGEN_STABLE.format(idea="Classify digits.", plan=plan, machine="4 CPUs")
    tasks = f"#1 [in_progress] Baseline (run {run - 1})"
    volatile = CODEGEN_VOLATILE.format(grading="", tasks=tasks, findings="", previous_run="", feedback="", instruction=f"Write train.py for run {run}.")
    blocks = [{"type": "text", "text": stable, "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": volatile}]
    messages = [{"role": "system", "content": "You write train.py."}, {"role": "human", "content": blocks}]
    return {"stage": "codegen", "messages": messages, "reply": {"content": "ok"}}


def analyze_line(run: int, plan: str = PLAN) -> dict:
    """An audit log line of an analyze request for `run`, its prompt one string as for an OpenAI model."""
    prompt = ANALYZE_STABLE.format(idea="Classify digits.", plan=plan, goal="accuracy >= 0.9") + ANALYZE_VOLATILE.format(
        origin=f"Run {run} came about as: improve", tasks="", code="print(1)", run=f"Run {run}: ok, accuracy=0.8"
    )
    return {"stage": "analyze", "messages": [{"role": "system", "content": "You analyse one run."}, {"role": "human", "content": prompt}], "reply": {}}


def test_consecutive_requests_of_a_stage_share_the_system_message_idea_and_plan():
    for line in (codegen_line, analyze_line):
        previous, request = prompt_cache.as_request(line(1)), prompt_cache.as_request(line(2))

        shared = prompt_cache.shared_prefix(request, previous)

        assert request.run == 2 and request.stable.endswith(("</machine>\n", "</goal>\n"))  # the marked block, or where the volatile part begins
        assert shared.prefix_chars > len(request.stable) and shared.chars == len(request.text)
        assert shared.brief_end_chars == request.text.index("</plan>\n") + len("</plan>\n")
        assert shared.holds and shared.share == shared.prefix_chars / shared.chars


def test_a_prefix_that_stops_inside_the_plan_breaks_the_bound():
    for line in (codegen_line, analyze_line):
        previous = prompt_cache.as_request(line(1, plan=PLAN.replace("wider", "deeper")))

        shared = prompt_cache.shared_prefix(prompt_cache.as_request(line(2)), previous)

        assert shared.prefix_chars < shared.brief_end_chars and not shared.holds


def two_codegen_requests() -> list:
    """Runs 1 and 2: the same stable prefix of 8,000 chars (2,000 tokens), prompts that differ right after it (100
    tokens more), replies of 100 tokens."""
    stable = "s" * 8_000
    return [prompt_cache.Request("codegen", run, stable[:100], stable[100:] + c * 400, (8_000,), 400) for run, c in ((1, "a"), (2, "b"))]


def test_on_anthropic_the_marked_prefix_is_written_once_then_read():
    first, second = prompt_cache.costs(two_codegen_requests(), prompt_cache.SONNET)

    assert abs(first.uncached - (2_100 * 3 + 100 * 15) / 1e6) < 1e-12 and second.uncached == first.uncached
    assert abs(first.cached - (2_000 * 3.75 + 100 * 3 + 100 * 15) / 1e6) < 1e-12  # written at 1.25x input
    assert abs(second.cached - (2_000 * 0.30 + 100 * 3 + 100 * 15) / 1e6) < 1e-12  # read at 0.1x
    billed = prompt_cache.bill(two_codegen_requests(), prompt_cache.SONNET, 2)
    assert billed["through_run"] == {"without_caching_usd": 0.0156, "with_caching_usd": 0.0117, "saving_pct": 25.0}
    assert billed["run"]["with_caching_usd"] == 0.0024
    one, changed = two_codegen_requests()
    again = prompt_cache.costs([one, changed._replace(system="t" * 100)], prompt_cache.SONNET)[1]
    assert again.cached == first.cached  # a stable part that changed is written anew


def test_on_anthropic_a_repeated_parent_is_read_and_a_new_one_written_after_the_stable_part():
    """Stable part 8,000 chars (2,000 tokens), then a parent's code of 4,000 (1,000 tokens), then 400 that change."""
    stable, parents = "s" * 8_000, {"p": "p" * 4_000, "q": "q" * 4_000}
    found = [
        prompt_cache.Request("codegen", run, "", stable + parents[parent] + str(run) * 400, (8_000, 12_000), 400)
        for run, parent in ((1, "p"), (2, "p"), (3, "q"))
    ]
    assert [prompt_cache.cached_tokens(request, previous, prompt_cache.SONNET) for request, previous in zip(found, [None, *found[:2]], strict=True)] == [
        (0.0, 3_000.0),  # nothing cached yet: everything up to the last mark written
        (3_000.0, 0.0),  # the same parent: read through its end
        (2_000.0, 1_000.0),  # another parent: the stable part read, the new parent's code written
    ]


def test_as_request_finds_where_the_runner_marks_a_string_prompt():
    line = codegen_line(2)
    blocks = line["messages"][1]["content"]
    parent = prompts.PARENT_CODE.format(parent=1, code="print(1)")
    plain = {**line, "messages": [line["messages"][0], {"role": "human", "content": blocks[0]["text"] + parent + blocks[1]["text"]}]}
    request = prompt_cache.as_request(plain)
    system = len("You write train.py.")
    assert request.marks == (system + len(blocks[0]["text"]), system + len(blocks[0]["text"]) + len(parent))
    assert prompt_cache.as_request(line).marks == (system + len(blocks[0]["text"]),)


def test_on_openai_the_identical_prefix_is_read_in_steps_of_128_tokens():
    first, second = prompt_cache.costs(two_codegen_requests(), prompt_cache.GPT_4O_MINI)

    assert first.cached == first.uncached and abs(first.uncached - (2_100 * 0.15 + 100 * 0.60) / 1e6) < 1e-12  # nothing to read yet
    assert abs(second.cached - ((2_100 - 1_920) * 0.15 + 1_920 * 0.075 + 100 * 0.60) / 1e6) < 1e-12  # 2,000 shared: 15 steps of 128


def test_a_prefix_under_1024_tokens_is_not_cached():
    short = [request._replace(system="", user=request.user[-1_000:], marks=(600,)) for request in two_codegen_requests()]

    for pricing in prompt_cache.PRICINGS:  # 150 tokens shared, 150 marked
        assert all(cost.cached == cost.uncached for cost in prompt_cache.costs(short, pricing)), pricing.model


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
