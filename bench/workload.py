"""What the benchmarks feed the runner: an idea, a realistic scripted LLM, generated train.py files, and the ways to drive main.py.

The LLM is tests/fake_llm.py's local server answering at once; the brain answers like a good model would,
at realistic sizes (a ~150-line train.py printing a few hundred lines, analyses with a few findings),
so that what the runner keeps per run has the size it has in a real experiment.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # run as a script, yet import the project and its test fakes

from fake_llm import FakeLLMServer, message_text  # noqa: E402
from scripted import ScriptedBrain, runner_env, schemas_asked  # noqa: E402

IDEA = """\
# Tabular classification with a small network

Train a classifier on a synthetic tabular dataset (generated inside train.py from a fixed seed, no download)
and reach a high held-out accuracy with a model that trains in seconds on a CPU. Compare a linear model with
a one-hidden-layer network, tune the learning rate and the width, and report accuracy on a held-out split.

Constraints: pure Python is fine; keep every run under a minute; print one line per training step so that
the curves can be plotted; write the final metrics to metrics.json.

goal: accuracy >= 0.99
"""

PLAN = """\
## Approach

1. Baseline: logistic regression trained with plain SGD on the standardised features; record accuracy and loss.
2. A one-hidden-layer network (tanh), width 16, same optimiser; compare with the baseline at equal steps.
3. Learning-rate sweep on the better model: 0.3, 0.1, 0.03, with a cosine decay.
4. Width sweep: 8, 16, 32, 64 hidden units; watch for over-fitting on the validation split.
5. Regularisation: L2 weight decay and early stopping on validation accuracy.

## Metrics

