"""The review prompt: show the coming train.py and its diff, and ask what to do with it."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
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
