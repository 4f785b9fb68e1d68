"""Start-up: `python main.py --help`, which modules it spends its time importing, and the resume of a long experiment up to its first new node."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from figures import Figure, median
from workload import REPO, FakeLLMServer, command_seconds, main_env

HELP_BOUND_S = 0.5


def help_seconds(repeats: int) -> list[float]:
    """Wall seconds of `python main.py --help`, `repeats` times."""
    return command_seconds([sys.executable, str(REPO / "main.py"), "--help"], repeats)


IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)")


def help_imports(top: int = 8) -> dict[str, float]:
    """The top-level modules `main.py --help` imports, slowest first, with their cumulative import time in ms (python -X importtime)."""
    done = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "main.py"), "--help"], cwd=REPO, capture_output=True, text=True, check=True)
    totals: dict[str, float] = {}
    for match in IMPORT_LINE.finditer(done.stderr):
        cumulative_us, indent, name = int(match.group(2)), len(match.group(3)), match.group(4)
        if indent == 1:  # imported by main.py itself (or by the interpreter's start-up)
            totals[name] = totals.get(name, 0) + cumulative_us / 1000
    return dict(sorted(((name, round(ms, 1)) for name, ms in totals.items()), key=lambda item: -item[1])[:top])


def resume_seconds(folder: Path, server: FakeLLMServer, next_run: int, sandbox: str = "none") -> float:
    """Seconds from starting `python main.py -d folder --resume --max-runs next_run` to its first stage line (▶); then it is stopped."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "-d", str(folder), "--resume", "--max-runs", str(next_run)],
        cwd=REPO,
        env=main_env(server, sandbox),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seconds = None
    try:
        for line in proc.stdout:
            if line.startswith("▶"):
                seconds = time.perf_counter() - started
                break
    finally:
        proc.send_signal(signal.SIGTERM)  # stops cleanly; the next resume goes on from the step it reached
        proc.communicate(timeout=30)
    if seconds is None:
        raise RuntimeError(f"the resumed runner printed no stage line (exit {proc.returncode})")
    return seconds


def figures(help_s: list[float], imports: dict[str, float], resume_s: list[float], runs: int) -> list[Figure]:
    """--help's median against its bound (with the slowest imports beside it), and the resume's."""
    bench = "start-up"
    slowest = ", ".join(f"{name} {ms:,.0f} ms" for name, ms in list(imports.items())[:5])
    result = [
        Figure(
            bench,
            f"`python main.py --help`, median of {len(help_s)}",
            round(median(help_s), 3),
            "s",
            bound=f"< {HELP_BOUND_S:g} s",
            passed=median(help_s) < HELP_BOUND_S,
        ),
        Figure(bench, "slowest imports of --help (cumulative)", None, "ms", shown=slowest or "n/a"),
    ]
    if resume_s:
        result.append(
            Figure(
                bench,
                f"resume of a {runs}-run experiment to its first new node, median of {len(resume_s)}",
                round(median(resume_s), 3),
                "s",
            )
        )
    return result
