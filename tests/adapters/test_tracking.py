"""tracking: runs logged to a real MLflow store (SQLite in a scratch folder), read back with MLflow's own client."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from fakes import make_run

from adapters import tracking
from adapters.tracking import TrackingError, local_store_uri, log_run, metric_history

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # inside mlflow's SQL store

LOG = "epoch=1 loss=1.000 accuracy=0.750\nepoch=2 loss=0.500 accuracy=0.800\nepoch=3 loss=0.333 accuracy=0.850\ndone\n"
PARAMS = {"run_number": 1, "code_model": "anthropic/claude-sonnet-4.6", "summarize_model": "openai/gpt-4o-mini", "status": "ok"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite tracking store for the module: creating its tables takes seconds. Each test uses its own folder name."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def client_for(store: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store)


def run_folder(parent: Path, name: str, number: int = 1, log: str = LOG) -> tuple[Path, Path, Path]:
    """An experiment folder `name` with run_N/train.py and output.log; returns the folder and the two files."""
    run_dir = parent / name / f"run_{number}"
    run_dir.mkdir(parents=True)
    (run_dir / "train.py").write_text(f"print('run {number}')\n")
    (run_dir / "output.log").write_text(log)
    return run_dir.parent, run_dir / "train.py", run_dir / "output.log"


def mlflow_runs(store: str, name: str) -> list:
    client = client_for(store)
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


def test_a_run_is_logged_with_its_metrics_params_tags_and_artifacts(store: str, tmp_path: Path):
    root, script, log = run_folder(tmp_path, "digits-logged")
    record = make_run(1, metrics={"accuracy": 0.85, "loss": 0.33})

    run_id = log_run(store, root, record, params=PARAMS, artifacts=[script, log], log_path=log, description="Run 1: ok (exit 0)")

    [run] = mlflow_runs(store, "digits-logged")
    assert run.info.run_id == run_id and run.info.run_name == "run_1" and run.info.status == "FINISHED"
    assert run.info.end_time - run.info.start_time == 1500  # the run's own duration, 1.5 s
    assert run.data.metrics == {"accuracy": 0.85, "loss": 0.33}  # metrics.json's values win over the log's last ones
    assert run.data.params == {name: str(value) for name, value in PARAMS.items()}
    tags = run.data.tags
    assert tags["runner.run_number"] == "1" and tags["runner.experiment_dir"] == str(root)
    assert tags["status"] == "ok" and tags["exit_code"] == "0" and "error" not in tags
    assert tags["mlflow.note.content"] == "Run 1: ok (exit 0)"
    history = client_for(store).get_metric_history(run_id, "accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))] == [(1, 0.75), (2, 0.8), (3, 0.85), (3, 0.85)]
    assert run.info.artifact_uri == (root / ".runner" / "mlflow-artifacts").as_uri() + f"/{run_id}/artifacts"
    downloaded = Path(client_for(store).download_artifacts(run_id, "", str(tmp_path / "downloaded")))
    assert sorted(p.name for p in downloaded.iterdir()) == ["output.log", "train.py"]
    assert (downloaded / "train.py").read_text() == script.read_text() and (downloaded / "output.log").read_text() == LOG


def test_a_failed_run_is_failed_in_mlflow_with_its_error(store: str, tmp_path: Path):
    root, script, log = run_folder(tmp_path, "digits-failed", log="loading\nValueError: the data is missing\n")
    record = make_run(1, status="failed", error="ValueError: the data is missing")

    log_run(store, root, record, params=PARAMS, artifacts=[script, log], log_path=log)

    [run] = mlflow_runs(store, "digits-failed")
    assert run.info.status == "FAILED" and run.data.metrics == {}
    assert run.data.tags["error"] == "ValueError: the data is missing" and run.data.tags["exit_code"] == "1"


def test_a_graded_run_logs_its_grade_and_its_self_report_apart_with_its_flags(store: str, tmp_path: Path):
    root, script, log = run_folder(tmp_path, "digits-graded")
    flags = ["self-reported accuracy 0.99, graded 0.71", "a link out of its folder was removed before grading: labels.csv"]
    record = {**make_run(1, metrics={"accuracy": 0.71}), "reported": {"accuracy": 0.99, "loss": 0.33}, "flags": flags}

    run_id = log_run(store, root, record, params=PARAMS, artifacts=[script], log_path=log)

    [run] = mlflow_runs(store, "digits-graded")
    assert run.data.metrics == {"accuracy": 0.71, "self_reported.accuracy": 0.99, "self_reported.loss": 0.33}
    assert run.data.tags["flags"] == "\n".join(flags)
    history = client_for(store).get_metric_history(run_id, "self_reported.accuracy")  # the log is the script's word too
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))] == [(1, 0.75), (2, 0.8), (3, 0.85), (3, 0.99)]
    assert [m.value for m in client_for(store).get_metric_history(run_id, "accuracy")] == [0.71]


def test_a_run_logged_again_replaces_the_earlier_one(store: str, tmp_path: Path):
    root, script, log = run_folder(tmp_path, "digits-again")
    log_run(store, root, make_run(1, metrics={"accuracy": 0.5}), params=PARAMS, artifacts=[script], log_path=log)
    log_run(store, root, make_run(2, metrics={"accuracy": 0.6}), params=PARAMS, artifacts=[script], log_path=log)

    again = log_run(store, root, make_run(1, metrics={"accuracy": 0.7}), params=PARAMS, artifacts=[script], log_path=log)  # executed again after a resume

    runs = {run.data.tags["runner.run_number"]: run for run in mlflow_runs(store, "digits-again")}
    assert sorted(runs) == ["1", "2"]
    assert runs["1"].info.run_id == again and runs["1"].data.metrics == {"accuracy": 0.7}


def test_a_folder_of_the_same_name_elsewhere_gets_its_own_experiment_and_artifacts(store: str, tmp_path: Path):
    first, script, _ = run_folder(tmp_path / "a", "digits-twice")
    second, other_script, _ = run_folder(tmp_path / "b", "digits-twice")
    log_run(store, first, make_run(1, metrics={"accuracy": 0.5}), params=PARAMS, artifacts=[script])

    second_id = log_run(store, second, make_run(1, metrics={"accuracy": 0.9}), params=PARAMS, artifacts=[other_script])

    [mine] = mlflow_runs(store, "digits-twice")
    assert mine.data.tags["runner.experiment_dir"] == str(first)
    client = client_for(store)
    other = client.get_experiment(client.get_run(second_id).info.experiment_id)
    assert other.name.startswith("digits-twice-") and other.tags["runner.experiment_dir"] == str(second)
    assert client.get_run(second_id).info.artifact_uri.startswith((second / ".runner" / "mlflow-artifacts").as_uri())


def test_metric_names_mlflow_refuses_are_made_acceptable(store: str, tmp_path: Path):
    root, script, _ = run_folder(tmp_path, "digits-names")
    odd = {"top@1 (%)": 0.9, "x" * 300: 1.0, "val/accuracy": 0.8}

    log_run(store, root, make_run(1, metrics=odd), params={**PARAMS, "note": "n" * 10_000}, artifacts=[script])

    [run] = mlflow_runs(store, "digits-names")
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"top_1 ___": 0.9, "x" * 250: 1.0, "val/accuracy": 0.8}
    assert len(run.data.params["note"]) == 6000


def test_telemetry_is_off_unless_the_user_says_otherwise(store: str, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    root, script, _ = run_folder(tmp_path, "digits-telemetry")
    log_run(store, root, make_run(1), params=PARAMS, artifacts=[script])
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_an_unreachable_server_raises_one_clear_line_without_the_password(tmp_path: Path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    root, script, _ = run_folder(tmp_path, "digits-offline")

    with pytest.raises(TrackingError) as caught:
        log_run("http://someone:s3cret@127.0.0.1:1", root, make_run(1), params=PARAMS, artifacts=[script])

    message = str(caught.value)
    assert message.startswith("run 1 was not logged to MLflow at http://127.0.0.1:1: ")
    assert message.endswith("(ConnectionRefusedError: [Errno 111] Connection refused)") and "s3cret" not in message
    assert "\n" not in message and len(message) < 500


def test_a_deleted_mlflow_experiment_is_named_in_the_error(store: str, tmp_path: Path):
    root, script, _ = run_folder(tmp_path, "digits-deleted")
    log_run(store, root, make_run(1), params=PARAMS, artifacts=[script])
    client = client_for(store)
    client.delete_experiment(client.get_experiment_by_name("digits-deleted").experiment_id)

    with pytest.raises(TrackingError, match=r"^run 2 was not logged to MLflow at sqlite:.*: the MLflow experiment 'digits-deleted' is deleted: restore it"):
        log_run(store, root, make_run(2), params=PARAMS, artifacts=[script])


def test_without_mlflow_the_error_says_how_to_install_it(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    root, script, _ = run_folder(tmp_path, "digits-no-mlflow")

    with pytest.raises(TrackingError, match=r"run 1 was not logged to MLflow at sqlite:///x.db: mlflow is not installed: pip install -e '\.\[mlflow\]'$"):
        log_run("sqlite:///x.db", root, make_run(1), params=PARAMS, artifacts=[script])


def test_the_local_store_is_an_absolute_sqlite_path_in_dot_runner(tmp_path: Path):
    assert local_store_uri(tmp_path / "exp") == f"sqlite:///{tmp_path}/exp/.runner/mlflow.db"
    assert local_store_uri(tmp_path / "exp").startswith("sqlite:////")


def test_history_steps_come_from_the_log_or_count_up(tmp_path: Path):
    log = tmp_path / "output.log"
    log.write_text('step=10 loss=0.9 lr=0.1\nstep=20 loss=0.8\nloss: 0.7\nval_loss=1.5\n{"epoch": 4, "loss": 0.6}\n')

    assert metric_history(log, {"loss", "val_loss"}) == [("loss", 0.9, 10), ("loss", 0.8, 20), ("loss", 0.7, 2), ("val_loss", 1.5, 0), ("loss", 0.6, 4)]
    assert metric_history(tmp_path / "missing.log", {"loss"}) == []


def test_a_chatty_log_is_thinned_evenly_keeping_every_metric(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(tracking, "MAX_HISTORY_POINTS", 20)
    log = tmp_path / "output.log"
    log.write_text("".join(f"step={i} loss={i} accuracy={i / 100}\n" for i in range(100)))

    points = metric_history(log, {"loss", "accuracy"})

    assert 10 <= len(points) <= 20
    for name in ("loss", "accuracy"):
        steps = [step for metric, _, step in points if metric == name]
        assert steps[0] == 0 and steps[-1] >= 80 and steps == sorted(steps) and len(steps) == len(points) // 2
