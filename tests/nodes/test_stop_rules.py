"""The stop rules: goal by metric, run limit, plateau, repeated failure and budgets."""

from __future__ import annotations

import pytest
from fakes import make_run, make_settings

from nodes.stop_rules import budget_stop, decide_stop, spend
from search import failure_signature
from state import Usage, add_usage


def usage(tokens_in: int = 1000, tokens_out: int = 100, cost: float | None = None, model: str = "m") -> dict:
    return {"stage": "codegen", "model": model, "input_tokens": tokens_in, "output_tokens": tokens_out, "cost_usd": cost}


def test_failure_signature_blurs_numbers_paths_and_quoted_values():
    a = make_run(1, status="failed", error="KeyError: 'HOLD_FILE' at /tmp/run_1/train.py line 12")
    b = make_run(2, status="failed", error="KeyError: 'OTHER' at /tmp/run_2/train.py line 40")
    c = make_run(3, status="failed", error="ValueError: shapes (3,) and (4,)")
    assert failure_signature(a) == failure_signature(b) != failure_signature(c)
    assert failure_signature(make_run(4)) is None


def test_decide_stop_order():
    settings = make_settings(max_consecutive_failures=3, patience=2)
    goal = "acc >= 0.9"
    met = [make_run(1, metrics={"acc": 0.95})]
    assert decide_stop(met, [], goal, False, 5, settings).reason == "goal_met"
    crash = [make_run(n, status="failed", error=f"RuntimeError: boom {n}") for n in (1, 2, 3)]
    assert decide_stop(crash, [], goal, False, 3, settings).reason == "stuck"
    assert decide_stop(crash[:2], [], goal, False, 5, make_settings(max_consecutive_failures=3)) is None
    flat = [make_run(1, metrics={"acc": 0.5}), make_run(2, metrics={"acc": 0.5}), make_run(3, metrics={"acc": 0.4})]
    assert decide_stop(flat, [], goal, False, 3, settings).reason == "max_runs"
    assert decide_stop(flat, [], goal, False, 9, settings).reason == "plateau"
    assert decide_stop(flat, [], goal, False, 9, make_settings()) is None


def test_spend_prefers_the_provider_and_falls_back_to_prices():
    assert spend([usage(cost=0.25), usage(cost=0.5)], {}) == (0.75, "reported by the provider")
    total, source = spend([usage(tokens_in=1_000_000, tokens_out=1_000_000, model="m")], {"m": [3.0, 15.0]})
    assert total == 18.0 and source == "MODEL_PRICES"
    assert spend([usage()], {})[0] is None


def test_cached_input_is_priced_at_its_own_price_where_one_is_given():
    call = {**usage(tokens_in=1_000_000, tokens_out=0, model="m"), "cached_tokens": 600_000}
    assert spend([call], {"m": [3.0, 15.0, 0.3]})[0] == pytest.approx(0.4 * 3.0 + 0.6 * 0.3)
    assert spend([call], {"m": [3.0, 15.0]})[0] == 3.0  # no cached price: input's


def test_budget_stops_before_a_run_that_would_pass_it():
    runs = [make_run(1, metrics={}), make_run(2, metrics={})]
    calls = [usage(tokens_in=400, tokens_out=100, cost=0.1) for _ in range(4)]  # 2000 tokens, $0.40 over 2 runs
    assert budget_stop(runs, calls, make_settings(max_tokens=2999)).reason == "budget"
    assert budget_stop(runs, calls, make_settings(max_tokens=3000)) is None
    assert "MAX_COST_USD" in budget_stop(runs, calls, make_settings(max_cost_usd=0.5)).detail
    assert budget_stop(runs, calls, make_settings(max_cost_usd=0.7)) is None
    long_runs = [{**make_run(n), "duration_s": 1800.0} for n in (1, 2)]
    assert budget_stop(long_runs, [], make_settings(max_hours=1.4)).reason == "budget"


