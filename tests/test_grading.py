"""A grader train.py can neither see nor fool, end to end through main.py: the graded metrics judge (goal, search), the
self-report is kept and flagged when it lies, a failing grader is recorded and, failing the same way 3 runs in a row,
stops the experiment; no LLM request ever holds private/ or grade.py."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from scripted import REPO, ScriptedBrain, run_main, runner_env

from adapters import sandbox
from adapters.audit import read_audit

BWRAP_PROBLEM = sandbox.bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap cannot run here: {BWRAP_PROBLEM}")

PRIVATE_MARKER = "answer-key-marker-5f1c9e"
GRADER_MARKER = "grader-source-marker-a7d3"

# Tries every way to the answers, writes a guess of 0 for every test image (about a tenth right), and claims 1.0.
DISHONEST_TRAIN = """\
import csv, json, os
experiment = os.path.dirname(os.environ["DATA_DIR"])
print("the experiment shows:", sorted(os.listdir(experiment)))
for path in ("../private/test_labels.csv", os.path.join(experiment, "private", "test_labels.csv"), "../grade.py"):
    try:
        open(path).read()
        print("READ", path)
    except OSError as exc:
        print("could not read", path, type(exc).__name__)
with open(os.path.join(os.environ["DATA_DIR"], "test.csv")) as stream:
    ids = [row[0] for row in csv.reader(stream)][1:]
with open("submission.csv", "w") as out:
    out.write("id,label\\n" + "".join(f"{i},0\\n" for i in ids))
