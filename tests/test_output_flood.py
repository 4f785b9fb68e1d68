"""The 1 GB attack, end to end: a script prints 1 GB; output.log stays within its cap and the runner within 200 MB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from adapters.capped_log import MARKER

ROOT = Path(__file__).resolve().parents[1]
PRINTED_BYTES = 2**30
LINE_BYTES = 1024
CAP_BYTES = 10 * 2**20
RUNNER_RSS_LIMIT_MB = 200


def test_a_script_printing_1_gb_leaves_a_capped_log_and_a_small_runner(tmp_path: Path):
    # The runner runs in a process of its own, so that its peak memory (VmHWM) is its alone, not pytest's.
    harness = subprocess.run(
        [sys.executable, "bench/output_flood.py", "--json", "--folder", str(tmp_path)]
        + ["--gb", "1", "--cap-mb", str(CAP_BYTES / 2**20), "--line-bytes", str(LINE_BYTES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert harness.returncode == 0, harness.stderr
    measured = json.loads(harness.stdout)

    assert measured["exit_code"] == 0
    assert measured["runner_peak_rss_mb"] < RUNNER_RSS_LIMIT_MB
    assert measured["echoed_lines"] > 0, "on_output was called: the echo path ran too"

    log = (tmp_path / "output.log").read_bytes()
    dropped = measured["log_bytes_dropped"]
    marker = MARKER.format(dropped=dropped).encode()
    assert log.count(marker) == 1
    assert len(log) <= CAP_BYTES + len(marker)
    assert len(log) - len(marker) + dropped == PRINTED_BYTES
    line = b"x" * (LINE_BYTES - 1) + b"\n"
    head, tail = log.split(marker)
    assert head == line * (len(head) // LINE_BYTES) and tail == line * (len(tail) // LINE_BYTES), "cut between whole lines"
    assert not list(tmp_path.glob(".output.log.tail*"))
