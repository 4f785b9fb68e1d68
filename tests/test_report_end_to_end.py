"""A finished experiment's REPORT.md, end to end: main.py against the local LLM server.

Every run's measured values, and the run it builds on, appear exactly as in run_N/metrics.json and result.json,
the plots it links are PNG files that exist (the search tree's naming every run), and its reproduce section runs
the best run's train.py again to the same metrics.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image
from scripted import ScriptedBrain, run_main, runner_env


def train(metrics: dict[str, float]) -> str:
    """A train.py printing per-epoch lines, then writing `metrics` to metrics.json."""
    return f"""\
import json
for epoch in range(1, 6):
    print(f"epoch={{epoch}} loss={{1.0 / epoch:.4f}} accuracy={{0.5 + epoch * 0.05:.3f}}", flush=True)
json.dump({metrics!r}, open("metrics.json", "w"))
print("done")
"""


CRASH = "print('loading data', flush=True)\nraise RuntimeError('dataset shard 7 is corrupt')\n"
CODES = [
    train({"accuracy": 0.61, "loss": 0.9}),
    train({"accuracy": 0.8765432109876543, "loss": 1.25e-07, "n_params": 120000, "lr": 0.0003}),
    CRASH,
    train({"accuracy": 0.72, "loss": 0.5}),
]


def table_rows(report: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header starts with `first_column`, as dicts by column name."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])), strict=True)))
    return rows


def test_the_report_holds_every_measured_value_valid_plots_and_a_reproducible_best_run(experiment: Path, llm_server, tmp_path: Path):
    server = llm_server(ScriptedBrain(codes=CODES))
    result = run_main(["-d", str(experiment), "-r", "4"], runner_env(server.base_url))
    assert result.returncode == 0, result.stderr
    report = (experiment / "REPORT.md").read_text()

    # 1. The runs table: each run's parent, operator, status, duration and every metric, exactly as its files hold them.
    rows = {int(row["Run"].rstrip(" ★")): row for row in table_rows(report, "Run")}
    assert sorted(rows) == [1, 2, 3, 4]
    records = {number: json.loads((experiment / f"run_{number}" / "result.json").read_text()) for number in rows}
    for number, row in rows.items():
        run, recorded = experiment / f"run_{number}", records[number]
        assert (row["Parent"], row["Operator"]) == (str(recorded["parent"] or "—"), recorded["operator"])
        assert row["Status"] == recorded["status"]
        assert float(row["Duration"].removesuffix(" s")) == recorded["duration_s"]
        if (run / "metrics.json").exists():
            measured = json.loads((run / "metrics.json").read_text())
            assert measured == recorded["metrics"]
            for name, value in measured.items():
                assert float(row[name]) == value, (number, name, row[name])
        else:
            assert recorded["status"] == "failed" and "dataset shard 7 is corrupt" in row["Error"]
    assert rows[2]["Run"] == "2 ★" and rows[2]["What changed"] == "changed the model for run 2"
    assert rows[1]["What changed"] == "set up the baseline"

    # 2. The best run, with all its metrics exactly.
    best = json.loads((experiment / "run_2" / "metrics.json").read_text())
    assert "**Run 2** (ok, " in report
    assert "Metrics: accuracy=0.8765432109876543, loss=1.25e-07, n_params=120000, lr=0.0003" in report
    assert {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.e+]+)", report.split("Metrics: ")[1].splitlines()[0])} == best
    assert "Goal `accuracy >= 0.9`: not met (accuracy=0.8765432109876543)." in report
    line, number = ["run 2"], 2
    while records[number]["parent"] is not None:
        number = records[number]["parent"]
        line.append(str(number))
    assert f"Lineage: {' ← '.join(line)}, {records[number]['operator']}." in report

    # 3. The plots: relative links to PNG files that exist and read back as images.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert links == ["report/goal_metric.png", "report/tree.png", "report/best_run_curves.png"]
    for link in links:
        path = experiment / link
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.width > 100 and image.height > 100
    with Image.open(experiment / "report" / "tree.png") as image:  # the tree names every run, how it came about and how it ended
        image.load()
        named = image.text["Description"].splitlines()
    origins = {n: r["operator"] if r["parent"] is None else f"{r['operator']} ← {r['parent']}" for n, r in records.items()}
    assert [line.split(", accuracy=")[0] for line in named] == [f"{n}: {origins[n]}, {records[n]['status']}" for n in (1, 2, 3, 4)]
    assert named[1] == f"2: {origins[2]}, ok, accuracy=0.8765432109876543, best"

    # 4. Tokens by stage and model, and the findings with what each run changed.
    usage = {row["Stage"]: row for row in table_rows(report, "Stage")}
    assert set(usage) == {"initialize", "codegen", "analyze", "report", "**total**"}
    assert usage["codegen"]["Calls"] == "4" and usage["codegen"]["Model"] == "anthropic/claude-sonnet-4.6"
    assert usage["analyze"]["Model"] == "openai/gpt-4o-mini" and usage["**total**"]["Calls"] == "10"
    assert "Changed: changed the model for run 2" in (experiment / "KEY_FINDINGS.md").read_text()

    # 5. The reproduce section points at run 2's train.py, and its command gives run 2's metrics again.
    assert "[run_2/train.py](run_2/train.py)" in report and (experiment / "run_2" / "train.py").read_text() == CODES[1]
    command = re.search(r"```bash\n(.*)\n```", report).group(1)
    assert command == f"cd run_2 && DATA_DIR=../data {shlex.quote(sys.executable)} train.py"  # the interpreter the runs used
    again = tmp_path / "again"
    shutil.copytree(experiment, again, ignore=shutil.ignore_patterns(".runner"))
    (again / "run_2" / "metrics.json").unlink()
    subprocess.run(command, shell=True, cwd=again, check=True, capture_output=True, timeout=60)
    assert json.loads((again / "run_2" / "metrics.json").read_text()) == best
