"""Output handling: a train.py printing a flood of output under `python main.py`, against `python train.py > file`.

The runner runs as a subprocess of its own, as a user starts it (`--plain`, stdout to /dev/null), and its
peak memory is its VmHWM, polled until it exits and noted as each run and the report are recorded. (Not
wait4's ru_maxrss: a child started by vfork inherits its parent's high-water mark, here this process's.)
Throughput is the bytes printed over the run's duration as the runner measured it (run_1/result.json),
against the same script's output redirected to a file, the faster of two tries (one before, one after).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from figures import Figure, at_least
from output_flood import peak_rss_mb
from workload import FLOOD_TRAIN, REPO, FakeLLMServer, RealisticBrain, main_env, new_experiment

THROUGHPUT_BOUND = 0.5
"""The runner's throughput into output.log may be no less than this share of `python train.py > file`."""
RSS_BOUND_MB = 200
"""The runner's peak resident memory, MiB (VmHWM)."""


def run_flood(folder: Path, total_bytes: int, sandbox: str = "none") -> dict:
    """Two runs under `python main.py`: run 1 prints `total_bytes`, run 2 is an ordinary one (its codegen reads the flood's digest)."""
    script = FLOOD_TRAIN.format(total_bytes=total_bytes)
    baseline_dir = folder.parent / f"{folder.name}-baseline"
    baseline_dir.mkdir(parents=True, exist_ok=True)
    (baseline_dir / "train.py").write_text(script)
    baseline = [redirect_seconds(baseline_dir)]

    new_experiment(folder)
    with FakeLLMServer(RealisticBrain(codes=[script])) as server:
        milestones = {
            "flooded run recorded": folder / "run_1" / "result.json",
            "run 2 recorded": folder / "run_2" / "result.json",
            "report written": folder / "REPORT.md",
        }
        runner = run_main_measured(folder, main_env(server, sandbox), milestones)
    if runner["exit_code"] != 0:
        raise RuntimeError(f"the flood experiment failed (exit {runner['exit_code']}): {runner['stderr'][-2000:]}")
    baseline.append(redirect_seconds(baseline_dir))

    result = json.loads((folder / "run_1" / "result.json").read_text())
    return {
        "printed_bytes": total_bytes,
        "run_status": result["status"],
        "run_seconds": result["duration_s"],
        "redirect_seconds": baseline,
        "output_log_bytes": (folder / "run_1" / "output.log").stat().st_size,
        **{k: v for k, v in runner.items() if k != "stderr"},
    }


def redirect_seconds(folder: Path) -> float:
    """Seconds for `python train.py > output.log` in `folder`; the file is removed afterwards."""
    target = folder / "output.log"
    with target.open("wb") as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "train.py"], cwd=folder, stdout=out, check=True)
        seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def run_main_measured(folder: Path, env: dict[str, str], milestones: dict[str, Path]) -> dict:
    """Run `python main.py -d folder -r 2 --plain` to its end: exit code, wall time, its peak RSS, and that peak as each milestone file appears."""
    stderr = folder.parent / f"{folder.name}-stderr.txt"
    with stderr.open("wb") as errors:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "main.py"), "-d", str(folder), "-r", "2", "--plain"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors
        )
        reached: dict[str, float] = {}
        watcher = threading.Thread(target=_watch_peak, args=(proc.pid, milestones, reached), daemon=True)
        watcher.start()
        proc.wait()
        seconds = time.perf_counter() - started
        watcher.join(timeout=2)
    return {
        "exit_code": proc.returncode,
        "runner_wall_s": round(seconds, 2),
        "runner_peak_rss_mb": reached.pop("exit", None),
        "runner_peak_rss_mb_at": reached,
        "stderr": stderr.read_text(errors="replace"),
    }


def _watch_peak(pid: int, milestones: dict[str, Path], reached: dict[str, float]) -> None:
    """Poll the process's VmHWM (its peak RSS so far) until it exits: noted when each milestone's file first exists, and last as "exit"."""
    while True:
        try:
            reached["exit"] = round(peak_rss_mb(pid), 1)
        except (OSError, RuntimeError):  # gone, or a zombie
            return
        for name, path in milestones.items():
            if name not in reached and path.exists():
                reached[name] = reached["exit"]
        time.sleep(0.01)


def figures(measured: dict, flood_label: str) -> list[Figure]:
    """Throughput against the redirect, the ratio's bound, and the runner's peak memory's."""
    bench = "output handling"
    mib = measured["printed_bytes"] / 2**20
    runner_rate = mib / measured["run_seconds"]
    redirect = min(measured["redirect_seconds"])
    redirect_rate = mib / redirect
    ratio = runner_rate / redirect_rate
    return [
        Figure(
            bench,
            f"throughput into output.log ({flood_label} printed)",
            round(runner_rate, 1),
            "MiB/s",
            shown=f"{runner_rate:,.0f} MiB/s ({measured['run_seconds']:.2f} s)",
        ),
        Figure(bench, "`python train.py > file`, same script", round(redirect_rate, 1), "MiB/s", shown=f"{redirect_rate:,.0f} MiB/s ({redirect:.2f} s)"),
        Figure(bench, "throughput, runner / redirect", round(ratio, 2), "x", bound=f">= {THROUGHPUT_BOUND:g}", passed=at_least(ratio, THROUGHPUT_BOUND)),
        Figure(bench, "output.log kept (LOG_MAX_MB cap)", measured["output_log_bytes"], "bytes"),
        Figure(bench, "runner peak RSS through the flooded run", measured["runner_peak_rss_mb_at"].get("flooded run recorded"), "MiB"),
        Figure(bench, "runner peak RSS through the report (plots)", measured["runner_peak_rss_mb_at"].get("report written"), "MiB"),
        Figure(
            bench,
            "runner peak RSS, whole experiment (2 runs and report)",
            measured["runner_peak_rss_mb"],
            "MiB",
            bound=f"< {RSS_BOUND_MB} MiB",
            passed=measured["runner_peak_rss_mb"] is not None and measured["runner_peak_rss_mb"] < RSS_BOUND_MB,
        ),
    ]
