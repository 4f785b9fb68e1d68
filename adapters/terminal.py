"""Turns the graph's progress events into terminal lines; the nodes themselves never print."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from adapters.logs import format_metrics


class ProgressPrinter:
    """One line per stage, run result and warning; the child's output echoed dimmed."""

    def __init__(self, console: Console | None = None, echo_output: bool = True):
        self.console = console or Console(highlight=False)
        self.echo_output = echo_output
        self.stage_started = time.monotonic()

    def event(self, event: dict) -> None:
        """Show one custom event emitted by a node."""
        kind = event.get("event")
        if kind == "stage":
            self.stage_started = time.monotonic()
            run = f"run {event['run']} · " if event.get("run") else ""
            model = f" [dim]({escape(event['model'])})[/]" if event.get("model") else ""
            self.console.print(f"[bold cyan]▶ {run}{event['stage']}[/]{model}")
        elif kind == "output" and self.echo_output:
            for line in event["lines"]:
                self.console.print(f"[dim]  │ {escape(line)}[/]", soft_wrap=True)
        elif kind == "run_done":
            colour = "green" if event["status"] == "ok" else "red"
            self.console.print(
                f"[{colour}]■ run {event['run']} {event['status']}[/] in {event['duration_s']:.1f} s · metrics: {escape(format_metrics(event['metrics']))}"
            )
        elif kind == "analysis":
            self.console.print(f"[magenta]✎ run {event['run']}:[/] {escape(event['summary'])}")
        elif kind == "syntax_retry":
            self.console.print(f"[yellow]! run {event['run']}: generated code does not compile ({escape(event['error'])}); asking once more[/]")
        elif kind == "warning":
            self.console.print(f"[yellow]! {escape(event['message'])}[/]")

    def node_done(self, node: str) -> None:
        """Note that a node finished (and was checkpointed)."""
        self.console.print(f"[dim]  ✓ {node} ({time.monotonic() - self.stage_started:.1f} s)[/]")


def ask_review(request: dict, console: Console, read: Callable[[str], str] = input) -> dict:
    """Show the coming run's train.py and its diff, then ask: approve, reject (with a reason) or edit in $EDITOR.

    Raises EOFError when there is no one to answer (stdin closed).
    """
    console.rule(f"[bold]Review: run {request['run']} · {escape(request['path'])}")
    console.print(Syntax(request["code"], "python", line_numbers=True, word_wrap=True))
    if request.get("diff"):
        console.rule("[bold]Changes since the previous run")
        console.print(Syntax(request["diff"], "diff", word_wrap=True))
    while True:
        answer = read("Run it? [a]pprove, [r]eject with a reason, [e]dit: ").strip().lower()
        if answer in ("a", "approve", "y", "yes"):
            return {"action": "approve"}
        if answer in ("r", "reject", "n", "no"):
            reason = read("Reason (it goes to the code model): ").strip()
            if reason:
                return {"action": "reject", "reason": reason}
            console.print("[yellow]A rejection needs a reason.[/]")
        elif answer in ("e", "edit"):
            return {"action": "edit", "code": edit_in_editor(request["code"])}


def edit_in_editor(code: str) -> str:
    """Open `code` in $VISUAL or $EDITOR (default vi) and return what was saved."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.py"
        path.write_text(code, encoding="utf-8")
        subprocess.run([*shlex.split(editor), str(path)], check=True)
        return path.read_text(encoding="utf-8")
