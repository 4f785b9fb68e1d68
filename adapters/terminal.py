"""The terminal's input: the review prompt (the coming train.py, its diff, and what to do with it), and the single
keys the live view reads while it runs."""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import tty
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax


def ask_review(request: dict, console: Console, read: Callable[[str], str] = input) -> dict:
    """Show the coming run's train.py and its diff, then ask: approve, reject (with a reason) or edit in $EDITOR.

    Raises EOFError when there is no one to answer (stdin closed).
    """
    console.rule(f"[bold]Review: run {request['run']} · {escape(request['path'])}")
    console.print(Syntax(request["code"], "python", line_numbers=True, word_wrap=True))
    console.rule("[bold]Changes since the previous run")
    if request.get("diff"):
        console.print(Syntax(request["diff"], "diff", word_wrap=True))
    else:  # a pause saved before notes existed has none
        console.print(request.get("note") or "no changes", style="dim", markup=False, soft_wrap=True)
    while True:
        answer = read("Run it? [a]pprove, [r]eject with a reason, [e]dit: ").strip().lower()
        if answer in ("a", "approve", "y", "yes"):
            return {"action": "approve"}
        if answer in ("r", "reject", "n", "no"):
            reason = read("Reason (it goes to the code model): ").strip()
            if reason:
                return {"action": "reject", "reason": reason}
            console.print("[yellow]A rejection needs a reason: it tells the code model what to change. Answer again.[/]", soft_wrap=True)
        elif answer in ("e", "edit"):
            code = edit_in_editor(request["code"])
            if code == request["code"]:
                console.print("unchanged: the edit changed nothing; the code shown runs.", style="dim", markup=False, soft_wrap=True)
            return {"action": "edit", "code": code}
        else:
            got = f", not {answer!r}" if answer else ""
            console.print(f"Answer a (approve), r (reject with a reason) or e (edit){got}.", style="yellow", markup=False, soft_wrap=True)


def edit_in_editor(code: str) -> str:
    """Open `code` in $VISUAL or $EDITOR (default vi) and return what was saved."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.py"
        path.write_text(code, encoding="utf-8")
        subprocess.run([*shlex.split(editor), str(path)], check=True)
        return path.read_text(encoding="utf-8")


KEY_POLL_S = 0.1
"""How often the key reader looks up from waiting for a key, to see whether it should stop."""
ESCAPE_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|O.|.)?", re.DOTALL)
"""What a key other than a character sends (an arrow: ESC [ A; F1: ESC O P; Alt+x: ESC x): no key of the live view's."""


class KeyReader:
    """Single keys typed while the live view runs (Tab, digits), read in a daemon thread and handed to a callback.

    Only when standard input is a terminal: it goes to cbreak mode (each key at once, not echoed; Ctrl-C and Ctrl-Z
    still signal, as ISIG stays on) and gets its settings back on stop(). A key that sends an escape sequence (an
    arrow, a function key) is dropped whole, its digits included.
    """

    def __init__(self, fd: int | None = None):
        self.fd = fd
        """The terminal to read; None: standard input's, if it is one."""
        self.saved: tuple[int, list] | None = None
        """The terminal read and its settings before cbreak, while keys are read."""
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, on_key: Callable[[str], None]) -> bool:
        """Read keys into `on_key` (called from the reader's thread) until stop(); False, with nothing changed, when the
        input is no terminal (a pipe, a file) or this process is in the background of the one it is."""
        if self.thread is not None:
            return True
        fd = self.fd if self.fd is not None else _stdin_fd()
        if fd is None or not os.isatty(fd) or not _in_foreground(fd):
            return False
        try:
            self.saved = (fd, termios.tcgetattr(fd))
            tty.setcbreak(fd, termios.TCSANOW)  # TCSANOW: keys typed ahead stay
        except termios.error:
            self.saved = None
            return False
        self.stopping.clear()
        self.thread = threading.Thread(target=self._read, args=(fd, on_key), name="keys", daemon=True)
        self.thread.start()
        return True

    def stop(self) -> None:
        """Stop reading and give the terminal its settings back; harmless when not reading, and from any thread."""
        thread, self.thread = self.thread, None
        self.stopping.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=KEY_POLL_S * 5)  # it must not take a key typed for what comes next (the review prompt)
        if self.saved is not None:
            fd, settings = self.saved
            self.saved = None
            _set_terminal(fd, settings)

    def _read(self, fd: int, on_key: Callable[[str], None]) -> None:
        while not self.stopping.is_set():
            if not _in_foreground(fd):  # a read in the background would stop the whole runner (SIGTTIN)
                self.stopping.wait(KEY_POLL_S)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], KEY_POLL_S)
                if not ready or self.stopping.is_set():
                    continue
                chunk = os.read(fd, 64)
            except OSError:  # the terminal went away
                return
            if not chunk:  # end of input
                return
            for key in ESCAPE_SEQUENCE.sub("", chunk.decode("utf-8", "ignore")):
                on_key(key)


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # closed, or replaced by something without a descriptor
        return None


def _in_foreground(fd: int) -> bool:
    """Whether this process may read and set terminal `fd` without being stopped: it leads the terminal's foreground, or
    the terminal is not its controlling one (job control then does not apply)."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return True


def _set_terminal(fd: int, settings: list) -> None:
    """Give terminal `fd` its `settings` back, even from the background (SIGTTOU blocked meanwhile) or once it is gone."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        termios.tcsetattr(fd, termios.TCSANOW, settings)
    except (termios.error, OSError):
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
