"""Experiment tracking in MLflow (optional): each run logged as an MLflow run, in an MLflow experiment named after the folder.

mlflow is imported only when a run is logged, so the runner starts as fast without it (and works without it installed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import time
from collections import Counter
from pathlib import Path

from adapters.logs import log_lines, one_line, parse_metrics
from state import RunRecord

RUN_NUMBER_TAG = "runner.run_number"
"""Tag holding N of run_N/: how a run executed again after a resume finds the MLflow run it replaces."""
EXPERIMENT_DIR_TAG = "runner.experiment_dir"
"""Tag holding the experiment folder, on its MLflow experiment and on each of its runs."""
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
"""Tracking URIs of a database without a server: MLflow's default artifact root there is ./mlruns of whatever the cwd is."""
MAX_HISTORY_POINTS = 5000
"""Metric values of output.log logged as history per run; a chattier log is thinned evenly to fit."""
MAX_BATCH = 1000
"""Metrics MLflow accepts in one log_batch call."""
MAX_NAME_CHARS = 250
"""MLflow's longest metric name."""
MAX_PARAM_CHARS = 6000
"""MLflow's longest parameter value."""
MAX_TAG_CHARS = 5000
"""What is kept of a long tag (the flags): MLflow 3 takes 8000 characters, older servers 5000."""
SELF_REPORTED = "self_reported."
"""Before the names of what a run's script reported about itself in a graded experiment, beside the graded metrics."""


class TrackingError(RuntimeError):
    """Logging a run to MLflow failed; the message says why in one line. The experiment goes on without it."""


def mlflow_installed() -> bool:
    """Whether mlflow can be imported, without importing it (that takes seconds)."""
    return importlib.util.find_spec("mlflow") is not None


def local_store_uri(experiment_dir: Path) -> str:
    """The tracking URI `--mlflow` uses without MLFLOW_TRACKING_URI: a SQLite store in the experiment's .runner/."""
    return f"sqlite:///{Path(experiment_dir).resolve() / '.runner' / 'mlflow.db'}"


