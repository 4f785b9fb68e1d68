"""Show an experiment's tasks and runs from its files; it only reads, so it works while the runner is busy."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapters.files import ExperimentFiles
from adapters.logs import format_metrics, read_metrics_file

STATUS_STYLE = {"todo": "white", "in_progress": "yellow", "done": "green", "dropped": "dim"}


def tasks_table(tasks: list[dict]) -> Table:
    table = Table(title="Tasks", show_lines=False)
    for column in ("#", "Status", "Title", "Notes", "Runs"):
        table.add_column(column, overflow="fold")
    for task in tasks:
        style = STATUS_STYLE.get(task.get("status", ""), "white")
        runs = ", ".join(map(str, task.get("runs", [])))
        table.add_row(str(task.get("id", "")), Text(task.get("status", ""), style=style), Text(task.get("title", "")), Text(task.get("notes", "")), runs)
    return table


def runs_table(files: ExperimentFiles) -> Table:
    table = Table(title="Runs")
    for column in ("Run", "Log", "Metrics"):
        table.add_column(column, overflow="fold")
    for number in files.existing_runs():
        run_dir = files.run_dir(number)
        log = run_dir / "output.log"
        size = f"{log.stat().st_size / 1024:.1f} KiB" if log.exists() else "not run yet"
        metrics = read_metrics_file(run_dir / "metrics.json")
        table.add_row(str(number), size, format_metrics(metrics) if metrics else "-")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show the tasks and runs of an experiment.")
    parser.add_argument("-d", "--experiment-dir", default=".", help="experiment folder (default: current directory)")
    args = parser.parse_args(argv)
    files = ExperimentFiles(args.experiment_dir)
    console = Console()
    if not files.tasks.is_file():
        print(f"error: no tasks.json in {files.root}: has the experiment started?", file=sys.stderr)
        return 2
    try:
        tasks = json.loads(files.tasks.read_text(encoding="utf-8"))["tasks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: cannot read {files.tasks}: {exc}", file=sys.stderr)
        return 2
    console.print(tasks_table(tasks))
    console.print(runs_table(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
