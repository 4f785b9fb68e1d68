"""State size: what the checkpoint database holds as an experiment grows, and which state channels take the room."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from figures import Figure, bytes_text, growth_ratio

GROWTH_BOUND = 2.0
"""The latest checkpoint at the last run may be at most this many times the one at run 10."""
FILE_BOUND_MIB = 64
"""The checkpoint database at PROJECTED_AT runs must stay under this many MiB."""
PROJECTED_AT = 1000
"""The run count the file's bound is for: measured when the experiment gets there, else projected to it."""


def measure_checkpoints(experiment: Path) -> dict:
    """Sizes in the experiment's checkpoint database now: the file, the checkpoints it keeps, the latest one, and the state's channels as JSON."""
    from adapters.files import ExperimentFiles  # the project is importable once workload has put it on sys.path
    from runner import read_state

    files = ExperimentFiles(experiment)
    path = files.checkpoints
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        latest, metadata = connection.execute(
            "select length(checkpoint), length(metadata) from checkpoints where checkpoint_ns = '' order by checkpoint_id desc limit 1"
        ).fetchone()
        count, total = connection.execute("select count(*), sum(length(checkpoint)) from checkpoints").fetchone()
        writes, writes_bytes = connection.execute("select count(*), coalesce(sum(length(value)), 0) from writes").fetchone()
        free_pages, page_size = connection.execute("pragma freelist_count").fetchone()[0], connection.execute("pragma page_size").fetchone()[0]
    finally:
        connection.close()
    values = read_state(files).values  # as `python main.py status` reads it
    channels = {key: len(json.dumps(value, ensure_ascii=False, default=str)) for key, value in values.items()}
    wal = path.with_name(path.name + "-wal")
    return {
        "file_bytes": path.stat().st_size + (wal.stat().st_size if wal.exists() else 0),  # a log not yet merged counts too
        "free_bytes": free_pages * page_size,
        "latest_checkpoint_bytes": latest,
        "latest_metadata_bytes": metadata,
        "checkpoints": count,
        "checkpoints_bytes": total,
        "writes": writes,
        "writes_bytes": writes_bytes,
        "runs": values.get("run_count", 0),
        "channel_json_bytes": dict(sorted(channels.items(), key=lambda item: -item[1])),
    }


def projected_file_bytes(early: dict, late: dict, at_runs: int = PROJECTED_AT) -> int:
    """The database's size at `at_runs` runs: measured, when the experiment got that far; else the late size plus the
    growth per run between the two measurements for every run to come.

    Straight-line, which is honest here: pruned, the file holds a fixed number of checkpoints, so it grows faster than
    a line only if the checkpoints themselves grow, which GROWTH_BOUND catches; unpruned, it grows a checkpoint a step.
    """
    if late["runs"] >= at_runs:
        return late["file_bytes"]
    per_run = max(0.0, (late["file_bytes"] - early["file_bytes"]) / (late["runs"] - early["runs"]))
    return round(late["file_bytes"] + per_run * (at_runs - late["runs"]))


def figures(early: dict, late: dict) -> list[Figure]:
    """The file and the latest checkpoint at the early and the late measurement, the bound on the checkpoint's growth, and
    the bound on the file at PROJECTED_AT runs: on the late measurement when it got that far, else on a projection."""
    bench = "state size"
    a, b = early["runs"], late["runs"]
    top = ", ".join(f"{key} {size / 2**10:,.1f} KiB" for key, size in list(late["channel_json_bytes"].items())[:4])
    projected = projected_file_bytes(early, late)
    file_bound = {"bound": f"< {FILE_BOUND_MIB} MiB", "passed": projected < FILE_BOUND_MIB * 2**20}
    files = [Figure(bench, f"checkpoints.sqlite at run {a}", early["file_bytes"], "bytes", shown=_mib(early))]
    if b >= PROJECTED_AT:
        files.append(Figure(bench, f"checkpoints.sqlite at run {b}", late["file_bytes"], "bytes", shown=_mib(late), **file_bound))
    else:
        per_run = (late["file_bytes"] - early["file_bytes"]) / (b - a)
        files += [
            Figure(bench, f"checkpoints.sqlite at run {b}", late["file_bytes"], "bytes", shown=_mib(late)),
            Figure(
                bench,
                f"checkpoints.sqlite at run {PROJECTED_AT}, projected",
                projected,
                "bytes",
                shown=f"{projected / 2**20:,.1f} MiB ({per_run / 2**10:+,.1f} KiB a run from run {a} to {b})",
                **file_bound,
            ),
        ]
    return [
        *files,
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


def _mib(measured: dict) -> str:
    return f"{measured['file_bytes'] / 2**20:,.2f} MiB ({measured['checkpoints']:,} checkpoints)"
