"""Child churn: a run whose script starts and reaps many short-lived children (DataLoader workers respawned every epoch).

Reports what the runner keeps of them while the run lasts: the largest tree it remembers, the largest pid
file it writes and its own resident memory before and after; and what the child's set-up costs a run
(setpriv, sh and prlimit exec'd before the script) against starting the script bare.

Run from the repository root: `python bench/child_churn.py [--children 20000] [--starts 20]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters import process  # noqa: E402
from adapters.process import Limits, run_script  # noqa: E402

CHURN = """\
import os, sys, time
running = 0
for started in range(int(sys.argv[1])):
    if os.fork() == 0:
        time.sleep(0.005)
        os._exit(0)
    running += 1
    if running == 16:
        os.wait()
        running -= 1
while running:
    os.wait()
    running -= 1
"""


def rss_mb() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def churn(folder: Path, children: int) -> dict:
    """Run CHURN under run_script, the tree scanned every 10 ms and the pid file rewritten at each change."""
    process.POLL_S, process.PID_FILE_EVERY_S = 0.01, 0.0
    (folder / "train.py").write_text(CHURN)
    pid_file = folder / "child.json"
    tree_sizes, file_sizes = [], []
    update = process._PidRecord.update

    def watched(record, tree):
        tree_sizes.append(len(tree.seen))
        update(record, tree)
        if pid_file.exists():
            file_sizes.append(pid_file.stat().st_size)

    process._PidRecord.update = watched
    before = rss_mb()
    started = time.perf_counter()
    argv = [sys.executable, "train.py", str(children)]
    result = run_script(argv, cwd=folder, log_path=folder / "output.log", limits=Limits(timeout_s=600), env=dict(os.environ), pid_file=pid_file)
    process._PidRecord.update = update
    return {
        "children": children,
        "exit_code": result.exit_code,
        "seconds": round(time.perf_counter() - started, 1),
        "scans": len(tree_sizes),
        "largest_tree_remembered": max(tree_sizes),
        "largest_pid_file_bytes": max(file_sizes),
        "runner_rss_mb_before": round(before, 1),
        "runner_rss_mb_after": round(rss_mb(), 1),
    }


def start_cost(folder: Path, starts: int) -> dict:
    """Median seconds to run `python -c pass` through run_script's wrappers and bare."""
    limits = Limits(timeout_s=60, file_size_mb=1024, max_processes=8192)
    wrapped, bare = [], []
    for _ in range(starts):
        t = time.perf_counter()
        subprocess.run(process.child_command([sys.executable, "-c", "pass"], limits), check=True)
        wrapped.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t)
    return {"wrapped_s": round(statistics.median(wrapped), 4), "bare_s": round(statistics.median(bare), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=20000)
    parser.add_argument("--starts", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        figures = {"churn": churn(Path(scratch), args.children), "start": start_cost(Path(scratch), args.starts)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
