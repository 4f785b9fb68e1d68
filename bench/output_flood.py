"""How fast run_script moves a flood of output into a capped output.log, and how much memory the runner takes.

Run from the repository root: `python bench/output_flood.py [--gb 1] [--cap-mb 10] [--line-bytes 1024]`.
It prints one line; with --json, the same measurements as one JSON object (tests/test_output_flood.py reads it).
The runner's peak memory is this process's VmHWM: the child that prints runs in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, yet import the project

from adapters.process import Limits, run_script  # noqa: E402

FLOOD_SCRIPT = """\
import sys
line_bytes, total_bytes = int(sys.argv[1]), int(sys.argv[2])
block = (b"x" * (line_bytes - 1) + b"\\n") * max(1, 2**20 // line_bytes)
write = sys.stdout.buffer.write
for _ in range(total_bytes // len(block)):
    write(block)
write(block[: total_bytes % len(block)])
"""


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory (VmHWM), this one's by default; unlike ru_maxrss it does not start from the parent's peak.

    OSError once the process is gone; RuntimeError for a zombie, whose status has no memory lines.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def flood(folder: Path, total_bytes: int, cap_bytes: int, line_bytes: int) -> dict:
    """Run a script printing `total_bytes` in lines of `line_bytes` through run_script; what it measured."""
    (folder / "flood.py").write_text(FLOOD_SCRIPT)
    echoed = 0

    def count_echoed(lines: list[str]) -> None:
        nonlocal echoed
        echoed += len(lines)

    start = time.perf_counter()
    result = run_script(
        [sys.executable, "flood.py", str(line_bytes), str(total_bytes)],
        cwd=folder,
        log_path=folder / "output.log",
        limits=Limits(timeout_s=600, log_max_bytes=cap_bytes),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        on_output=count_echoed,
    )
    seconds = time.perf_counter() - start
    return {
        "exit_code": result.exit_code,
        "seconds": round(seconds, 2),
        "mb_per_s": round(total_bytes / 2**20 / seconds, 1),
        "log_bytes": (folder / "output.log").stat().st_size,
        "log_bytes_dropped": result.log_bytes_dropped,
        "echoed_lines": echoed,
        "runner_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1, help="output to print, in GB (default 1)")
    parser.add_argument("--cap-mb", type=float, default=10, help="LOG_MAX_MB for the run (default 10)")
    parser.add_argument("--line-bytes", type=int, default=1024, help="length of each printed line, newline included (default 1024)")
    parser.add_argument("--folder", type=Path, help="run here and keep output.log (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the measurements as one JSON object")
    args = parser.parse_args()
    total_bytes, cap_bytes = int(args.gb * 2**30), int(args.cap_mb * 2**20)
    if args.folder:
        args.folder.mkdir(parents=True, exist_ok=True)
        measured = flood(args.folder, total_bytes, cap_bytes, args.line_bytes)
    else:
        with tempfile.TemporaryDirectory() as folder:
            measured = flood(Path(folder), total_bytes, cap_bytes, args.line_bytes)
    if args.json:
        print(json.dumps(measured))
        return
    print(
        f"output flood: {total_bytes / 2**30:g} GB in {args.line_bytes}-byte lines through run_script in {measured['seconds']:.1f} s "
        f"= {measured['mb_per_s']:.0f} MB/s; output.log {measured['log_bytes'] / 2**20:.1f} MB (cap {args.cap_mb:g} MB, "
        f"{measured['log_bytes_dropped']} bytes dropped); {measured['echoed_lines']} lines echoed; "
        f"runner peak RSS {measured['runner_peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
