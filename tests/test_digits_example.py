"""A real experiment: examples/digits with a real scikit-learn train.py, sandboxed where bubblewrap works, stopping on its goal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from scripted import REPO, ScriptedBrain, read_tasks, run_main, runner_env

pytest.importorskip("sklearn", reason="the dev extra installs scikit-learn")

SVC_TRAIN = """\
import json, time
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
start = time.time()
model = SVC(gamma=0.001).fit(X_train, y_train)
accuracy = model.score(X_test, y_test)
print(f"test_accuracy={accuracy:.4f}")
json.dump({"test_accuracy": accuracy, "train_seconds": time.time() - start}, open("metrics.json", "w"))
"""

WEAK_TRAIN = SVC_TRAIN.replace("SVC(gamma=0.001)", "SVC(gamma=1.0)")  # overfits badly: far below the goal


def test_the_digits_example_meets_its_goal_on_the_second_run(tmp_path: Path, llm_server):
    experiment = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", experiment)
    server = llm_server(ScriptedBrain(codes=[WEAK_TRAIN, SVC_TRAIN]))

    result = run_main(["-d", str(experiment), "-r", "4"], runner_env(server.base_url))

    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in experiment.glob("run_*")) == ["run_1", "run_2"]
    assert "Stopped: goal_met" in result.stdout and "test_accuracy >= 0.98" in result.stdout
    assert "**Goal** (from IDEA.md): `test_accuracy >= 0.98`" in (experiment / "PLAN.md").read_text()
    assert float((experiment / "run_2" / "output.log").read_text().split("=")[1]) >= 0.98
    assert read_tasks(experiment)[0]["runs"] == [1, 2]


# Reads the example's CSVs from DATA_DIR, chooses on a validation split, and writes the submission the grader scores.
GRADED_SVC_TRAIN = """\
import csv, json, os
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

def read(name):
    with open(os.path.join(os.environ["DATA_DIR"], name)) as stream:
        rows = list(csv.reader(stream))
    return rows[0], rows[1:]

header, train = read("train.csv")
X = [[float(v) for v in row[1:-1]] for row in train]
y = [row[-1] for row in train]
X_fit, X_val, y_fit, y_val = train_test_split(X, y, test_size=0.2, random_state=0)
val_accuracy = SVC(gamma=0.001).fit(X_fit, y_fit).score(X_val, y_val)
model = SVC(gamma=0.001).fit(X, y)
_, test = read("test.csv")
with open("submission.csv", "w") as out:
    out.write("id,label\\n" + "".join(f"{row[0]},{label}\\n" for row, label in zip(test, model.predict([[float(v) for v in row[1:]] for row in test]))))
print(f"val_accuracy={val_accuracy:.4f}")
json.dump({"val_accuracy": val_accuracy}, open("metrics.json", "w"))
"""


def test_the_graded_digits_example_meets_its_goal_by_its_grade(tmp_path: Path, llm_server):
    import json
    import subprocess
    import sys

    from adapters.sandbox import bwrap_problem

    experiment = tmp_path / "digits-graded"
    shutil.copytree(REPO / "examples" / "digits-graded", experiment)
    prepared = subprocess.run([sys.executable, "prepare.py"], cwd=experiment, capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    assert (experiment / "private" / "test_labels.csv").is_file() and "label" not in (experiment / "data" / "test.csv").read_text().splitlines()[0]
    server = llm_server(ScriptedBrain(codes=[SVC_TRAIN, GRADED_SVC_TRAIN]))  # run 1 writes no submission: grade.py rejects it
    sandbox = [] if bwrap_problem() is None else ["--sandbox", "none"]

    result = run_main(["-d", str(experiment), "-r", "4", *sandbox], runner_env(server.base_url))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stopped: goal_met" in result.stdout and "run 2 met the goal" in result.stdout
    first = json.loads((experiment / "run_1" / "result.json").read_text())
    assert first["status"] == "failed" and first["error"].startswith("grade.py rejected the submission: no submission")
    assert first["reported"]["test_accuracy"] >= 0.98
    second = json.loads((experiment / "run_2" / "result.json").read_text())
    assert second["metrics"]["test_accuracy"] >= 0.97 and set(second["metrics"]) == {"test_accuracy"}
    assert second["reported"]["val_accuracy"] > 0.9
