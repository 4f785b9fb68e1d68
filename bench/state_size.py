"""State size: what the checkpoint database holds as an experiment grows, and which state channels take the room."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from figures import Figure, bytes_text, growth_ratio

GROWTH_BOUND = 2.0
"""The latest checkpoint at the last run may be at most this many times the one at run 10."""


def measure_checkpoints(experiment: Path) -> dict:
    """Sizes in the experiment's checkpoint database now: the file, its checkpoints, the latest one, and the state's channels as JSON."""
    from adapters.files import ExperimentFiles  # the project is importable once workload has put it on sys.path
    from runner import read_state

    files = ExperimentFiles(experiment)
    path = files.checkpoints
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        latest, metadata = connection.execute(
            "select length(checkpoint), length(metadata) from checkpoints where checkpoint_ns = '' order by rowid desc limit 1"
        ).fetchone()
        count, total = connection.execute("select count(*), sum(length(checkpoint)) from checkpoints").fetchone()
        writes, writes_bytes = connection.execute("select count(*), coalesce(sum(length(value)), 0) from writes").fetchone()
    finally:
        connection.close()
    values = read_state(files).values  # as `python main.py status` reads it
    channels = {key: len(json.dumps(value, ensure_ascii=False, default=str)) for key, value in values.items()}
    return {
        "file_bytes": path.stat().st_size,
        "latest_checkpoint_bytes": latest,
        "latest_metadata_bytes": metadata,
        "checkpoints": count,
        "checkpoints_bytes": total,
        "writes": writes,
        "writes_bytes": writes_bytes,
        "runs": len(values.get("runs", [])),
        "channel_json_bytes": dict(sorted(channels.items(), key=lambda item: -item[1])),
        "per_run_json_bytes": _per_run(values),
    }


def _per_run(values: dict) -> dict:
    """What one run adds to the growing channels, on average: its record, and the LLM usage entries (a few, summed per stage and model)."""
    runs = values.get("runs", [])
    if not runs:
        return {}

    def average(items: list) -> int:
        return round(sum(len(json.dumps(item, ensure_ascii=False)) for item in items) / len(runs))

    return {"run_record": average(runs), "usage": average(values.get("usage", []))}


def figures(early: dict, late: dict) -> list[Figure]:
    """The file and the latest checkpoint at the early and the late measurement, and the bound on the checkpoint's growth."""
    bench = "state size"
    a, b = early["runs"], late["runs"]
    top = ", ".join(f"{key} {size / 2**10:,.0f} KiB" for key, size in list(late["channel_json_bytes"].items())[:4])
    return [
        Figure(bench, f"checkpoints.sqlite at run {a}", early["file_bytes"], "bytes"),
        Figure(
            bench,
            f"checkpoints.sqlite at run {b}",
            late["file_bytes"],
            "bytes",
            shown=f"{late['file_bytes'] / 2**20:,.1f} MiB ({late['checkpoints']} checkpoints)",
        ),
        Figure(bench, f"latest checkpoint at run {a}", early["latest_checkpoint_bytes"], "bytes"),
        Figure(
            bench,
            f"latest checkpoint at run {b}",
            late["latest_checkpoint_bytes"],
            "bytes",
            shown=f"{bytes_text(late['latest_checkpoint_bytes'])} (largest channels: {top})",
        ),
        growth_ratio(bench, f"latest checkpoint, run {b} / run {a}", late["latest_checkpoint_bytes"], early["latest_checkpoint_bytes"], GROWTH_BOUND),
    ]