print("test_accuracy: 1.0")
json.dump({"test_accuracy": 1.0}, open("metrics.json", "w"))
"""

# The grader follows links: a submission linked to the answer key would be graded perfect. The runner removes the link.
LINKING_TRAIN = """\
import json, os
experiment = os.path.dirname(os.environ["DATA_DIR"])
os.symlink(os.path.join(experiment, "private", "test_labels.csv"), "submission.csv")
print("test_accuracy=1.0")
json.dump({"test_accuracy": 1.0}, open("metrics.json", "w"))
"""


def graded_digits(tmp_path: Path) -> Path:
    """examples/digits-graded, prepared (data/ and private/ written), with a marker in private/ and in grade.py."""
    experiment = tmp_path / "digits-graded"
    shutil.copytree(REPO / "examples" / "digits-graded", experiment)
    subprocess.run([sys.executable, "prepare.py"], cwd=experiment, check=True, capture_output=True)
    (experiment / "private" / "note.txt").write_text(f"{PRIVATE_MARKER}\n")
    with open(experiment / "grade.py", "a") as grader:
        grader.write(f"# {GRADER_MARKER}\n")
    return experiment


def recording(brain: ScriptedBrain) -> tuple[ScriptedBrain, list[str]]:
    """The brain, and the raw body of every request it answers (what went over HTTP)."""
    bodies: list[str] = []

    def answer(body: dict) -> dict:
        bodies.append(json.dumps(body))
        return brain(body)

    return answer, bodies


def result(experiment: Path, number: int) -> dict:
    return json.loads((experiment / f"run_{number}" / "result.json").read_text())


@needs_bwrap
def test_a_dishonest_script_is_graded_on_what_it_wrote_and_flagged_and_no_request_holds_the_answers(tmp_path: Path, llm_server):
    pytest.importorskip("sklearn", reason="the dev extra installs scikit-learn (prepare.py uses its digits)")
    experiment = graded_digits(tmp_path)
    answer, bodies = recording(ScriptedBrain(codes=[DISHONEST_TRAIN, LINKING_TRAIN]))
    server = llm_server(answer)

    done = run_main(["-d", str(experiment), "-r", "2", "--sandbox", "bwrap"], runner_env(server.base_url))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Stopped: max_runs" in done.stdout and "goal_met" not in done.stdout
    # The sandbox showed neither grade.py nor private/: not even their names.
    log = (experiment / "run_1" / "output.log").read_text()
    shown = log.split("the experiment shows:", 1)[1].splitlines()[0]
    assert "private" not in shown and "grade.py" not in shown and "IDEA.md" in shown
    assert "READ" not in log and log.count("could not read") == 3 and "FileNotFoundError" in log
    # Graded on what it wrote (a guess of 0 everywhere), not on what it claimed.
    first = result(experiment, 1)
    assert first["status"] == "ok" and first["reported"] == {"test_accuracy": 1.0}
    assert 0.05 < first["metrics"]["test_accuracy"] < 0.2
    assert any(flag.startswith("self-reported test_accuracy 1, graded 0.1") for flag in first["flags"]), first["flags"]
    # A submission linked to the answer key is removed before grading: nothing is graded.
    second = result(experiment, 2)
    assert second["status"] == "failed" and second["metrics"] == {}  # grade.py rejected it (exit 2): the run's fault
    assert second["error"] == "grade.py rejected the submission: no submission: run_2/submission.csv is missing"
    assert [flag for flag in second["flags"] if flag.startswith("removed from its folder")] == [
        f"removed from its folder before the runner read it: submission.csv -> {experiment / 'private' / 'test_labels.csv'}"
    ]
    assert not (experiment / "run_2" / "submission.csv").exists()
    assert "no submission" in (experiment / "run_2" / "grade.log").read_text()
    # The report and the analyst see the disagreement.
    report = (experiment / "REPORT.md").read_text()
    assert "self-reported test_accuracy 1, graded 0.1" in report
    calls = read_audit(experiment / ".runner" / "llm_calls.jsonl")
    analyst = [json.dumps(call["messages"]) for call in calls if call["stage"] == "analyze"]
    assert analyst and "self-reported test_accuracy 1, graded 0.1" in analyst[0] and "Graded metrics" in analyst[0]
    # No request, as sent over HTTP or as audited, held private/ or grade.py.
    answers = (experiment / "private" / "test_labels.csv").read_text().splitlines()
    windows = ["\\n".join(answers[i : i + 3]) for i in range(1, len(answers) - 2)]  # three answer lines in a row, as JSON escapes them
    source = [line.strip() for line in (experiment / "grade.py").read_text().splitlines() if len(line.strip()) >= 30]
    audited = (experiment / ".runner" / "llm_calls.jsonl").read_text()
    assert bodies and len(calls) == len(bodies)
    for sent in [*bodies, audited]:
        assert PRIVATE_MARKER not in sent and GRADER_MARKER not in sent
        assert not [window for window in windows if window in sent]
        assert not [line for line in source if json.dumps(line)[1:-1] in sent]


LYING_TRAIN = """\
import json
json.dump({{"score": {graded}}}, open("submission.json", "w"))
json.dump({{"test_accuracy": {claimed}}}, open("metrics.json", "w"))
print("test_accuracy={claimed}")
"""

# Grades run_N/submission.json's score, and fails as run_N/failure.txt asks, if the run wrote one (the test's scripts say how).
SCORE_GRADER = """\
import json, sys, time
from pathlib import Path
run = Path(sys.argv[1])
failure = (run / "failure.txt").read_text().strip() if (run / "failure.txt").exists() else ""
if failure == "crash":
    raise RuntimeError("the grader broke on " + run.name)
if failure == "hang":
    time.sleep(60)
if failure == "prose":
    print("all good, I think")
    sys.exit(0)
print("grading", run.name)
print(json.dumps({"test_accuracy": json.loads((run / "submission.json").read_text())["score"]}))
"""


def graded_experiment(tmp_path: Path, grader: str = SCORE_GRADER) -> Path:
    experiment = tmp_path / "graded"
    experiment.mkdir()
    (experiment / "IDEA.md").write_text("# Scores\n\nWrite submission.json with the score.\n\ngoal: test_accuracy >= 0.97\n")
    (experiment / "grade.py").write_text(grader)
    (experiment / "private").mkdir()
    (experiment / "private" / "key.txt").write_text("the key\n")
    return experiment


def failing(kind: str, graded: float = 0.5) -> str:
    """A script that ends well and asks the test's grader to fail as `kind`."""
    return LYING_TRAIN.format(graded=graded, claimed=0.99) + f'open("failure.txt", "w").write("{kind}")\n'


