"""A scripted LLM for end-to-end tests, and helpers to run main.py as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fake_llm import message_text

REPO = Path(__file__).resolve().parent.parent

IDEA = "# Digits\n\nClassify scikit-learn's digits with a small model.\n\ngoal: accuracy >= 0.9\n"

GOOD_TRAIN = """\
import json
for epoch in range(1, 4):
    print(f"epoch={epoch} loss={1.0 / epoch:.3f} accuracy={0.7 + epoch * 0.05:.3f}")
json.dump({"accuracy": 0.85, "loss": 0.33}, open("metrics.json", "w"))
print("done")
"""


# Run 2 waits while $HOLD_FILE exists, so a test can kill the runner in the middle of it.
HOLDING_TRAIN = """\
import json, os, time
with open("attempts.txt", "a") as f:
    f.write("attempt\\n")
print("run two starting", flush=True)
print("epoch 1/4", flush=True)
while os.path.exists(os.environ["HOLD_FILE"]):
    time.sleep(0.1)
json.dump({"accuracy": 0.75}, open("metrics.json", "w"))
print("accuracy=0.75")
"""


class ScriptedBrain:
    """Answers each stage's request the way a good model would, with scripted train.py files.

    `codes[n]` is the train.py of run n+1 (the last one repeats); `goal_met_on` is the run
    the analyst declares the goal met on; `cost_per_call` is reported in the usage block, as OpenRouter does.

    Structured answers come as a tool call, as JSON text for a response format (json_schema), or, for a request that
    asks for JSON in its system message (STRUCTURED_OUTPUT=prompt), as `json_reply(JSON text)`: the reply's text, the
    bare JSON unless a test wraps it (in prose, a fence, after reasoning).
    """

    def __init__(
        self,
        codes: list[str] | None = None,
        goal_met_on: int | None = None,
        cost_per_call: float | None = None,
        json_reply: Callable[[str], str] | None = None,
    ):
        self.codes = codes or [GOOD_TRAIN]
        self.goal_met_on = goal_met_on
        self.cost_per_call = cost_per_call
        self.json_reply = json_reply or (lambda text: text)
        self.stages: list[str] = []

    def __call__(self, body: dict) -> dict:
        reply = self.answer(body)
        if "tool_call" in reply and body.get("response_format"):  # json_schema mode: the same answer as JSON text
            reply = {"content": json.dumps(reply.pop("tool_call")["arguments"]), **reply}
        elif "tool_call" in reply and not body.get("tools"):  # prompt mode: the answer in the reply's text
            reply = {"content": self.json_reply(json.dumps(reply.pop("tool_call")["arguments"])), **reply}
        return reply

    def answer(self, body: dict) -> dict:
        tools = schemas_asked(body)
        system = message_text(body["messages"][0])
        usage = {"usage": {"prompt_tokens": 100, "completion_tokens": 20}}
        if self.cost_per_call is not None:
            usage["cost"] = self.cost_per_call
        if "ExperimentPlan" in tools:
            self.stages.append("initialize")
            plan = {
                "goal": "accuracy >= 0.9",
                "plan": "## Approach\n\nStart with logistic regression, then try an MLP.",
                "tasks": [{"title": "Baseline logistic regression", "notes": "fast"}, {"title": "Small MLP", "notes": ""}],
            }
            return {"tool_call": {"name": "ExperimentPlan", "arguments": plan}, **usage}
        if "RunAnalysis" in tools:
            self.stages.append("analyze")
            prompt = message_text(body["messages"][-1])
            run = int(re.search(r"Run (\d+):", prompt).group(1))
            analysis = {
                "summary": f"Run {run} trained the baseline.",
                "change": "set up the baseline" if run == 1 else f"changed the model for run {run}",
                "findings": [f"run {run} reached its metrics"],
                "task_updates": [{"id": 1, "status": "done" if run > 1 else "in_progress", "notes": f"worked on in run {run}"}],
                "new_tasks": [],
                "goal_achieved": run == self.goal_met_on,
                "goal_evidence": "accuracy=0.95" if run == self.goal_met_on else "",
            }
            return {"tool_call": {"name": "RunAnalysis", "arguments": analysis}, **usage}
        if "You write train.py" in system:
            self.stages.append("codegen")
            run = int(re.findall(r"for run (\d+)", message_text(body["messages"][1]))[-1])  # the run number ends the user message
            code = self.codes[min(run, len(self.codes)) - 1]
            return {"content": f"Here is the script.\n\n```python\n{code}```\n", **usage}
        if "REPORT.md" in system:
            self.stages.append("report")
            return {"content": "# Report\n\nThe baseline reached the goal.", **usage}
        raise AssertionError(f"unexpected request: {system[:200]}")


ASKED_IN_PROMPT = re.compile(r"Answer with a single JSON object that follows this JSON schema[^\n]*\n(\{.*\})\s*$", re.DOTALL)


def schema_asked_in_prompt(body: dict) -> str | None:
    """The title of the JSON schema a request without tools or response format asks for at the end of its system message
    (STRUCTURED_OUTPUT=prompt), e.g. "RunAnalysis"; None for any other request."""
    if body.get("tools") or body.get("response_format"):
        return None
    asked = ASKED_IN_PROMPT.search(message_text(body["messages"][0]))
    return json.loads(asked.group(1)).get("title") if asked else None


def schemas_asked(body: dict) -> list[str]:
    """The structured answers a request asks for, by whichever method: its tools' names, its response format's schema, or
    the schema its system message asks for (e.g. ["RunAnalysis"]); empty for a plain request."""
    tools = [tool["function"]["name"] for tool in body.get("tools") or []]
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name") or schema_asked_in_prompt(body)
    return [*tools, schema] if schema else tools


def runner_env(base_url: str, **extra: str) -> dict[str, str]:
    """Environment for main.py pointed at a local server, with nothing inherited that could leak settings."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_MODEL") and k not in ("MAX_RUNS", "OPENROUTER_API_KEY", "LLM_API_KEY")}
    env.update(
        {
            "LLM_BASE_URL": base_url,
            "LLM_API_KEY": "test-key",
            "LLM_MAX_RETRIES": "0",
            "NO_COLOR": "1",
            "SANDBOX_ENV": "HOLD_FILE",
            "LLM_RETRY_BACKOFF_SECONDS": "0",
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(extra)
    return env


def run_main(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python main.py ARGS` to completion and capture its output."""
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], env=env, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)


def read_tasks(folder: Path) -> list[dict]:
    return json.loads((folder / "tasks.json").read_text())["tasks"]


def start_main(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `python main.py ARGS` in the background, its output captured as text."""
    return subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout: float = 60) -> None:
    """Poll `condition()` until it holds; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def start_until_run(experiment: Path, env: dict[str, str], max_runs: int, run: int, extra: list[str] | None = None):
    """Start main.py (with `extra` arguments) in the background and wait until run `run` of HOLDING_TRAIN is executing."""
    runner = start_main(["-d", str(experiment), "-r", str(max_runs), *(extra or [])], env)
    log = experiment / f"run_{run}" / "output.log"
    wait_until(lambda: log.exists() and "starting" in log.read_text())
    return runner
