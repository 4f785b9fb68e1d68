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