def test_the_goal_and_the_tree_search_judge_graded_metrics_not_the_self_report(tmp_path: Path, llm_server):
    experiment = graded_experiment(tmp_path)
    codes = [
        LYING_TRAIN.format(graded=0.5, claimed=0.99),  # draft 1 claims the goal; its grade is poor
        LYING_TRAIN.format(graded=0.9, claimed=0.6),  # draft 2 under-reports; it is the better one
        LYING_TRAIN.format(graded=0.98, claimed=0.9),  # improves the best by grade: run 2; meets the goal by grade only
    ]
    server = llm_server(ScriptedBrain(codes=codes))

    done = run_main(["-d", str(experiment), "-r", "5", "--drafts", "2", "--sandbox", "none"], runner_env(server.base_url))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Stopped: goal_met" in done.stdout and "run 3 met the goal" in done.stdout
    assert "SANDBOX=none: train.py can read grade.py and private/" in done.stdout + done.stderr
    runs = [result(experiment, n) for n in (1, 2, 3)]
    assert [run["metrics"] for run in runs] == [{"test_accuracy": 0.5}, {"test_accuracy": 0.9}, {"test_accuracy": 0.98}]
    assert [run["reported"] for run in runs] == [{"test_accuracy": 0.99}, {"test_accuracy": 0.6}, {"test_accuracy": 0.9}]
    assert runs[2]["operator"] == "improve" and runs[2]["parent"] == 2  # ranked by grade: run 1's 0.99 was a claim
    assert not (experiment / "run_4").exists()  # run 1's claim never met the goal
    assert "grading run_3" in (experiment / "run_3" / "grade.log").read_text()


def test_a_grader_that_crashes_hangs_or_prints_no_json_leaves_the_run_grade_failed_and_the_experiment_goes_on(tmp_path: Path, llm_server):
    experiment = graded_experiment(tmp_path)
    codes = [failing("crash"), failing("hang"), failing("prose"), LYING_TRAIN.format(graded=0.8, claimed=0.8)]
    server = llm_server(ScriptedBrain(codes=codes))
    env = runner_env(server.base_url, GRADE_TIMEOUT_SECONDS="2")

    done = run_main(["-d", str(experiment), "-r", "4", "--sandbox", "none"], env)

    assert done.returncode == 0, done.stdout + done.stderr
    runs = [result(experiment, n) for n in (1, 2, 3, 4)]
    assert [run["status"] for run in runs] == ["grade_failed", "grade_failed", "grade_failed", "ok"]
    assert runs[0]["error"] == "grade.py failed (exit code 1): RuntimeError: the grader broke on run_1"
    assert "Traceback" in (experiment / "run_1" / "grade.log").read_text()  # the stderr tail, for the user
    assert runs[1]["error"] == "grade.py timed out after 2 s (GRADE_TIMEOUT_SECONDS)"
    assert runs[2]["error"] == "grade.py printed no JSON object of metrics as its last line of stdout"
    assert all(run["metrics"] == {} and run["reported"] == {"test_accuracy": 0.99} for run in runs[:3])
    assert runs[3]["metrics"] == {"test_accuracy": 0.8}
    assert "Stopped: max_runs" in done.stdout


def test_the_same_grader_failure_three_runs_in_a_row_stops_fatal_and_a_resume_goes_on_once_grade_py_is_fixed(tmp_path: Path, llm_server):
    broken = SCORE_GRADER.replace('print("grading", run.name)', 'raise KeyError("score_" + run.name)')
    experiment = graded_experiment(tmp_path, broken)
    server = llm_server(ScriptedBrain(codes=[LYING_TRAIN.format(graded=0.5, claimed=0.5)] * 3 + [LYING_TRAIN.format(graded=0.99, claimed=0.99)]))
    env = runner_env(server.base_url)

    done = run_main(["-d", str(experiment), "-r", "6", "--sandbox", "none"], env)

    assert done.returncode == 1, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "error (fatal): the same grader failure on runs 1, 2, 3 in a row: grade.py failed (exit code 1): KeyError" in said
    assert [result(experiment, n)["status"] for n in (1, 2, 3)] == ["grade_failed"] * 3
    assert not (experiment / "run_4").exists()
    assert "the same grader failure on runs 1, 2, 3 in a row" in (experiment / "REPORT.md").read_text()

    (experiment / "grade.py").write_text(SCORE_GRADER)
    resumed = run_main(["-d", str(experiment), "--resume"], env)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Stopped: goal_met" in resumed.stdout
    assert result(experiment, 4)["metrics"] == {"test_accuracy": 0.99}
    sections = (experiment / "KEY_FINDINGS.md").read_text()
    assert "## Run 3" in sections and "## Run 4" in sections  # run 3, taken before the stop, was analysed on resume


