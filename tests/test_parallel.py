"""Parallel runs end to end: several runs in flight, each on its own devices, a freed slot refilled at once, the others
cancelled at the goal, SIGKILL and Ctrl-C with runs in flight, and the search and the report over runs that end out of order.

Each train.py notes in its run folder when it started and ended (span.json), what it was given (CUDA_VISIBLE_DEVICES,
the thread counts) and how often it ran (attempts.txt): the tests judge orderings and overlaps from these, never durations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fake_llm import message_text
from PIL import Image
from scripted import ScriptedBrain, run_main, runner_env, start_main, wait_until

from adapters import sandbox
from runner import run_experiment


def train(name: str, seconds: float = 0.0, accuracy: float | None = None, crash: str = "", progress: str = "", hold: bool = False, child: bool = False) -> str:
    """A train.py (`name` makes each one's code its own) that notes its span, sleeps `seconds`, waits while $HOLD_FILE
    exists if `hold`, then reports `accuracy` or raises `crash`. `progress` is printed at once, a metric a cancelled run
    leaves in its log; with `child` it starts two sleeping processes first, one of them in a session of its own."""
    lines = [
        f"# {name}",
        "import json, os, subprocess, sys, time",
        'names = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")',
        "span = {'start': time.time(), **{name: os.environ.get(name) for name in names}}",
        'json.dump(span, open("span.json", "w"))',
        'open("attempts.txt", "a").write("attempt\\n")',
    ]
    if child:
        lines += [
            'subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])',
            'subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)',
        ]
    lines.append(f'print("{name} starting", flush=True)')
    if progress:
        lines.append(f'print("{progress}", flush=True)')
    lines.append(f"time.sleep({seconds})")
    if hold:
        lines += ['while os.path.exists(os.environ["HOLD_FILE"]):', "    time.sleep(0.05)"]
    lines += ['span["end"] = time.time()', 'json.dump(span, open("span.json", "w"))']
    if crash:
        lines.append(f'raise ValueError("{crash}")')
    if accuracy is not None:
        lines += [f'print("accuracy={accuracy}")', f'json.dump({{"accuracy": {accuracy}}}, open("metrics.json", "w"))']
    return "\n".join(lines) + "\n"


def llm(server, **settings) -> dict:
    return {"llm_base_url": server.base_url, "llm_api_key": "test-key", "llm_max_retries": 0, "llm_retry_backoff_seconds": 0, "sandbox": "none", **settings}


def span(experiment: Path, number: int) -> dict:
    """What run `number`'s train.py noted: start (and end, if it got there) as time.time(), and the variables it was given."""
    return json.loads((experiment / f"run_{number}" / "span.json").read_text())


def overlap(first: dict, second: dict) -> bool:
    return first["start"] < second["end"] and second["start"] < first["end"]


def result(experiment: Path, number: int) -> dict:
    return json.loads((experiment / f"run_{number}" / "result.json").read_text())


def tree(experiment: Path) -> list[tuple[int, str, int | None, str]]:
    """(number, operator, parent, status) of every run, from run_N/result.json."""
    found = []
    for number in range(1, 100):
        if not (experiment / f"run_{number}" / "result.json").is_file():
            break
        record = result(experiment, number)
        found.append((record["number"], record["operator"], record["parent"], record["status"]))
    return found


def attempts(experiment: Path, number: int) -> int:
    return (experiment / f"run_{number}" / "attempts.txt").read_text().count("attempt")


def codegen_runs(server) -> list[int]:
    """The run each codegen request was for, in order."""
    asked = [message_text(request["messages"][1]) for request in server.requests if "You write train.py" in request["messages"][0]["content"]]
    return [int(re.findall(r"for run (\d+)", prompt)[-1]) for prompt in asked]


def table_rows(report: str) -> dict[int, list[str]]:
    """REPORT.md's runs table: run number → [parent, operator, status]."""
    rows = {}
    for line in report.splitlines():
        if match := re.match(r"\| (\d+)(?: ★)? \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", line):
            rows[int(match.group(1))] = [match.group(n).strip() for n in (2, 3, 4)]
    return rows


def processes_under(folder: Path) -> list[str]:
    """Every live process whose working directory or command line lies in `folder`, as 'pid cmdline'."""
    root = str(folder.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and (cwd == root or cwd.startswith(root + "/") or root in cmdline):
            found.append(f"{entry.name} {cmdline}")
    return found


def end_processes(found: list[str]) -> None:
    """Kill, by pid, what a failing test left behind (only train.py's own processes are ever found)."""
    for line in found:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except OSError:
            pass


def wait_for(runner: subprocess.Popen, condition, timeout: float = 60) -> None:
    """wait_until, but a runner that never gets there is killed and its output shown."""
    try:
        wait_until(condition, timeout)
    except AssertionError:
        runner.kill()
        out, err = runner.communicate()
        raise AssertionError(f"timed out waiting; the runner printed:\n{out[-3000:]}\n{err[-3000:]}") from None


def test_three_workers_run_three_drafts_at_once(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain(codes=[train(f"draft {n}", seconds=3, accuracy=0.5 + n / 100) for n in (1, 2, 3)]))

    final = run_experiment(experiment, max_runs=3, **llm(server, workers=3))

    assert tree(experiment) == [(1, "draft", None, "ok"), (2, "draft", None, "ok"), (3, "draft", None, "ok")]  # no --drafts: one per worker
    spans = [span(experiment, n) for n in (1, 2, 3)]
    assert max(s["start"] for s in spans) < min(s["end"] for s in spans)  # all three trained at the same moment
    assert final["stop_reason"] == "max_runs" and final["run_count"] == 3 and not final["in_flight"]


def test_each_run_in_flight_gets_its_own_gpu_and_a_share_of_the_cpus(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain(codes=[train(f"draft {n}", seconds=3, accuracy=0.5 + n / 100) for n in (1, 2, 3)]))

    run_experiment(experiment, max_runs=3, **llm(server, workers=3, gpus="0,1,2"))

    spans = [span(experiment, n) for n in (1, 2, 3)]
    assert max(s["start"] for s in spans) < min(s["end"] for s in spans)
    assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in spans) == ["0", "1", "2"]
    share = str(max(1, len(os.sched_getaffinity(0)) // 3))
    assert all(s[name] == share for s in spans for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"))


@pytest.mark.skipif(sandbox.resolve_mode("auto")[0] != "bwrap", reason="needs bubblewrap")
def test_in_the_sandbox_the_data_folder_stays_writable_while_any_run_in_flight_holds_it(experiment: Path, llm_server):
    """Run 1 ends first; run 2, still training as the sandbox's user, then writes to the shared data cache."""
    writes = 'open(os.path.join(os.environ["DATA_DIR"], "cache-{n}.txt"), "w").write("cached")\n'
    codes = [train("short", seconds=0.5, accuracy=0.6) + writes.format(n=1), train("long", seconds=3, accuracy=0.7) + writes.format(n=2)]
    server = llm_server(ScriptedBrain(codes=codes))

    run_experiment(experiment, max_runs=2, **llm(server, workers=2, sandbox="bwrap"))

    assert span(experiment, 1)["end"] < span(experiment, 2)["end"]
    assert [status for *_, status in tree(experiment)] == ["ok", "ok"], (experiment / "run_2" / "output.log").read_text()
    assert (experiment / "data" / "cache-2.txt").read_text() == "cached"
    assert (experiment / "data").stat().st_uid == os.getuid()  # given back once the last run ended


def test_a_run_written_ahead_starts_the_moment_a_worker_frees_not_after_the_analysis(experiment: Path, llm_server):
    """Two workers, one run written ahead: run 3 waits, ready, and starts as run 1 ends, while run 1's analysis (slow) goes on."""
    brain = ScriptedBrain(codes=[train("first", seconds=1, accuracy=0.6), train("second", seconds=5, accuracy=0.7), train("ahead", accuracy=0.8)])

    def responder(body: dict) -> dict:
        reply = brain(body)
        return {**reply, "delay": 2} if brain.stages[-1] == "analyze" else reply

    server = llm_server(responder)
    submitted: dict[int, float] = {}

    def note(event: dict) -> None:
        if event.get("event") == "stage" and event.get("stage") == "execute":
            submitted.setdefault(event["run"], time.time())

    run_experiment(experiment, max_runs=3, on_event=note, **llm(server, workers=2, ahead=1))

    first, ahead = span(experiment, 1), span(experiment, 3)
    assert submitted[3] < first["end"]  # written while both workers were busy
    assert first["end"] <= ahead["start"] < first["end"] + 1.0  # started as the first ended, not after its 2 s analysis
    assert [status for *_, status in tree(experiment)] == ["ok", "ok", "ok"]


def test_with_fewer_gpus_than_workers_a_run_waits_for_a_device_rather_than_share_one(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain(codes=[train(f"run {n}", seconds=3, accuracy=0.5 + n / 100) for n in (1, 2, 3, 4)]))
    submitted: dict[int, float] = {}

    def note(event: dict) -> None:
        if event.get("event") == "stage" and event.get("stage") == "execute":
            submitted.setdefault(event["run"], time.time())

    run_experiment(experiment, max_runs=4, on_event=note, **llm(server, workers=3, gpus="0,1"))

    spans = {n: span(experiment, n) for n in (1, 2, 3, 4)}
    assert {s["CUDA_VISIBLE_DEVICES"] for s in spans.values()} == {"0", "1"}
    for first in spans:
        for second in spans:
            if first < second and overlap(spans[first], spans[second]):
                assert spans[first]["CUDA_VISIBLE_DEVICES"] != spans[second]["CUDA_VISIBLE_DEVICES"], (first, second, spans)
    # Run 3 was handed over while runs 1 and 2 held both GPUs, and started only once one of them had ended.
    assert submitted[3] < min(spans[1]["end"], spans[2]["end"])
    assert spans[3]["start"] > min(spans[1]["end"], spans[2]["end"])


def test_a_crash_frees_its_slot_for_a_new_run_while_the_long_one_trains(experiment: Path, llm_server):
    codes = [train("long", seconds=6, accuracy=0.8), train("crash", seconds=1, crash="bad shape"), train("fixed", accuracy=0.7)]
    server = llm_server(ScriptedBrain(codes=codes))

    run_experiment(experiment, max_runs=3, **llm(server, workers=2))

    assert tree(experiment) == [(1, "draft", None, "ok"), (2, "draft", None, "failed"), (3, "debug", 2, "ok")]
    long, crash, fixed = (span(experiment, n) for n in (1, 2, 3))
    assert crash["end"] < fixed["start"] < long["end"]  # the debug of the crash started before the long run ended
    assert fixed["end"] < long["end"]


def test_goal_met_cancels_the_runs_in_flight_and_the_report_lists_them(experiment: Path, llm_server):
    codes = [
        train("slow one", seconds=6, accuracy=0.6, progress="epoch=1 accuracy=0.5"),
        train("slow two", seconds=6, accuracy=0.6, progress="epoch=1 accuracy=0.55"),
        train("quick", seconds=0.5, accuracy=0.95),
    ]
    server = llm_server(ScriptedBrain(codes=codes))

    final = run_experiment(experiment, max_runs=3, **llm(server, workers=3))

    assert final["stop_reason"] == "goal_met"
    assert tree(experiment) == [(1, "draft", None, "cancelled"), (2, "draft", None, "cancelled"), (3, "draft", None, "ok")]
    assert final["run_count"] == 3 and not final["in_flight"] and final["best_run"]["number"] == 3
    for number, partial in ((1, 0.5), (2, 0.55)):
        record = result(experiment, number)
        assert record["exit_code"] is None and "goal_met" in record["error"]
        assert record["metrics"].get("accuracy") == partial  # from the partial log, kept
        assert f"epoch=1 accuracy={partial}" in (experiment / f"run_{number}" / "output.log").read_text()
        assert "end" not in span(experiment, number)  # stopped in the middle, not waited for
    rows = table_rows((experiment / "REPORT.md").read_text())
    assert rows == {1: ["—", "draft", "cancelled"], 2: ["—", "draft", "cancelled"], 3: ["—", "draft", "ok"]}
    assert "| 3 ★ |" in (experiment / "REPORT.md").read_text()
    assert processes_under(experiment) == []


def test_the_report_tree_holds_runs_that_ended_out_of_order(experiment: Path, llm_server):
    codes = [train("slowest", seconds=4, accuracy=0.7), train("slower", seconds=2, accuracy=0.8), train("crash", crash="oops"), train("fix", accuracy=0.85)]
    server = llm_server(ScriptedBrain(codes=codes))

    final = run_experiment(experiment, max_runs=4, **llm(server, workers=3))

    ends = {n: span(experiment, n)["end"] for n in (1, 2, 3)}
    assert ends[3] < ends[2] < ends[1]  # they ended in the reverse of their numbers
    assert tree(experiment) == [(1, "draft", None, "ok"), (2, "draft", None, "ok"), (3, "draft", None, "failed"), (4, "debug", 3, "ok")]
    assert [(run["number"], run["parent"]) for run in final["runs"]] == [(1, None), (2, None), (3, None), (4, 3)]
    with Image.open(experiment / "report" / "tree.png") as image:
        image.load()
        described = image.text["Description"].splitlines()
    assert described == ["1: draft, ok, accuracy=0.7", "2: draft, ok, accuracy=0.8", "3: draft, failed", "4: debug ← 3, ok, accuracy=0.85, best"]
    rows = table_rows((experiment / "REPORT.md").read_text())
    assert rows == {1: ["—", "draft", "ok"], 2: ["—", "draft", "ok"], 3: ["—", "draft", "failed"], 4: ["3", "debug", "ok"]}
    findings = (experiment / "KEY_FINDINGS.md").read_text()
    assert all(heading in findings for heading in ("## Run 1 (ok, draft)", "## Run 2 (ok, draft)", "## Run 3 (failed, draft)", "## Run 4 (ok, debug of run 3)"))


def test_improves_chosen_while_others_are_in_flight_go_to_different_parents(experiment: Path, llm_server):
    drafts = [train("draft 1", seconds=0.3, accuracy=0.8), train("draft 2", seconds=0.6, accuracy=0.7), train("draft 3", seconds=0.9, accuracy=0.75)]
    improves = [train(f"improve {n}", seconds=3, accuracy=0.6 + n / 100) for n in (4, 5, 6)]
    server = llm_server(ScriptedBrain(codes=drafts + improves))

    run_experiment(experiment, max_runs=6, **llm(server, workers=3))

    runs = tree(experiment)
    assert [run[1] for run in runs] == ["draft"] * 3 + ["improve"] * 3
    assert sorted(run[2] for run in runs[3:]) == [1, 2, 3]  # one per draft, not three on the best (run 1)
    spans = [span(experiment, n) for n in (4, 5, 6)]
    assert max(s["start"] for s in spans) < min(s["end"] for s in spans)  # each was chosen while the others were in flight


def test_max_runs_reached_with_runs_in_flight_lets_them_finish_and_be_analysed(experiment: Path, llm_server):
    codes = [train("quick", accuracy=0.7), train("slow 2", seconds=4, accuracy=0.72), train("slow 3", seconds=4, accuracy=0.74), train("improve", accuracy=0.8)]
    brain = ScriptedBrain(codes=codes)
    server = llm_server(brain)

    final = run_experiment(experiment, max_runs=4, **llm(server, workers=3))

    assert tree(experiment) == [(1, "draft", None, "ok"), (2, "draft", None, "ok"), (3, "draft", None, "ok"), (4, "improve", 1, "ok")]
    assert not (experiment / "run_5").exists() and codegen_runs(server) == [1, 2, 3, 4]
    fourth = span(experiment, 4)
    assert fourth["end"] < span(experiment, 2)["end"] and fourth["end"] < span(experiment, 3)["end"]  # the limit was reached with 2 and 3 in flight
    assert brain.stages.count("analyze") == 4
    findings = (experiment / "KEY_FINDINGS.md").read_text()
    assert "## Run 2 (ok, draft)" in findings and "## Run 3 (ok, draft)" in findings
    assert final["stop_reason"] == "max_runs" and final["run_count"] == 4


def test_sigkill_with_three_in_flight_then_resume_keeps_the_finished_and_reruns_the_rest(experiment: Path, llm_server, hold: Path):
    codes = [train("run 1", accuracy=0.8), *(train(f"run {n}", hold=True, accuracy=0.7 + n / 100) for n in (2, 3, 4)), train("run 5", accuracy=0.79)]
    server = llm_server(ScriptedBrain(codes=codes))
    env = runner_env(server.base_url, HOLD_FILE=str(hold))
    runner = start_main(["-d", str(experiment), "-r", "5", "--workers", "3", "--gpus", "0,1,2", "--sandbox", "none"], env)
    logs = [experiment / f"run_{n}" / "output.log" for n in (2, 3, 4)]
    wait_for(runner, lambda: all(log.exists() and "starting" in log.read_text() for log in logs))  # run 1 done, 2-4 in flight
    scripts = {n: (experiment / f"run_{n}" / "train.py").read_bytes() for n in (1, 2, 3, 4)}
    first = (experiment / "run_1" / "result.json").read_bytes()
    runner.kill()
    runner.communicate()
    asked = len(codegen_runs(server))

    hold.unlink()
    resumed = run_main(["-d", str(experiment), "--resume"], env)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (experiment / "run_1" / "result.json").read_bytes() == first and attempts(experiment, 1) == 1  # finished: kept, not rerun
    assert not list((experiment / "run_1").glob("output.interrupted-*"))
    for number in (2, 3, 4):
        assert attempts(experiment, number) == 2  # unfinished: ran again...
        assert (experiment / f"run_{number}" / "output.interrupted-1.log").read_text().startswith(f"run {number} starting")  # ...its partial log kept aside
        assert f"accuracy=0.7{number}" in (experiment / f"run_{number}" / "output.log").read_text()
    assert {n: (experiment / f"run_{n}" / "train.py").read_bytes() for n in (1, 2, 3, 4)} == scripts  # no number given to other code
    assert codegen_runs(server)[asked:] == [5]  # only the new run was written
    assert (experiment / "run_5" / "train.py").read_text() == codes[4] and not (experiment / "run_6").exists()
    assert [status for *_, status in tree(experiment)] == ["ok"] * 5


def test_resumed_with_fewer_workers_the_runs_in_flight_start_again_in_turn(experiment: Path, llm_server, hold: Path):
    codes = [train("run 1", accuracy=0.8), *(train(f"run {n}", seconds=0.5, hold=True, accuracy=0.7 + n / 100) for n in (2, 3, 4))]
    server = llm_server(ScriptedBrain(codes=codes))
    env = runner_env(server.base_url, HOLD_FILE=str(hold))
    runner = start_main(["-d", str(experiment), "-r", "4", "--workers", "3", "--sandbox", "none"], env)
    wait_for(runner, lambda: all((experiment / f"run_{n}" / "output.log").exists() for n in (2, 3, 4)))
    wait_for(runner, lambda: all("starting" in (experiment / f"run_{n}" / "output.log").read_text() for n in (2, 3, 4)))
    runner.kill()
    runner.communicate()

    hold.unlink()
    resumed = run_main(["-d", str(experiment), "--resume", "--workers", "1"], env)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [attempts(experiment, n) for n in (2, 3, 4)] == [2, 2, 2]
    spans = [span(experiment, n) for n in (2, 3, 4)]
    assert not any(overlap(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :])  # one worker: one run at a time
    assert [status for *_, status in tree(experiment)] == ["ok"] * 4


def test_runs_that_ended_while_the_runner_was_killed_are_kept(experiment: Path, llm_server, hold: Path):
    """Runs 2 and 3 end (and write result.json) while the runner waits on run 1's analysis; it is killed before it takes them."""
    brain = ScriptedBrain(codes=[train("run 1", accuracy=0.8), train("run 2", hold=True, accuracy=0.72), train("run 3", hold=True, accuracy=0.73)])
    slow = {"on": True}

    def responder(body: dict) -> dict:
        reply = brain(body)
        if slow["on"] and brain.stages[-1] == "analyze":
            return {**reply, "delay": 30}
        return reply

    server = llm_server(responder)
    env = runner_env(server.base_url, HOLD_FILE=str(hold))
    runner = start_main(["-d", str(experiment), "-r", "3", "--workers", "3", "--sandbox", "none"], env)
    wait_for(runner, lambda: "analyze" in brain.stages)
    hold.unlink()
    wait_for(runner, lambda: all((experiment / f"run_{n}" / "result.json").exists() for n in (2, 3)))
    recorded = {n: (experiment / f"run_{n}" / "result.json").read_bytes() for n in (2, 3)}
    runner.kill()
    runner.communicate()
    slow["on"] = False

    resumed = run_main(["-d", str(experiment), "--resume"], env)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for number in (2, 3):
        assert attempts(experiment, number) == 1, f"run {number} ran again"
        assert (experiment / f"run_{number}" / "result.json").read_bytes() == recorded[number]
        assert not list((experiment / f"run_{number}").glob("output.interrupted-*"))
    assert tree(experiment) == [(1, "draft", None, "ok"), (2, "draft", None, "ok"), (3, "draft", None, "ok")]
    assert "## Run 2 (ok, draft)" in (experiment / "KEY_FINDINGS.md").read_text() and "## Run 3 (ok, draft)" in (experiment / "KEY_FINDINGS.md").read_text()


def test_ctrl_c_with_three_in_flight_leaves_no_process_behind(experiment: Path, llm_server, hold: Path):
    server = llm_server(ScriptedBrain(codes=[train(f"run {n}", hold=True, child=True, accuracy=0.7) for n in (1, 2, 3)]))
    env = runner_env(server.base_url, HOLD_FILE=str(hold))
    runner = start_main(["-d", str(experiment), "-r", "3", "--workers", "3", "--sandbox", "none"], env)
    logs = [experiment / f"run_{n}" / "output.log" for n in (1, 2, 3)]
    wait_for(runner, lambda: all(log.exists() and "starting" in log.read_text() for log in logs))
    assert len(processes_under(experiment)) >= 9  # each run: train.py and its two sleepers
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=30)

    left = processes_under(experiment)
    end_processes(left)
    assert left == []
    assert runner.returncode == 130, out + err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    report = (experiment / "REPORT.md").read_text()
    assert "**interrupted**" in report and "Runs 1, 2, 3 were in flight" in report
    assert not any((experiment / f"run_{n}" / "result.json").exists() for n in (1, 2, 3))  # still in flight: a resume runs them again


def test_review_with_workers_pauses_one_run_at_a_time_in_order_while_the_others_train(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain(codes=[train(f"run {n}", seconds=2, accuracy=0.7 + n / 100) for n in (1, 2, 3)]))
    reviewed: list[int] = []

    def approve(request: dict) -> dict:
        reviewed.append(request["run"])
        if request["run"] == 2:  # run 1 trains while run 2 waits for its reviewer
            wait_until(lambda: (experiment / "run_1" / "span.json").exists(), timeout=20)
        return {"action": "approve"}

    run_experiment(experiment, max_runs=3, on_review=approve, **llm(server, workers=2, review=True))

    assert reviewed == [1, 2, 3]
    assert span(experiment, 2)["start"] < span(experiment, 1)["end"]


def test_linear_search_with_workers_is_refused_at_start(experiment: Path, llm_server):
    server = llm_server(ScriptedBrain())
    refused = run_main(["-d", str(experiment), "--workers", "2", "--search", "linear"], runner_env(server.base_url))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "SEARCH=linear" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert server.requests == [] and not (experiment / "run_1").exists()
