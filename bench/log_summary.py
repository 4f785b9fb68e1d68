"""How fast summarize_log reads a large training log, and how much memory it takes.

Run from the repository root: `python bench/log_summary.py [--mb 200]`.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, yet import the project

from adapters.logs import summarize_log  # noqa: E402


def write_log(path: Path, megabytes: int) -> None:
    """A log of about `megabytes` MB: metric lines, plain lines and JSON lines, as a training run prints them."""
    block = "".join(
        f"step {i}: train loss={1 / (i + 1):.5f} lr=1e-4\n"
        f"INFO 2024-05-01 12:00:{i % 60:02d} data loader worker {i % 8} prefetched batch {i} from shard {i % 64} of the training set\n"
        f'{{"epoch": {i // 100}, "val_acc": 0.{i:03d}}}\n'
        for i in range(300)
    ).encode()
    with open(path, "wb") as f:
        for _ in range(megabytes * 1024 * 1024 // len(block)):
            f.write(block)
        f.write(b"Test accuracy: 0.987\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the log in MB (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "output.log"
        write_log(log, args.mb)
        size_mb = log.stat().st_size / 2**20
        start = time.perf_counter()
        summary = summarize_log(log)
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    print(
        f"summarize_log: {size_mb:.0f} MB, {summary.lines} lines in {seconds:.1f} s = {size_mb / seconds:.1f} MB/s; "
        f"peak RSS {peak_mb:.0f} MB; {len(summary.metrics)} metrics"
    )


if __name__ == "__main__":
    main()
