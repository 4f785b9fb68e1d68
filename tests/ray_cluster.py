"""Start and stop a real local Ray cluster for the tests, by its own temporary folder, never `ray stop`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cluster(temp_dir: Path, cpus: int = 2, gpus: int = 2) -> str:
    """`ray start --head` with `cpus` CPUs and `gpus` fake GPUs in `temp_dir`; its GCS address."""
    port, dashboard = free_port(), free_port()
    ray = Path(sys.executable).with_name("ray")
    command = [
        str(ray) if ray.exists() else "ray",
        "start",
        "--head",
        f"--num-cpus={cpus}",
        f"--num-gpus={gpus}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--port={port}",
        f"--dashboard-port={dashboard}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    # Token authentication off: a token file some earlier Ray left in ~/.ray would turn it on for this cluster only.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if started.returncode != 0:
        stop_cluster(temp_dir)
        raise RuntimeError(f"ray start failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
    return f"127.0.0.1:{port}"


def cluster_processes(temp_dir: Path) -> list[int]:
    """The cluster's processes: those whose command line holds `temp_dir`, and every descendant of theirs (Ray's workers
    and agents rename themselves `ray::…`, so their command lines do not say)."""
    parents: dict[int, int] = {}
    own: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            if str(temp_dir) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                own.add(int(entry.name))
        except (OSError, ValueError):
            continue
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in own and pid not in own}
        own |= more
        grew = bool(more)
    return sorted(own)


def stop_cluster(temp_dir: Path) -> None:
    """SIGTERM, then SIGKILL, to the cluster's own processes (those found first too: an agent whose raylet is gone has
    init for a parent); then its folder goes."""
    known = set(cluster_processes(temp_dir))
    for signum, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        known |= set(cluster_processes(temp_dir))
        for pid in sorted(known):
            try:
                os.kill(pid, signum)
            except OSError:
                known.discard(pid)
        deadline = time.monotonic() + wait
        while any(Path(f"/proc/{pid}").exists() for pid in known) and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(temp_dir, ignore_errors=True)