def log_run(
    tracking_uri: str,
    experiment_dir: Path,
    record: RunRecord,
    *,
    params: dict[str, object],
    artifacts: list[Path],
    log_path: Path | None = None,
    description: str = "",
) -> str:
    """Log one finished run as an MLflow run and return its id; an earlier MLflow run of the same run (executed again after a resume) is replaced.

    Metrics: the run's final metrics, and their history as printed in `log_path` (in a graded experiment, what the script
    reported is logged as self_reported.<name>, beside the grade). Tags: the run's number, folder, status, exit code, error
    and flags; `description` (the run's summary) as its note. Raises TrackingError when MLflow cannot be reached or refuses.
    """
    root = Path(experiment_dir).resolve()
    try:
        client, entities = _client(tracking_uri)
        experiment_id = _experiment_id(client, root, tracking_uri)
        earlier = [
            run.info.run_id
            for run in client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NUMBER_TAG}` = '{record['number']}'")
            if run.data.tags.get(EXPERIMENT_DIR_TAG) == str(root)
        ]
        end_ms = int(time.time() * 1000)
        tags = {RUN_NUMBER_TAG: str(record["number"]), EXPERIMENT_DIR_TAG: str(root), "status": record["status"], "mlflow.note.content": description}
        if record["exit_code"] is not None:
            tags["exit_code"] = str(record["exit_code"])
        if record["error"]:
            tags["error"] = record["error"]
        if record.get("flags"):
            tags["flags"] = "\n".join(record["flags"])[:MAX_TAG_CHARS]
        run = client.create_run(experiment_id, start_time=end_ms - int(record["duration_s"] * 1000), tags=tags, run_name=f"run_{record['number']}")
        run_id = run.info.run_id

        points = metric_points(entities, record, log_path, end_ms)
        try:
            client.log_batch(run_id, params=[entities.Param(name, str(value)[:MAX_PARAM_CHARS]) for name, value in params.items()])
            for start in range(0, len(points), MAX_BATCH):
                client.log_batch(run_id, metrics=points[start : start + MAX_BATCH])
            for path in artifacts:
                if path.is_file():
                    client.log_artifact(run_id, str(path))
        except Exception:
            client.set_terminated(run_id, status="FAILED", end_time=end_ms)  # not left RUNNING for ever; still raised below
            raise
        client.set_terminated(run_id, status="FINISHED" if record["status"] == "ok" else "FAILED", end_time=end_ms)

        for old in earlier:  # only once the new one is complete: a failure above leaves the old record in place
            client.delete_run(old)
        return run_id
    except Exception as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "mlflow":  # not a driver mlflow needs, such as psycopg2
            reason = "mlflow is not installed: pip install -e '.[mlflow]'"
        else:
            reason = str(exc) if isinstance(exc, TrackingError) else _without_password(_reason(exc))
        raise TrackingError(f"run {record['number']} was not logged to MLflow at {_without_password(tracking_uri)}: {reason}") from exc


def metric_points(entities, record: RunRecord, log_path: Path | None, end_ms: int) -> list:
    """The run's metrics as MLflow points: what the script reported (its final values, after their history in `log_path`),
    under self_reported.<name> in a graded experiment, where the graded metrics stand under their own names.

    History points are stamped just before the final values, so MLflow shows the final ones as the run's metrics.
    """
    graded = "reported" in record
    own, prefix = (record["reported"], SELF_REPORTED) if graded else (record["metrics"], "")
    history = metric_history(log_path, set(own)) if log_path else []
    last_step: dict[str, int] = {}
    for name, _, step in history:
        last_step[name] = max(step, last_step.get(name, 0))
    points = [entities.Metric(mlflow_key(prefix + name), value, end_ms - 1, step) for name, value, step in history]
    points += [entities.Metric(mlflow_key(prefix + name), value, end_ms, last_step.get(name, 0)) for name, value in own.items()]
    if graded:
        points += [entities.Metric(mlflow_key(name), value, end_ms, 0) for name, value in record["metrics"].items()]
    return points


def mlflow_key(name: str) -> str:
    """`name` as MLflow accepts it: letters, digits and `_-. /` only (others become `_`), at most 250 characters."""
    return re.sub(r"[^\w\-. /]", "_", name, flags=re.ASCII)[:MAX_NAME_CHARS] or "_"


def metric_history(log_path: Path, names: set[str]) -> list[tuple[str, float, int]]:
    """(name, value, step) of each value of `names` printed in the log, in order, at most MAX_HISTORY_POINTS.

    The step is the line's own `step` or `epoch` when it prints one, else how many values of that name came before.
    """
    lines: list[list[tuple[str, float, int]]] = []  # the points of each line kept: a line is kept or dropped whole
    seen: Counter[str] = Counter()
    points, stride, counted = 0, 1, 0
    for text, _ in log_lines(log_path):
        found = parse_metrics(text)
        if not (wanted := [name for name in found if name in names]):
            continue
        own_step = found.get("step", found.get("epoch"))
        line = []
        for name in wanted:
            step = int(own_step) if own_step is not None and own_step.is_integer() and 0 <= own_step < 2**63 else seen[name]
            line.append((name, found[name], step))
            seen[name] += 1
        if counted % stride == 0:
            lines.append(line)
            points += len(line)
            if points >= MAX_HISTORY_POINTS:  # keep every other line, and from now on take half as many
                lines, stride = lines[::2], stride * 2
                points = sum(map(len, lines))
        counted += 1
    return [point for line in lines for point in line]


def _client(tracking_uri: str):
    """An MlflowClient for `tracking_uri` and mlflow.entities, imported on first use with telemetry off, its INFO chatter quiet
    and a server that is down given up on within about a minute (MLflow's own default waits ~4 minutes per run),
    unless the user set those variables themselves."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from mlflow import MlflowClient, entities

    return MlflowClient(tracking_uri=tracking_uri), entities


def _experiment_id(client, root: Path, tracking_uri: str) -> str:
    """The id of the MLflow experiment named after the folder, created on first use.

    A folder of the same name elsewhere, tracked at the same URI, gets the name with its path's hash appended:
    its runs and artifacts never land in the other folder's experiment.
    """
    name = root.name
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.tags.get(EXPERIMENT_DIR_TAG, str(root)) != str(root):
        name = f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"
        experiment = client.get_experiment_by_name(name)
    if experiment is None:
        scheme = tracking_uri.partition(":")[0].partition("+")[0]  # postgresql+psycopg2://… → postgresql
        location = (root / ".runner" / "mlflow-artifacts").as_uri() if scheme in DATABASE_SCHEMES else None  # a server has its own
        try:
            return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_DIR_TAG: str(root)})
        except Exception:
            experiment = client.get_experiment_by_name(name)  # another runner created it meanwhile
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"the MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore`) or remove it for good (`mlflow gc`)")
    return experiment.experiment_id


def _reason(exc: BaseException) -> str:
    """`exc` in one bounded line, ending with the exception at the bottom of its chain (say, ConnectionRefusedError),
    which the wrappers' long messages would otherwise cut off."""
    root = exc
    for _ in range(20):  # a chain can loop
        if (inner := root.__cause__ or root.__context__) is None:
            break
        root = inner
    text = f"{type(exc).__name__}: {exc}"
    return one_line(text, 400) if root is exc else f"{one_line(text, 250)} ({one_line(f'{type(root).__name__}: {root}', 150)})"


def _without_password(text: str) -> str:
    """`text` without the user and password a URL in it may carry (https://user:pass@host, postgresql://user:pass@host/db)."""
    return re.sub(r"//[^/@\s]*@", "//", text)
