"""Tests for adapters/files.py: the experiment folder's layout, atomic writes and IDEA.md's errors."""

from __future__ import annotations

import json
import os
import stat

import pytest

from adapters import files
from adapters.files import ExperimentFiles, ExperimentInputError, write_atomic


@pytest.fixture
def experiment_files(tmp_path):
    """An empty experiment folder: no IDEA.md, no runs."""
    root = tmp_path / "exp"
    root.mkdir()
    return ExperimentFiles(root)


# --- write_atomic ---


def test_write_atomic_creates_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "PLAN.md"
    write_atomic(path, "plan ✓\n")
    assert path.read_text(encoding="utf-8") == "plan ✓\n"


def test_write_atomic_replaces_content_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "tasks.json"
    write_atomic(path, "a much longer first version\n" * 100)
    write_atomic(path, "short\n")
    assert path.read_text() == "short\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tasks.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "REPORT.md"
    write_atomic(path, "old\n")

    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "half written \ud800")  # a lone surrogate cannot be encoded
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["REPORT.md"]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["REPORT.md"]


def test_write_atomic_file_mode_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "REPORT.md", "report\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "REPORT.md").stat().st_mode) == 0o644


# --- read_idea ---


def test_read_idea_returns_the_text(experiment_files):
    experiment_files.idea.write_text("# Idea\nTrain a tiny MLP on XOR.\n", encoding="utf-8")
    assert experiment_files.read_idea() == "# Idea\nTrain a tiny MLP on XOR.\n"


def test_read_idea_without_the_folder(tmp_path):
    with pytest.raises(ExperimentInputError, match="does not exist"):
        ExperimentFiles(tmp_path / "missing").read_idea()


def test_read_idea_without_idea_md(experiment_files):
    with pytest.raises(ExperimentInputError, match="IDEA.md not found"):
        experiment_files.read_idea()


def test_read_idea_when_idea_md_is_a_folder(experiment_files):
    experiment_files.idea.mkdir()
    with pytest.raises(ExperimentInputError, match="IDEA.md"):
        experiment_files.read_idea()


@pytest.mark.parametrize("text", ["", "   \n\t\n"])
def test_read_idea_empty(experiment_files, text):
    experiment_files.idea.write_text(text)
    with pytest.raises(ExperimentInputError, match="is empty"):
        experiment_files.read_idea()


def test_read_idea_not_utf8(experiment_files):
    experiment_files.idea.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(ExperimentInputError, match="cannot read"):
        experiment_files.read_idea()


def test_experiment_input_error_is_a_value_error():
    assert issubclass(ExperimentInputError, ValueError)


# --- layout and runs ---


def test_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layout = ExperimentFiles("exp")
    root = tmp_path.resolve() / "exp"
    assert layout.root == root
    assert layout.idea == root / "IDEA.md"
    assert layout.tasks == root / "tasks.json"
    assert layout.checkpoints == root / ".runner" / "checkpoints.sqlite"
    assert layout.run_dir(7) == root / "run_7"


def test_existing_runs_sorted_numerically(experiment_files):
    for name in ["run_10", "run_2", "run_1", "run_x", "run_", "run_3_old", "xrun_4", "RUN_5"]:
        (experiment_files.root / name).mkdir()
    (experiment_files.root / "run_6").write_text("a file, not a run")
    assert experiment_files.existing_runs() == [1, 2, 10]


def test_existing_runs_without_the_folder(tmp_path):
    assert ExperimentFiles(tmp_path / "missing").existing_runs() == []


def test_tasks_round_trip(experiment_files):
    tasks = [{"id": 1, "title": "baseline", "status": "todo", "notes": "", "runs": []}]
    experiment_files.write_tasks(tasks)
    assert experiment_files.read_tasks() == tasks
    assert experiment_files.tasks.read_text().endswith("\n")


def test_markdown_files_end_with_one_newline(experiment_files):
    experiment_files.write_plan("# Plan\n\n\n")
    experiment_files.write_report("# Report")
    assert experiment_files.plan.read_text() == "# Plan\n"
    assert experiment_files.report.read_text() == "# Report\n"


def test_findings_are_rewritten_from_every_section(experiment_files):
    experiment_files.write_findings([])
    assert experiment_files.findings.read_text() == "# Key findings\n\n_No runs analysed yet._\n"
    experiment_files.write_findings(["## Run 1\nloss fell\n", "\n## Run 2\nacc rose"])
    assert experiment_files.findings.read_text() == "# Key findings\n\n## Run 1\nloss fell\n\n## Run 2\nacc rose\n"