- accuracy on the held-out 20% split (the goal's metric), loss on the training split, val_accuracy per epoch,
- train_seconds, to keep runs short.

## What next

If the network plateaus below the goal, try feature crosses, a second hidden layer and a longer schedule,
then ensembles of a few seeds. Keep each run's change small so that its effect can be read from the metrics.
"""

FIRST_TASKS = [
    ("Baseline logistic regression", "Plain SGD on standardised features; sets the bar for the network."),
    ("One-hidden-layer network", "tanh, 16 units, same optimiser and steps as the baseline."),
    ("Learning-rate sweep", "0.3, 0.1, 0.03 with cosine decay on the better model."),
    ("Width sweep", "8, 16, 32, 64 units; watch the gap between train and validation accuracy."),
    ("Regularisation", "L2 weight decay and early stopping on validation accuracy."),
    ("Seed ensemble", "Average the predictions of 3 to 5 seeds of the best configuration."),
]

TRAIN_TEMPLATE = '''\
"""Run {run}: {change}.

A small classifier on a synthetic tabular dataset, trained with SGD in pure Python so that it runs
anywhere in a fraction of a second. Prints one line per step and writes metrics.json at the end.
"""

import json
import math
import os
import random
import time

# Settings for this run (the analyst's last suggestion applied).
SEED = {seed}
LEARNING_RATE = {lr}
HIDDEN_UNITS = {hidden}
WEIGHT_DECAY = {decay}
EPOCHS = {epochs}
STEPS_PER_EPOCH = {steps}
BATCH_SIZE = 4
N_FEATURES = 4
N_SAMPLES = 48
VALIDATION_SHARE = 0.25


def make_dataset(seed):
    """Two noisy Gaussian blobs, labelled 0 and 1; the same data for every run with the same seed."""
    rng = random.Random(seed)
    rows, labels = [], []
    for i in range(N_SAMPLES):
        label = i % 2
        centre = 0.8 if label else -0.8
        rows.append([rng.gauss(centre, 1.0) for _ in range(N_FEATURES)])
        labels.append(label)
    return rows, labels


def standardise(rows):
    """Zero mean and unit variance per column, computed on the rows given."""
    columns = list(zip(*rows))
    means = [sum(c) / len(c) for c in columns]
    scales = [max(1e-6, math.sqrt(sum((x - m) ** 2 for x in c) / len(c))) for c, m in zip(columns, means)]
    return [[(x - m) / s for x, m, s in zip(row, means, scales)] for row in rows]


def split(rows, labels, share, seed):
    """A shuffled train/validation split."""
    order = list(range(len(rows)))
    random.Random(seed + 1).shuffle(order)
    cut = int(len(order) * (1 - share))
    train = [(rows[i], labels[i]) for i in order[:cut]]
    valid = [(rows[i], labels[i]) for i in order[cut:]]
    return train, valid


def sigmoid(z):
    if z < -30:
        return 0.0
    if z > 30:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


class Model:
    """Logistic regression on a tanh hidden layer (or on the inputs when HIDDEN_UNITS is 0)."""

    def __init__(self, n_in, hidden, seed):
        rng = random.Random(seed)
        self.hidden = hidden
        width = hidden or n_in
        self.w1 = [[rng.gauss(0, 0.5) for _ in range(n_in)] for _ in range(hidden)]
        self.w2 = [rng.gauss(0, 0.5) for _ in range(width)]
        self.b2 = 0.0

    def features(self, x):
        if not self.hidden:
            return x
        return [math.tanh(sum(w * v for w, v in zip(row, x))) for row in self.w1]

    def predict(self, x):
        h = self.features(x)
        return sigmoid(sum(w * v for w, v in zip(self.w2, h)) + self.b2)

    def step(self, batch, lr, decay):
        """One SGD step on the output layer; returns the batch's mean log loss."""
        grads, grad_b, loss = [0.0] * len(self.w2), 0.0, 0.0
        for x, y in batch:
            h = self.features(x)
            p = sigmoid(sum(w * v for w, v in zip(self.w2, h)) + self.b2)
            loss -= math.log(max(p, 1e-9)) if y else math.log(max(1 - p, 1e-9))
            for j, v in enumerate(h):
                grads[j] += (p - y) * v
            grad_b += p - y
        n = len(batch)
        self.w2 = [w - lr * (g / n + decay * w) for w, g in zip(self.w2, grads)]
        self.b2 -= lr * grad_b / n
        return loss / n


def accuracy(model, data):
    return sum((model.predict(x) >= 0.5) == bool(y) for x, y in data) / max(1, len(data))


def cosine(step, total, base):
    """Cosine decay of the learning rate from `base` to zero."""
    return base * 0.5 * (1 + math.cos(math.pi * step / total))


def main():
    started = time.time()
    rows, labels = make_dataset(SEED)
    train, valid = split(standardise(rows), labels, VALIDATION_SHARE, SEED)
    model = Model(N_FEATURES, HIDDEN_UNITS, SEED)
    rng = random.Random(SEED + 2)
    total = EPOCHS * STEPS_PER_EPOCH
    step = 0
    for epoch in range(1, EPOCHS + 1):
        for _ in range(STEPS_PER_EPOCH):
            batch = rng.sample(train, BATCH_SIZE)
            lr = cosine(step, total, LEARNING_RATE)
            loss = model.step(batch, lr, WEIGHT_DECAY)
            step += 1
            print(f"epoch={{epoch}} step={{step}} lr={{lr:.5f}} loss={{loss:.4f}}")
        val_accuracy = accuracy(model, valid)
        print(f"epoch={{epoch}} val_accuracy={{val_accuracy:.4f}} train_accuracy={{accuracy(model, train):.4f}}")
    metrics = {{
        "accuracy": round(min(0.95, {base_accuracy} + accuracy(model, valid) * 0.01), 4),
        "loss": round(loss, 4),
        "train_seconds": round(time.time() - started, 3),
    }}
    with open("metrics.json", "w") as f:
        json.dump(metrics, f)
    print(json.dumps(metrics))
    print("data dir:", os.environ.get("DATA_DIR", "(none)"))


if __name__ == "__main__":
    main()
'''


def train_script(run: int) -> str:
    """The train.py of run `run`: about 150 lines that print about 300 and finish in a few tens of milliseconds."""
    return TRAIN_TEMPLATE.format(
        run=run,
        change=change_of(run),
        seed=run,
        lr=(0.3, 0.1, 0.03)[run % 3],
        hidden=(0, 8, 16, 32)[run % 4],
        decay=(0.0, 1e-4, 1e-3)[run % 3],
        epochs=10,
        steps=29,
        base_accuracy=0.80 + (run % 7) * 0.01,
    )


def change_of(run: int) -> str:
    """The one-line change the scripted analyst reports for `run`."""
    if run == 1:
        return "set up the logistic-regression baseline with SGD"
    widths, rates = (0, 8, 16, 32), (0.3, 0.1, 0.03)
    return f"hidden units {widths[(run - 1) % 4]} -> {widths[run % 4]}, learning rate {rates[(run - 1) % 3]} -> {rates[run % 3]}"


FLOOD_TRAIN = """\
import json, sys
line = b"x" * 1023 + b"\\n"
block = line * 1024
write = sys.stdout.buffer.write
for _ in range({total_bytes} // len(block)):
    write(block)
sys.stdout.flush()
json.dump({{"accuracy": 0.5}}, open("metrics.json", "w"))
"""
"""A train.py that prints `total_bytes` in 1 KiB lines (1 MiB writes), as tests/test_output_flood.py's attack does."""


class RealisticBrain(ScriptedBrain):
    """ScriptedBrain at realistic sizes: a plan with six tasks, a ~150-line train.py a run, analyses with a few findings.

    Each task is worked on for three runs, then marked done and a follow-up task added, as a good analyst would.

    `codes` (optional) overrides the train.py of the first runs, e.g. a flood for run 1. Token counts are left
    to the server (its whitespace word count), so the audit log's input_tokens follow the prompt's size.
    """

    def __init__(self, codes: list[str] | None = None):
        super().__init__()
        self.codes = codes or []  # not ScriptedBrain's default: every run without a given script gets train_script(run)
        self.open_tasks = list(range(1, len(FIRST_TASKS) + 1))
        self.next_task_id = len(FIRST_TASKS) + 1

    def answer(self, body: dict) -> dict:
        tools = schemas_asked(body)
        system, prompt = message_text(body["messages"][0]), message_text(body["messages"][-1])  # a prompt marked for caching comes in blocks
        if "ExperimentPlan" in tools:
            self.stages.append("initialize")
            tasks = [{"title": title, "notes": notes} for title, notes in FIRST_TASKS]
            return {"tool_call": {"name": "ExperimentPlan", "arguments": {"goal": "accuracy >= 0.99", "plan": PLAN, "tasks": tasks}}}
        if "RunAnalysis" in tools:
            self.stages.append("analyze")
            run = int(re.search(r"Run (\d+):", prompt).group(1))
            return {"tool_call": {"name": "RunAnalysis", "arguments": self.analysis(run, prompt)}}
        if "You write train.py" in system:
            self.stages.append("codegen")
            run = int(re.findall(r"train\.py for run (\d+)", message_text(body["messages"][1]))[-1])  # the instruction ending the request names it
            code = self.codes[run - 1] if run <= len(self.codes) else train_script(run)
            return {"content": f"This run applies the last analysis: {change_of(run)}.\n\n```python\n{code}```\n\nIt prints one line per step."}
        if "REPORT.md" in system:
            self.stages.append("report")
            return {"content": REPORT_NARRATIVE}
        raise AssertionError(f"unexpected request: {system[:200]}")

    def analysis(self, run: int, prompt: str) -> dict:
        """What a good analyst says about `run`: two sentences, a change, four findings with numbers, and the task it worked on."""
        accuracy = re.search(r"accuracy=([0-9.]+)", prompt)
        value = accuracy.group(1) if accuracy else "unknown"
        current = self.open_tasks[0]
        update = {"id": current, "status": "in_progress", "notes": f"Tried in run {run}: accuracy {value}; the next run varies the width."}
        new_tasks = []
        if run % 3 == 0:  # three runs on a task, then it is done and the analyst proposes a follow-up
            update = {**update, "status": "done", "notes": f"Done after run {run}: accuracy {value}; kept the better setting."}
            self.open_tasks = [*self.open_tasks[1:], self.next_task_id]
            self.next_task_id += 1
            new_tasks.append(
                {"title": f"Follow-up from run {run}", "notes": f"Check that the gain of run {run} holds with three other seeds and a longer schedule."}
            )
        return {
            "summary": f"Run {run} trained the model with the new settings and reached accuracy {value}. "
            "The loss curve is smooth and the run took well under a second.",
            "change": change_of(run),
            "findings": [
                f"accuracy {value} on the held-out split after 290 steps (run {run})",
                f"the training loss falls fastest in the first two epochs, then flattens; learning rate {(0.3, 0.1, 0.03)[run % 3]} is stable",
                f"with {(0, 8, 16, 32)[run % 4]} hidden units the gap between train and validation accuracy stays under 0.05",
                "weight decay changes the final accuracy by less than 0.01 at this size of data",
            ],
            "task_updates": [update],
            "new_tasks": new_tasks,
            "goal_achieved": False,
            "goal_evidence": "",
        }


REPORT_NARRATIVE = """\
The experiment compared a logistic-regression baseline with a one-hidden-layer network on a synthetic tabular
dataset, sweeping the learning rate and the width; no run reached the goal.

## Key findings

- The network beat the baseline once it had at least 16 hidden units.
- Learning rates above 0.1 made the loss noisy in the first epoch without changing the final accuracy.
- Weight decay made no measurable difference at this size of data.

## What to try next

- A second hidden layer and a longer schedule.
- An ensemble of a few seeds of the best configuration.
"""


def new_experiment(folder: Path) -> Path:
    """An experiment folder holding only IDEA.md."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "IDEA.md").write_text(IDEA)
    return folder


def command_seconds(argv: list[str], times: int) -> list[float]:
    """Wall seconds of running `argv` to its end (from the repository root, its output dropped), `times` times."""
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, check=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def llm_settings(server: FakeLLMServer, sandbox: str) -> dict:
    """run_experiment's keyword arguments for the local server: no retries, no backoff, the chosen sandbox."""
    return {"llm_base_url": server.base_url, "llm_api_key": "k", "llm_max_retries": 0, "llm_retry_backoff_seconds": 0, "sandbox": sandbox}


def main_env(server: FakeLLMServer, sandbox: str) -> dict[str, str]:
    """The environment for `python main.py` against the local server, unbuffered so that each line arrives when printed."""
    return runner_env(server.base_url, SANDBOX=sandbox, PYTHONUNBUFFERED="1")
