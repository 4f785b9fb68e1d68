"""Turns the graph's progress events into terminal lines; the nodes themselves never print."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape

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