def test_the_states_usage_is_summed_per_stage_model_and_cost_source():
    calls = [
        Usage(stage="codegen", model="m", input_tokens=10, output_tokens=2, cost_usd=0.5),
        Usage(stage="codegen", model="m", input_tokens=20, output_tokens=3, cost_usd=0.25),
        Usage(stage="codegen", model="m", input_tokens=5, output_tokens=1, cost_usd=None),
        Usage(stage="analyze", model="m", input_tokens=7, output_tokens=1, cost_usd=None),
    ]
    total = add_usage(add_usage([], calls[:2]), calls[2:])
    assert total == [
        {"stage": "codegen", "model": "m", "input_tokens": 30, "output_tokens": 5, "cost_usd": 0.75, "calls": 2},
        {"stage": "codegen", "model": "m", "input_tokens": 5, "output_tokens": 1, "cost_usd": None, "calls": 1},
        {"stage": "analyze", "model": "m", "input_tokens": 7, "output_tokens": 1, "cost_usd": None, "calls": 1},
    ]
    assert spend(total, {}) == spend(calls, {}) == (0.75, "reported by the provider (2 calls without a price)")
    assert add_usage(total, []) == total  # summing again changes nothing


def test_cached_tokens_are_summed_where_reported():
    cached = Usage(stage="codegen", model="m", input_tokens=10, output_tokens=2, cost_usd=None, cached_tokens=6)
    plain = Usage(stage="codegen", model="m", input_tokens=10, output_tokens=2, cost_usd=None)
    assert add_usage([], [plain, cached, cached])[0]["cached_tokens"] == 12
    assert "cached_tokens" not in add_usage([], [plain, plain])[0]


def test_stuck_on_a_missing_package_says_where_to_install_it():
    settings = make_settings(max_consecutive_failures=2, train_python="/env/bin/python")
    runs = [make_run(n, "failed", error="ModuleNotFoundError: No module named 'xgboost'") for n in (1, 2)]
    stop = decide_stop(runs, [], "acc >= 0.9", False, 5, settings)
    assert stop.reason == "stuck" and "`/env/bin/python -m pip install xgboost`" in stop.detail


def test_with_runs_in_flight_a_budget_averages_tokens_over_every_run_given_out_and_hours_over_the_finished():
    runs = [make_run(1, metrics={}), make_run(2, metrics={})]
    calls = [usage(tokens_in=400, tokens_out=100) for _ in range(8)]  # 4000 tokens: 2 finished runs and 2 in flight (their code written)
    # 1000 tokens a run given out: one more makes 5000.
    assert budget_stop(runs, calls, make_settings(max_tokens=5000), in_flight=2) is None
    stop = budget_stop(runs, calls, make_settings(max_tokens=4999), in_flight=2)
    assert stop.reason == "budget" and "beside the 2 in flight" in stop.detail
    long_runs = [{**make_run(n), "duration_s": 1800.0} for n in (1, 2)]  # 1 h done; 2 in flight will add 1 h; a new one 0.5 h
    assert budget_stop(long_runs, [], make_settings(max_hours=2.5), in_flight=2) is None
    assert budget_stop(long_runs, [], make_settings(max_hours=2.4), in_flight=2).reason == "budget"


def test_while_runs_are_in_flight_only_the_goal_stuck_and_plateau_stop_at_once():
    runs = [make_run(1, metrics={"accuracy": 0.5}), make_run(2, metrics={"accuracy": 0.5})]
    settings = make_settings(max_tokens=1, patience=0)
    calls = [usage(tokens_in=400, tokens_out=100)]
    assert decide_stop(runs, calls, "accuracy >= 0.9", False, 2, settings, in_flight=1) is None  # run limit and budget wait for them
    assert decide_stop(runs, calls, "accuracy >= 0.9", False, 2, settings).reason == "max_runs"
    met = [*runs, make_run(3, metrics={"accuracy": 0.95})]
    assert decide_stop(met, calls, "accuracy >= 0.9", False, 9, settings, in_flight=2).reason == "goal_met"
    cancelled = {**make_run(3, metrics={"accuracy": 0.95}), "status": "cancelled"}
    assert decide_stop([*runs, cancelled], [], "accuracy >= 0.9", True, 9, make_settings(), latest=cancelled) is None  # metrics from its middle