def test_a_graded_experiment_without_bwrap_refuses_to_start_unless_sandbox_none_is_asked_for(tmp_path: Path, monkeypatch, capsys):
    import main

    experiment = graded_experiment(tmp_path)
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:9/v1")  # never reached: it stops before any request
    monkeypatch.setenv("LLM_API_KEY", "test-key")

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main.main(["-d", str(experiment), "-r", "1"])
    finally:  # main sets its own for the run: the other tests' are put back
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "graded" in err and "grade.py" in err and "--sandbox none" in err and "Traceback" not in err
    assert sorted(p.name for p in experiment.iterdir()) == ["IDEA.md", "grade.py", "private"]  # nothing written


TOO_GOOD_TRAIN = """\
import json
print("val_accuracy=0.8 test_accuracy=1.0")
json.dump({"train_accuracy": 1.0, "val_accuracy": 0.8, "test_accuracy": 1.0}, open("metrics.json", "w"))
"""


def test_without_a_grader_numbers_too_good_to_be_true_are_flagged_in_the_record_the_report_and_the_analysts_prompt(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain(codes=[TOO_GOOD_TRAIN]))

    done = run_main(["-d", str(experiment), "-r", "1", "--sandbox", "none"], runner_env(server.base_url))

    assert done.returncode == 0, done.stdout + done.stderr
    record = result(experiment, 1)
    assert "reported" not in record and record["metrics"]["test_accuracy"] == 1.0  # ungraded: the self-report judges, as before
    flags = record["flags"]
    assert len(flags) == 2, flags
    assert flags[0].startswith("perfect score test_accuracy 1") and "train_accuracy" not in " ".join(flags)
    assert flags[1].startswith("test_accuracy 1 is far better than val_accuracy 0.8")
    assert all(flag in (experiment / "REPORT.md").read_text() for flag in flags)
    analyst = [json.dumps(call["messages"]) for call in read_audit(experiment / ".runner" / "llm_calls.jsonl") if call["stage"] == "analyze"]
    assert all(json.dumps(flag)[1:-1] in analyst[0] for flag in flags)


# Writes the record it would like to have, as the runner would write it, then trains on and on.
PLANTING_TRAIN = """\
import json, time
fake = {"number": 2, "status": "ok", "exit_code": 0, "duration_s": 1.0, "metrics": {"test_accuracy": 1.0}, "error": "",
        "operator": "draft", "parent": None, "reported": {"test_accuracy": 1.0}}
json.dump(fake, open("result.json", "w"), indent=2)
print("planted", flush=True)
time.sleep(120)
"""


def test_a_record_the_script_writes_itself_is_never_taken_for_the_runners(tmp_path: Path, llm_server):
    experiment = graded_experiment(tmp_path)
    slow_good = "import time\ntime.sleep(3)\n" + LYING_TRAIN.format(graded=0.98, claimed=0.98)
    server = llm_server(ScriptedBrain(codes=[slow_good, PLANTING_TRAIN]))

    done = run_main(["-d", str(experiment), "-r", "4", "--workers", "2", "--sandbox", "none"], runner_env(server.base_url))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Stopped: goal_met" in done.stdout and "run 1 met the goal" in done.stdout
    assert "planted" in (experiment / "run_2" / "output.log").read_text()
    planted = result(experiment, 2)
    assert planted["status"] == "cancelled" and planted["metrics"] == {}  # stopped in flight: its own record was not believed
    assert "★" in next(line for line in (experiment / "REPORT.md").read_text().splitlines() if line.startswith("| 1"))
