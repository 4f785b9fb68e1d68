"""main.py against servers short of OpenRouter: no tool calling, no response formats, prompt caching and its usage report."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

from fake_llm import message_text
from scripted import ScriptedBrain, run_main, runner_env, schema_asked_in_prompt, schemas_asked

PLANNER = "anthropic/claude-sonnet-4.6"
"""The default REPORT_MODEL (initialize's structured call) and CODE_MODEL."""
ANALYST = "openai/gpt-4o-mini"
"""The default SUMMARIZE_MODEL (analyze's structured calls)."""


def refusing(brain: ScriptedBrain, response_format: bool = False):
    """A responder for `brain` behind a server that answers 400 to tools (as Ollama does for a model without them) and,
    with `response_format`, to a response format too."""

    def respond(body: dict) -> dict:
        if body.get("tools"):
            return {"status": 400, "error": f"registry.ollama.ai/library/{body['model']} does not support tools"}
        if response_format and body.get("response_format"):
            return {"status": 400, "error": "response_format is not supported by this server"}
        return brain(body)

    return respond


def structured_method(body: dict) -> str | None:
    """How a request asks for a structured reply (the STRUCTURED_OUTPUT method), or None for a plain one (codegen, report)."""
    if body.get("tools"):
        return "function_calling"
    if body.get("response_format"):
        return "json_schema"
    return "prompt" if schema_asked_in_prompt(body) else None


def request_text(body: dict) -> str:
    """The request's messages as one text, the system message first: what a provider's prompt cache compares."""
    return "".join(message_text(message) for message in body["messages"])


def is_codegen(body: dict) -> bool:
    return "You write train.py" in message_text(body["messages"][0])


def is_analyze(body: dict) -> bool:
    """Whether the request asks for a RunAnalysis, by whichever method."""
    return "RunAnalysis" in schemas_asked(body)


def shared_prefix(a: str, b: str) -> str:
    return os.path.commonprefix([a, b])


def block(text: str, tag: str) -> str:
    """`<tag>…</tag>` as the request holds it."""
    found = re.search(rf"<{tag}>\n.*?\n</{tag}>", text, re.DOTALL)
    assert found, f"no <{tag}> block in {text[:300]!r}"
    return found.group(0)


def test_a_server_without_tools_is_probed_once_per_model_and_never_again_on_resume(experiment: Path, llm_server):
    server = llm_server(refusing(ScriptedBrain()))
    env = runner_env(server.base_url)
    result = run_main(["-d", str(experiment), "-r", "2"], env)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert all((experiment / f"run_{n}" / "metrics.json").is_file() for n in (1, 2))
    structured = [(body["model"], structured_method(body)) for body in server.requests if structured_method(body)]
    # Each model's first structured request tried tools, once; every later one went straight to a response format.
    assert Counter(model for model, method in structured if method == "function_calling") == {PLANNER: 1, ANALYST: 1}
    for model in (PLANNER, ANALYST):
        methods = [method for asked, method in structured if asked == model]
        assert methods[0] == "function_calling" and set(methods[1:]) == {"json_schema"}, (model, methods)
    assert [method for model, method in structured if model == ANALYST] == ["function_calling", "json_schema", "json_schema"]
    for model in (PLANNER, ANALYST):
        lines = [line for line in result.stdout.splitlines() if f"structured output of model {model}:" in line]
        assert len(lines) == 1, result.stdout
        assert f"{model}: json_schema (function_calling refused: 400" in lines[0] and "does not support tools" in lines[0]
    report = (experiment / "REPORT.md").read_text()
    assert f"Structured replies (STRUCTURED_OUTPUT=auto), by model: {PLANNER}: json_schema, {ANALYST}: json_schema." in report
    assert "Stopped because: **max_runs**" in report

    # A resume knows each model's method from the state: no request with tools, no line about it again.
    before = len(server.requests)
    more = run_main(["-d", str(experiment), "--resume", "--max-runs", "3"], env)
    assert more.returncode == 0, more.stderr
    resumed = server.requests[before:]
    assert resumed and not any("tools" in body for body in resumed)
    assert [structured_method(body) for body in resumed if is_analyze(body)] == ["json_schema"]
    assert "structured output of model" not in more.stdout
    assert (experiment / "run_3" / "metrics.json").is_file()
    report = (experiment / "REPORT.md").read_text()
    assert "after 3 of 3 runs" in report and f"{PLANNER}: json_schema, {ANALYST}: json_schema." in report


def test_one_model_for_every_stage_is_probed_once_in_all(experiment: Path, llm_server):
    server = llm_server(refusing(ScriptedBrain()))
    result = run_main(["-d", str(experiment), "-r", "2", "--model", "local/qwen3"], runner_env(server.base_url))

    assert result.returncode == 0, result.stderr
    # initialize learned it; analyze, a stage of its own, took it from the state.
    assert [structured_method(body) for body in server.requests if structured_method(body)] == ["function_calling", *["json_schema"] * 3]
    assert result.stdout.count("structured output of model local/qwen3: json_schema") == 1
    assert "Structured replies (STRUCTURED_OUTPUT=auto), by model: local/qwen3: json_schema." in (experiment / "REPORT.md").read_text()


DECOY = "DECOY drafted while thinking"


def in_prose(text: str) -> str:
    return f"Sure! Here is what you asked for:\n\n{text}\n\nLet me know if anything should change."


def fenced(text: str) -> str:
    return f"```json\n{text}\n```"


def after_thinking(text: str) -> str:
    """The answer after a <think> block that holds a draft of it, valid for the schema too, which must not be taken."""
    draft = {key: DECOY if isinstance(value, str) else value for key, value in json.loads(text).items()}
    return f"<think>\nA first draft: {json.dumps(draft)}\nNo, better:\n</think>\n\n{text}"


def with_trailing_commas(text: str) -> str:
    """The JSON with commas that close no item, which JSON refuses: after its first list's last item and its last member."""
    return text.replace("]", ",]", 1)[:-1] + ",}"


def test_a_server_without_tools_or_response_formats_gets_the_schema_in_the_prompt(experiment: Path, llm_server):
    shapes = [after_thinking, in_prose, fenced, with_trailing_commas]
    used = []

    def wrap(text: str) -> str:
        shape = shapes[len(used) % len(shapes)]
        used.append(shape.__name__)
        return shape(text)

    server = llm_server(refusing(ScriptedBrain(json_reply=wrap), response_format=True))
    result = run_main(["-d", str(experiment), "-r", "3"], runner_env(server.base_url))

    assert result.returncode == 0, result.stderr
    assert all((experiment / f"run_{n}" / "metrics.json").is_file() for n in (1, 2, 3))
    # The plan and the 3 analyses, each shape once, and each read at the first try: no repair request.
    assert sorted(used) == sorted(shape.__name__ for shape in shapes)
    assert not any("could not be used" in request_text(body) for body in server.requests)
    for model in (PLANNER, ANALYST):
        methods = [structured_method(body) for body in server.requests if body["model"] == model and structured_method(body)]
        assert methods[:3] == ["function_calling", "json_schema", "prompt"] and set(methods[3:]) <= {"prompt"}, (model, methods)
        line = next(line for line in result.stdout.splitlines() if f"structured output of model {model}:" in line)
        assert f"{model}: prompt (function_calling refused: 400" in line and "; json_schema refused: 400" in line
    # The schema ends the system message, after the stage's own rules: the analyses still share their stable prefix.
    system = message_text(next(body for body in server.requests if structured_method(body) == "prompt")["messages"][0])
    assert system.startswith("You are the lead") and "Answer with a single JSON object that follows this JSON schema" in system
    analyses = [request_text(body) for body in server.requests if is_analyze(body) and structured_method(body) == "prompt"]
    assert len(analyses) == 3
    for earlier, later in pairwise(analyses):
        prefix = shared_prefix(earlier, later)
        assert '"title": "RunAnalysis"' in prefix and block(earlier, "goal") in prefix
    # What the replies said is what the experiment recorded; the draft in the reasoning is nowhere.
    assert "logistic regression" in (experiment / "PLAN.md").read_text()
    findings = (experiment / "KEY_FINDINGS.md").read_text()
    assert all(f"Run {n} trained the baseline." in findings for n in (1, 2, 3))
    for name in ("PLAN.md", "KEY_FINDINGS.md", "tasks.json", "REPORT.md"):
        assert DECOY not in (experiment / name).read_text(), name
    report = (experiment / "REPORT.md").read_text()
    assert f"Structured replies (STRUCTURED_OUTPUT=auto), by model: {PLANNER}: prompt, {ANALYST}: prompt." in report


def test_consecutive_requests_of_a_stage_share_a_prefix_holding_what_never_changes(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    result = run_main(["-d", str(experiment), "-r", "3"], runner_env(server.base_url))
    assert result.returncode == 0, result.stderr

    codegen = [request_text(body) for body in server.requests if is_codegen(body)]
    analyze = [request_text(body) for body in server.requests if is_analyze(body)]
    assert len(codegen) == 3 and len(analyze) == 3
    idea = (experiment / "IDEA.md").read_text().strip()
    plan, machine, goal = block(codegen[0], "plan"), block(codegen[0], "machine"), block(analyze[0], "goal")
    assert "logistic regression" in plan and "Python" in machine and "accuracy >= 0.9" in goal
    for texts, stable, says_run in ((codegen, (idea, plan, machine), "for run {n}"), (analyze, (idea, plan, goal), "Run {n}:")):
        for n, (earlier, later) in enumerate(pairwise(texts), start=1):
            prefix = shared_prefix(earlier, later)
            for part in stable:
                assert part in prefix, (n, part, prefix[-300:])
            # The run's own number comes after the shared part of both requests.
            for run, text in ((n, earlier), (n + 1, later)):
                assert says_run.format(n=run) in text[len(prefix) :]
                assert not re.search(rf"\brun {run}\b", prefix, re.IGNORECASE), (run, prefix[-300:])


def test_anthropic_models_mark_the_end_of_the_stable_part_for_caching(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url, CODE_MODEL="anthropic/claude-sonnet-4.6", SUMMARIZE_MODEL="anthropic/claude-haiku-4.5")
    result = run_main(["-d", str(experiment), "-r", "2"], env)
    assert result.returncode == 0, result.stderr

    marked = [body for body in server.requests if is_codegen(body) or is_analyze(body)]
    assert len(marked) == 4
    for body in marked:
        system, user = body["messages"][:2]
        assert isinstance(system["content"], str) and "cache_control" not in json.dumps(system)
        blocks = user["content"]
        improves = is_codegen(body) and "<parent_code" in message_text(user)
        assert isinstance(blocks, list) and len(blocks) == (3 if improves else 2), blocks
        # Every block but the last ends with a mark: the stable part, then (an improve's) the parent's code.
        assert [index for index, part in enumerate(blocks) if "cache_control" in part] == list(range(len(blocks) - 1))
        assert all(part["cache_control"] == {"type": "ephemeral"} for part in blocks[:-1])
        stable, volatile = blocks[0]["text"], blocks[-1]["text"]
        assert "Classify scikit-learn's digits" in stable and "logistic regression" in block(stable, "plan") and "<tasks>" not in stable
        if improves:
            assert blocks[1]["text"].lstrip().startswith('<parent_code run="1">') and blocks[1]["text"].rstrip().endswith("</parent_code>")
        # The mark ends the stable part: the volatile part begins right after it.
        if is_codegen(body):
            assert stable.rstrip().endswith("</machine>") and volatile.lstrip().startswith("<tasks>")
        else:
            assert stable.rstrip().endswith("</goal>") and volatile.lstrip().startswith("<origin>")
    assert sum("<parent_code" in message_text(body["messages"][1]) for body in marked if is_codegen(body)) == 1  # run 2 improves run 1


def test_other_models_get_no_cache_mark_anywhere(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    env = runner_env(server.base_url, CODE_MODEL="openai/gpt-4.1", REPORT_MODEL="meta-llama/llama-3-70b")
    result = run_main(["-d", str(experiment), "-r", "2"], env)
    assert result.returncode == 0, result.stderr

    assert {body["model"] for body in server.requests} == {"openai/gpt-4.1", "meta-llama/llama-3-70b", ANALYST}
    assert len(server.requests) == 6
    for body in server.requests:
        assert "cache_control" not in json.dumps(body)
        assert all(isinstance(message["content"], str) for message in body["messages"])


def test_cached_tokens_reach_the_audit_log_the_report_and_the_terminal(experiment: Path, llm_server):
    brain = ScriptedBrain()

    def with_cache(body: dict) -> dict:
        reply = brain(body)
        reply["usage"] = {"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 60}}
        return reply

    server = llm_server(with_cache)
    # A call is 40 fresh input tokens, 60 cached and 20 output: planner 4 calls x (40*30 + 60*3 + 20*150) = 17,520 µUSD,
    # analyst 2 x (40*10 + 60*5 + 20*20) = 2,200: $0.0197 (at the full input price it would be $0.0268).
    env = runner_env(server.base_url, MODEL_PRICES=f"{PLANNER}=30/150/3,{ANALYST}=10/20/5")
    result = run_main(["-d", str(experiment), "-r", "2"], env)
    assert result.returncode == 0, result.stderr

    calls = [json.loads(line) for line in (experiment / ".runner" / "llm_calls.jsonl").read_text().splitlines()]
    assert len(calls) == len(server.requests) == 6
    assert [call["cached_tokens"] for call in calls] == [60] * 6 and all(call["input_tokens"] == 100 for call in calls)
    report = (experiment / "REPORT.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| Stage |"))
    total = next(line for line in report.splitlines() if line.startswith("| **total** |"))
    columns = dict(zip([cell.strip() for cell in header.split("|")], [cell.strip() for cell in total.split("|")], strict=True))
    assert columns["Calls"] == "6" and columns["Input tokens"] == "600" and columns["Cached input tokens"] == "360"
    assert columns["Cost (USD)"] == "0.0197"
    # The terminal: every step's line counts them, the last one all 6 calls'; so does `status`.
    last = [line for line in result.stdout.splitlines() if line.strip().startswith("✓ ")][-1]
    assert "✓ report" in last and "720 tokens (360 cached) · $0.0197" in last, last
    status = run_main(["status", "-d", str(experiment)], env)
    assert status.returncode == 0, status.stderr
    assert "LLM use: 720 tokens (360 cached) · $0.0197" in status.stdout, status.stdout
