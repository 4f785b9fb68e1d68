"""Experiment tracking end to end: main.py logs each run to MLflow, and MLflow's runs match the experiment's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from scripted import GOOD_TRAIN, ScriptedBrain, run_main, runner_env

import runner
from settings import UsageError

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # inside mlflow's SQL store

MODELS = {"code_model": "anthropic/claude-sonnet-4.6", "summarize_model": "openai/gpt-4o-mini", "report_model": "anthropic/claude-sonnet-4.6"}
"""The default models: runner_env drops every *_MODEL variable."""


def metric_train(accuracy: float) -> str:
    return GOOD_TRAIN.replace('"accuracy": 0.85', f'"accuracy": {accuracy}')


def two_runs(experiment: Path, llm_server, args: tuple[str, ...] = (), **env: str):
    """main.py for two runs of different metrics, goal not met; MLflow settings only from `env`."""
    server = llm_server(ScriptedBrain(codes=[metric_train(0.5), metric_train(0.7)]))
    environment = {k: v for k, v in runner_env(server.base_url).items() if not k.startswith("MLFLOW_TRACKING")} | env
    result = run_main(["-d", str(experiment), "-r", "2", *args], environment)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def assert_mlflow_matches(tracking_uri: str, experiment: Path, tmp_path: Path):
    """One MLflow experiment named after the folder, one MLflow run per run_N, with its metrics, params and files."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    assert [e.name for e in client.search_experiments() if e.name != "Default"] == [experiment.name]
    runs = client.search_runs([client.get_experiment_by_name(experiment.name).experiment_id])
    by_number = {int(run.data.tags["runner.run_number"]): run for run in runs}
    assert sorted(by_number) == [1, 2] and len(runs) == 2
    for number, run in by_number.items():
        run_dir = experiment / f"run_{number}"
        result = json.loads((run_dir / "result.json").read_text())
        assert run.data.metrics == json.loads((run_dir / "metrics.json").read_text()) == result["metrics"]
        assert run.data.params["run_number"] == str(number) and run.data.params["status"] == result["status"] == "ok"
        assert {name: run.data.params[name] for name in MODELS} == MODELS
        assert run.info.status == "FINISHED" and run.info.run_name == f"run_{number}"
        downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / f"artifacts_{number}")))
        for name in ("train.py", "output.log"):
            assert (downloaded / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert by_number[1].data.metrics["accuracy"] == 0.5 and by_number[2].data.metrics["accuracy"] == 0.7


@pytest.fixture
def needs_mlflow():
    """Skip where mlflow is not installed (CI installs it with the dev extra)."""
    pytest.importorskip("mlflow")


def test_each_run_is_logged_to_the_tracking_uri(experiment: Path, llm_server, tmp_path: Path, needs_mlflow):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    result = two_runs(experiment, llm_server, MLFLOW_TRACKING_URI=tracking_uri)

    assert_mlflow_matches(tracking_uri, experiment, tmp_path)
    assert "! " not in result.stdout and "mlflow" not in result.stderr.lower()  # no warning, no MLflow chatter on the terminal
    assert (experiment / ".runner" / "mlflow-artifacts").is_dir()  # not ./mlruns of whatever the cwd was


def test_the_mlflow_flag_keeps_the_store_in_the_experiment(experiment: Path, llm_server, tmp_path: Path, needs_mlflow):
    two_runs(experiment, llm_server, ("--mlflow",))

    assert (experiment / ".runner" / "mlflow.db").is_file()
    assert_mlflow_matches(f"sqlite:///{experiment / '.runner' / 'mlflow.db'}", experiment, tmp_path)


def test_an_unreachable_tracking_server_only_warns(experiment: Path, llm_server, needs_mlflow):
    offline = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}

    result = two_runs(experiment, llm_server, **offline)

    assert "Stopped: max_runs" in result.stdout and (experiment / "REPORT.md").is_file()
    for number in (1, 2):
        assert f"! run {number} was not logged to MLflow at http://127.0.0.1:1: " in result.stdout
        assert json.loads((experiment / f"run_{number}" / "result.json").read_text())["status"] == "ok"


def test_tracking_without_mlflow_installed_is_refused_before_anything_starts(experiment: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what find_spec reports for a package that is not installed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")

    with pytest.raises(UsageError, match=r"^MLFLOW_TRACKING_URI is set but mlflow is not installed: pip install -e '\.\[mlflow\]'$"):
        runner.load_settings(experiment, {})
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(UsageError, match="--mlflow is given but mlflow is not installed"):
        runner.load_settings(experiment, {}, mlflow=True)


def test_the_mlflow_flag_uses_the_tracking_uri_when_one_is_set(experiment: Path, monkeypatch, needs_mlflow):
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert runner.load_settings(experiment, {}).mlflow_tracking_uri == ""
    assert runner.load_settings(experiment, {}, mlflow=True).mlflow_tracking_uri == f"sqlite:///{experiment.resolve()}/.runner/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert runner.load_settings(experiment, {}, mlflow=True).mlflow_tracking_uri == "http://mlflow.example:5000"
