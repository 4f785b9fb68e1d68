"""The guard of a run on a Ray node without bwrap: `python -m adapters.guard WORKER PID_FILE DONE FOLDER`.

Started beside each such run as init's child (adapters.remote), it waits until the run is done (the file DONE
appears) or its Ray worker process is gone. Ray kills a dead driver's workers, and their children, but not what
train.py started beneath: the parent-death signal reaches train.py alone, and a setsid()'d descendant leaves its
group. When the worker is gone first, the guard kills what is left: what the pid file names, and whatever still
works in the run's folder, and removes the folder. Under bwrap the PID namespace does all this.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from adapters.process import kill_leftover

POLL_S = 0.5


def kill_in_folder(folder: Path) -> None:
    """SIGKILL every process whose working folder lies in `folder`."""
    root = str(folder.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + "/"):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def guard(worker: int, pid_file: Path, done: Path, folder: Path) -> None:
    while not done.exists():
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            kill_leftover(pid_file)
            kill_in_folder(folder)
            shutil.rmtree(folder, ignore_errors=True)
            break
        except PermissionError:  # alive, another user's
            pass
        time.sleep(POLL_S)
    done.unlink(missing_ok=True)


if __name__ == "__main__":
    guard(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