def test_key_findings_are_read_back_section_by_section(tmp_path):
    folder = ExperimentFiles(tmp_path)
    assert folder.read_findings() == []
    folder.write_findings([])
    assert folder.read_findings() == []
    sections = ["## Run 1 (ok)\n\nChanged: x\n\nIt ran.\n\n- a finding", "## Run 2 (failed)\n\nIt crashed."]
    folder.write_findings(sections)
    assert folder.read_findings() == sections


# --- run records and the files read once ---


def _result(number: int, status: str = "ok", **extra) -> dict:
    return {"number": number, "status": status, "exit_code": 0, "duration_s": 1.0, "metrics": {"acc": number / 10}, "error": "", **extra}


def test_read_runs_reads_each_record_once_and_forgets_runs_past_the_count(experiment_files):
    for number in (1, 2, 3):
        experiment_files.write_result(_result(number, operator="draft" if number == 1 else "improve", parent=None if number == 1 else 1))
    first = experiment_files.read_runs(3)
    assert [(run["number"], run["operator"], run["parent"]) for run in first] == [(1, "draft", None), (2, "improve", 1), (3, "improve", 1)]
    # A record the state counts is final: not read again (a changed file goes unnoticed while counted)...
    write_atomic(experiment_files.run_dir(2) / "result.json", json.dumps(_result(2, "failed", operator="improve", parent=1)))
    assert experiment_files.read_runs(3)[1]["status"] == "ok"
    # ...but a run the state no longer counts (a resume or a fork runs it again) is read afresh.
    assert [run["number"] for run in experiment_files.read_runs(1)] == [1]
    assert experiment_files.read_runs(3)[1]["status"] == "failed"
    assert experiment_files.read_runs(3) is not experiment_files.read_runs(3)  # callers get their own list


def test_read_runs_gives_records_from_before_the_tree_the_linear_parents(experiment_files):
    for number, status in ((1, "ok"), (2, "failed"), (3, "ok")):
        experiment_files.write_result({**_result(number, status), "operator": "x", "parent": 0})
        raw = experiment_files.run_dir(number) / "result.json"
        record = json.loads(raw.read_text())
        del record["operator"], record["parent"]
        raw.write_text(json.dumps(record))
    runs = experiment_files.read_runs(3)
    assert [(run["operator"], run["parent"]) for run in runs] == [("draft", None), ("improve", 1), ("debug", 2)]


def test_read_runs_names_a_missing_record(experiment_files):
    with pytest.raises(ExperimentInputError, match=r"run_1/result.json cannot be read"):
        experiment_files.read_runs(1)


def test_findings_and_tasks_are_read_again_only_when_someone_else_changed_them(experiment_files, monkeypatch):
    experiment_files.write_findings(["## Run 1 (ok, draft)\n\nFirst."])
    experiment_files.write_tasks([{"id": 1, "title": "t", "status": "todo", "notes": "", "runs": []}])
    reads = []
    real_read = type(experiment_files.findings).read_text
    monkeypatch.setattr(type(experiment_files.findings), "read_text", lambda self, *a, **k: reads.append(self.name) or real_read(self, *a, **k))
    assert experiment_files.read_findings() == ["## Run 1 (ok, draft)\n\nFirst."] and experiment_files.read_tasks()[0]["title"] == "t"
    assert reads == []  # what this process wrote is known
    write_atomic(experiment_files.findings, "# Key findings\n\n## Run 1 (ok, draft)\n\nEdited by hand.\n")
    assert experiment_files.read_findings() == ["## Run 1 (ok, draft)\n\nEdited by hand."] and reads == ["KEY_FINDINGS.md"]
    tasks = experiment_files.read_tasks()
    tasks[0]["title"] = "changed by a caller"
    assert experiment_files.read_tasks()[0]["title"] == "t"  # a caller's change does not reach the next reader


def test_a_run_written_again_or_moved_aside_is_read_afresh(experiment_files):
    for number in (1, 2):
        experiment_files.write_result(_result(number, operator="draft", parent=None))
    assert [run["status"] for run in experiment_files.read_runs(2)] == ["ok", "ok"]
    experiment_files.write_result(_result(2, "failed", operator="draft", parent=None))  # a fork from an earlier checkpoint runs it again
    assert [run["status"] for run in experiment_files.read_runs(2)] == ["ok", "failed"]
    experiment_files.write_findings(["## Run 1 (ok, draft)\n\nOld."])
    experiment_files.move_aside()  # --fresh: a new experiment at the same path
    experiment_files.write_result(_result(1, "timeout", operator="draft", parent=None))
    assert [run["status"] for run in experiment_files.read_runs(1)] == ["timeout"] and experiment_files.read_findings() == []
