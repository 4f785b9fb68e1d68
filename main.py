"""The doorway: arguments, settings, the checkpointer, rendering the stream, the exit code."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sqlite3
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dotenv import load_dotenv
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command
from rich.console import Console
from rich.markup import escape

from adapters.files import ExperimentFiles, ExperimentInputError
from adapters.llm import LLMError
from adapters.preflight import preflight
from adapters.process import RunCancelled, cancel_running_scripts
from adapters.sandbox import resolve_mode
from adapters.terminal import ask_review
from adapters.tracking import local_store_uri, mlflow_installed
from adapters.views import LiveView, PlainView, Progress, QuietView, runs_table
from graph import build_graph
from graph.experiment import halt, resume_halted
from nodes.records import best_run, goal_from_idea, parse_goal, resume_command
from nodes.report import report
from nodes.stop_rules import run_limit
from settings import ENV_SETTINGS, Settings, SettingsError

THREAD_ID = "experiment"
"""One experiment folder, one checkpoint database, one thread."""

EXIT_FINISHED, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = {
    **dict.fromkeys(["goal_met", "max_runs", "plateau", "budget"], EXIT_FINISHED),
    **dict.fromkeys(["stuck", "fatal", "llm_unavailable"], EXIT_ERROR),
    "interrupted": EXIT_INTERRUPTED,
}
INTERRUPT_GRACE_S = 3.0
"""After Ctrl-C, how long a step still in flight (an LLM call) may take before the runner leaves anyway."""


class UsageError(Exception):
    """Bad arguments or input: shown as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UsageError(message)


def _like(variable: str, flag: str):
    """An argparse type that reads a flag exactly as settings.py reads its environment variable."""
    parse = ENV_SETTINGS[variable].parse

    def convert(raw: str):
        try:
            return parse(flag, raw)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="main.py", description="Run an ML experiment described in IDEA.md, run after run, until done.")
    parser.add_argument("-d", "--experiment-dir", default=".", help="folder holding IDEA.md (default: current directory)")
    parser.add_argument("-r", "--max-runs", type=_like("MAX_RUNS", "--max-runs"), help="number of runs (default: MAX_RUNS, 10)")
    parser.add_argument("--resume", action="store_true", help="continue this experiment from its last finished step")
    parser.add_argument("--patience", type=_like("PATIENCE", "--patience"), help="stop after N runs without improving the goal metric")
    parser.add_argument("--max-cost", type=_like("MAX_COST_USD", "--max-cost"), metavar="USD", help="LLM spend after which no new run starts")
    parser.add_argument("--max-tokens", type=_like("MAX_TOKENS", "--max-tokens"), metavar="N", help="LLM tokens after which no new run starts")
    parser.add_argument("--max-hours", type=_like("MAX_HOURS", "--max-hours"), metavar="H", help="hours of runs after which no new run starts")
    parser.add_argument("--sandbox", choices=("auto", "bwrap", "none"), help="where train.py runs (default: SANDBOX, auto)")
    parser.add_argument("--no-network", action="store_true", help="cut train.py off every network, loopback included")
    parser.add_argument("--review", action="store_true", help="approve, reject or edit each train.py before it runs")
    parser.add_argument("--mlflow", action="store_true", help="log each run to MLflow: at MLFLOW_TRACKING_URI, else in .runner/mlflow.db")
    parser.add_argument("--plain", action="store_true", help="one line per event, no live view (the default when stdout is not a terminal)")
    parser.add_argument("--quiet", action="store_true", help="print only the final outcome")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def parse_status_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="main.py status", description="Show where an experiment stands, also while a runner works on it.")
    parser.add_argument("-d", "--experiment-dir", default=".", help="folder holding IDEA.md (default: current directory)")
    return parser.parse_args(argv)


def load_settings(experiment: Path, overrides: dict, mlflow: bool = False) -> Settings:
    """Settings from `overrides` (flags, keyword arguments), then the environment, then <experiment>/.env, then ./.env (the first to set a name wins)."""
    load_dotenv(experiment / ".env", override=False)
    load_dotenv(Path.cwd() / ".env", override=False)
    if mlflow and "mlflow_tracking_uri" not in overrides:
        overrides = {**overrides, "mlflow_tracking_uri": ENV_SETTINGS["MLFLOW_TRACKING_URI"].read(os.environ) or local_store_uri(experiment)}
    settings = Settings.from_env(**{name: value for name, value in overrides.items() if value is not None})
    if settings.mlflow_tracking_uri and not mlflow_installed():
        asked = "--mlflow is given" if mlflow else "MLFLOW_TRACKING_URI is set"
        raise UsageError(f"{asked} but mlflow is not installed: pip install -e '.[mlflow]'")
    settings.check()
    resolve_mode(settings.sandbox, no_network=settings.no_network)  # a sandbox that cannot work stops here, before any LLM call
    return settings


def flag_settings(args: argparse.Namespace) -> dict:
    """The settings the command line's flags set (None: not given)."""
    return {
        "sandbox": args.sandbox,
        "no_network": args.no_network or None,
        "review": args.review or None,
        "patience": args.patience,
        "max_cost_usd": args.max_cost,
        "max_tokens": args.max_tokens,
        "max_hours": args.max_hours,
    }


def prepare(experiment_dir: str, resume: bool, overrides: dict, mlflow: bool = False) -> tuple[ExperimentFiles, Settings]:
    """The experiment's files and settings, once everything that can be checked before any LLM call is (UsageError otherwise)."""
    files = ExperimentFiles(experiment_dir)
    if not files.root.is_dir():
        raise UsageError(f"experiment directory {experiment_dir} does not exist")
    settings = load_settings(files.root, overrides, mlflow)
    if not resume:
        idea = files.read_idea()  # ExperimentInputError when missing or empty
        try:
            goal_from_idea(idea)
        except ValueError as exc:  # a goal line that does not parse
            raise UsageError(f"{files.idea}: {exc}") from None
    elif not files.checkpoints.is_file():
        raise UsageError(f"nothing to resume in {files.root}: start it without --resume")
    return files, settings


@contextmanager
def opened(files: ExperimentFiles) -> Iterator[tuple[CompiledStateGraph, dict]]:
    """The experiment graph on the folder's own checkpoint database, held under the runner lock."""
    with files.runner_lock(), SqliteSaver.from_conn_string(str(files.checkpoints)) as checkpointer:
        yield build_graph().compile(checkpointer=checkpointer, name="experiment"), {"configurable": {"thread_id": THREAD_ID}}


def drive(app: CompiledStateGraph, config: dict, stream_input, settings: Settings, *, on_event, on_update, answer) -> dict:
    """Stream the graph to its end: custom events to `on_event`, node updates to `on_update`, each interrupt to `answer`; the final state."""
    while True:
        for mode, chunk in app.stream(stream_input, config, context=settings, stream_mode=["updates", "custom"], durability="sync"):
            if mode == "custom":
                on_event(chunk)
            else:
                for node, update in chunk.items():
                    if node != "__interrupt__":
                        on_update(node, update)
        snapshot = app.get_state(config)
        if not snapshot.interrupts:
            return snapshot.values
        stream_input = Command(resume=answer(snapshot.interrupts[0].value))


def run_experiment(
    experiment_dir: str | Path,
    max_runs: int | None = None,
    *,
    resume: bool = False,
    on_event: Callable[[dict], None] | None = None,
    on_review: Callable[[dict], dict] | None = None,
    **settings,
) -> dict:
    """What `python main.py` does, without the terminal: start (or with resume=True, continue) an experiment; its final state.

    `settings` are Settings fields (e.g. code_model="...", max_cost_usd=2.0, sandbox="none") over the
    environment and .env files. `on_event` receives the progress events the nodes emit. With review on
    (review=True), `on_review(request)` answers each pause: {"action": "approve"}, {"action": "reject", "reason": ...} or
    {"action": "edit", "code": ...}. Bad input raises UsageError, a key or model the provider rejects
    LLMError; an experiment cut short returns with stop_reason fatal, llm_unavailable or interrupted.
    """
    files, chosen = prepare(str(experiment_dir), resume, settings)
    if chosen.review and on_review is None:
        raise UsageError("review is on: pass on_review=, a function that answers each pause")
    with opened(files) as (app, config):
        stream_input = start_or_resume(app, config, files, resume, max_runs, chosen)
        if stream_input is False:
            return app.get_state(config).values
        for warning in preflight(chosen):
            (on_event or _ignore)({"event": "warning", "message": warning})
        return drive(
            app,
            config,
            stream_input,
            chosen,
            on_event=on_event or _ignore,
            on_update=lambda node, update: None,
            answer=lambda request: on_review(request) if chosen.review and on_review else {"action": "approve"},
        )


def _ignore(event: dict) -> None:
    pass


def run(args: argparse.Namespace, console: Console, errors: Console, on_leave: list[Callable[[], None]]) -> int:
    """Start or resume the experiment and stream it to the terminal; returns the exit code."""
    files, settings = prepare(args.experiment_dir, args.resume, flag_settings(args), args.mlflow)
    resume_hint = resume_command(args.experiment_dir)
    with opened(files) as (app, config):
        on_leave.append(lambda: _record_interrupt(app, config, settings))
        stream_input = start_or_resume(app, config, files, args.resume, args.max_runs, settings)
        if stream_input is False:  # finished: only a higher run limit gives it more to do
            values = app.get_state(config).values
            runs_done = len(values.get("runs", []))
            console.print(
                f"Experiment already finished ({values.get('stop_reason')}, {runs_done} runs); report: {values.get('report_path')}. "
                f"To go on: `{resume_hint} --max-runs M` with M above {runs_done}.",
                soft_wrap=True,
            )
            return EXIT_FINISHED

        try:  # the key and every model are checked before anything is spent
            warnings = preflight(settings)
        except LLMError as exc:
            exc.nothing_saved = isinstance(stream_input, dict)  # a fresh start: the same command again, not --resume
            raise
        for warning in warnings:
            errors.print(f"[yellow]! {escape(warning)}[/]", soft_wrap=True)

        progress = Progress(
            experiment=args.experiment_dir,
            max_runs=args.max_runs or settings.max_runs,
            models={"plan, report": settings.report_model, "codegen": settings.code_model, "analyze": settings.summarize_model},
            sandbox=resolve_mode(settings.sandbox, no_network=settings.no_network)[0] + (", no network" if settings.no_network else ""),
            model_prices=settings.model_prices,
        )
        progress.seed(app.get_state(config).values)
        view = _view(args, console, errors, progress)
        on_leave.append(view.stop)
        view.start()

        def answer(request: dict) -> dict:
            with view.paused():
                return _answer(request, settings, console)

        try:
            final = drive(app, config, stream_input, settings, on_event=view.event, on_update=view.update, answer=answer)
        finally:
            view.stop()

    reason = final.get("stop_reason") or "max_runs"
    console.print(escape(outcome(final)), soft_wrap=True)
    if final.get("halted"):
        _halt_message(reason, final.get("stop_detail", ""), resume_hint, errors)
    return EXIT_CODES.get(reason, EXIT_ERROR)


def _record_interrupt(app, config: dict, settings: Settings) -> None:
    """Leaving on Ctrl-C while a step still runs (an LLM call, the review prompt): record the halt and write REPORT.md, as the graph would have."""
    try:
        snapshot = app.get_state(config)
        if not snapshot.next or snapshot.values.get("halted"):
            return
        stage = snapshot.next[0]
        app.update_state(config, halt(snapshot.values, stage, "interrupted", f"stopped by the user during {stage}"), as_node=stage)
        written = report(app.get_state(config).values, Runtime(context=settings))  # a halt's report: the record, no LLM call
        app.update_state(config, written, as_node="report")
    except Exception:  # leaving matters more: a resume goes on from the last finished step all the same
        pass


def _view(args: argparse.Namespace, console: Console, errors: Console, progress: Progress) -> PlainView | LiveView:
    """The live view on a terminal; plain lines with --plain or when stdout is a file or pipe; only the outcome with --quiet."""
    if args.quiet:
        return QuietView(console, progress, errors)
    if args.plain or not console.is_terminal:
        return PlainView(console, progress)
    return LiveView(console, progress)


def outcome(values: dict) -> str:
    """The last word of every run: why it stopped, the best run and its goal metric, and where the report is."""
    reason = values.get("stop_reason") or "max_runs"
    runs = values.get("runs", [])
    if halted := values.get("halted"):
        why = f"{reason} during {halted['stage']}"
    else:
        why = f"{reason} ({values['stop_detail']})" if values.get("stop_detail") else reason
    parts = [f"Stopped: {why} after {len(runs)} runs"]
    best = best_run(runs, values.get("goal", ""))
    if best is not None:
        metric = parse_goal(values["goal"])[0]
        parts.append(f"best: run {best['number']} ({metric}={best['metrics'][metric]:.6g})")
    if values.get("report_path"):
        parts.append(f"report: {values['report_path']}" + (" (unfinished)" if halted else ""))
    return " · ".join(parts)


def _halt_message(reason: str, detail: str, hint: str, errors: Console) -> None:
    """One line on stderr for an experiment cut short: why, and the command that goes on once the cause is gone."""
    if reason == "interrupted":
        _interrupted_message(hint, errors)
        return
    when = "later" if reason == "llm_unavailable" else "after fixing it"
    errors.print(_one_line(f"error ({reason}): {detail}. Every finished step is saved: {when}, resume with `{hint}`."), markup=False, soft_wrap=True)


def _answer(request: dict, settings: Settings, console: Console) -> dict:
    """The terminal's answer to an interrupt (today only review asks)."""
    if not settings.review:  # review was switched off since this pause: let the run go ahead
        return {"action": "approve"}
    try:
        return ask_review(request, console)
    except EOFError:
        raise UsageError("review needs an answer on standard input; run it in a terminal, or resume without --review") from None


def start_or_resume(app: CompiledStateGraph, config: dict, files: ExperimentFiles, resume: bool, max_runs: int | None, settings: Settings):
    """The graph input for this invocation: a fresh input, None or a Command to resume, or False when it is finished and nothing more is asked."""
    resume_hint = resume_command(str(files.root))
    snapshot = app.get_state(config)
    has_state = bool(snapshot.values)
    if not resume:
        if has_state or files.existing_runs():
            raise UsageError(f"{files.root} already holds an experiment: continue it with `{resume_hint}`, or start afresh in a new directory")
        return {"experiment_dir": str(files.root), "max_runs": max_runs or settings.max_runs}

    if not has_state:
        raise UsageError(f"nothing to resume in {files.root}: start it without --resume")
    values = snapshot.values
    update: dict = {}
    if values.get("experiment_dir") != str(files.root):  # the folder was moved or renamed
        update["experiment_dir"] = str(files.root)
    runs_done = len(values.get("runs", []))
    halted = values.get("halted")
    if snapshot.next or halted:
        if max_runs:
            if max_runs < runs_done:
                raise UsageError(f"--max-runs {max_runs} is below the {runs_done} runs already done")
            update["max_runs"] = max_runs
        resume_at = halted["stage"] if halted else snapshot.next[0]
        if resume_at in ("codegen", "review") and update.get("max_runs", values.get("max_runs", 0)) <= runs_done:
            # Past the check before each run (summarize), under a run limit lowered since: no new run.
            stop = run_limit(update.get("max_runs", values.get("max_runs", 0)))
            app.update_state(config, {**update, "stop_reason": stop.reason, "stop_detail": stop.detail, "halted": None}, as_node="analyze")
            return None
    if halted and not (halted["stage"] == "report" and update.get("max_runs", 0) > runs_done):
        if snapshot.next:  # killed while report wrote the record of the halt: that record is not needed now
            app.update_state(config, None, as_node=snapshot.next[0])
        return resume_halted(halted, update)  # cut short by an error or Ctrl-C: run that step again
    if snapshot.next:  # stopped between steps (killed, or left during an LLM call): go on from the last finished one
        if update:
            app.update_state(config, update)
        return None

    # Finished: only a higher run limit gives it more to do.
    if not max_runs or max_runs <= runs_done:
        return False
    app.update_state(config, {**update, "max_runs": max_runs, "stop_reason": None, "stop_detail": "", "halted": None}, as_node="analyze")
    return None


def status(args: argparse.Namespace, console: Console) -> int:
    """Print where an experiment stands, from its checkpoint (opened read-only) and files: a working runner is not disturbed."""
    files = ExperimentFiles(args.experiment_dir)
    if not files.root.is_dir():
        raise UsageError(f"experiment directory {args.experiment_dir} does not exist")
    hint = resume_command(args.experiment_dir)
    runner = files.runner()
    if not files.checkpoints.is_file():
        console.print(f"{files.root}: not started yet; start it with `python main.py -d {shlex.quote(args.experiment_dir)}`", soft_wrap=True)
        return EXIT_FINISHED
    connection = sqlite3.connect(f"file:{files.checkpoints}?mode=ro", uri=True, timeout=10, check_same_thread=False)
    try:
        snapshot = build_graph().compile(checkpointer=SqliteSaver(connection)).get_state({"configurable": {"thread_id": THREAD_ID}})
    finally:
        connection.close()
    values = snapshot.values
    runs = values.get("runs", [])
    progress = Progress(experiment=str(files.root), max_runs=values.get("max_runs", 0), models={}, sandbox="", model_prices=Settings.from_env().model_prices)
    progress.seed(values)

    if runner:
        state = f"running (process {runner['pid']}, since {runner['started']})"
    elif snapshot.interrupts:
        state = "waiting for review of the next train.py"
    elif snapshot.next:
        state = f"stopped between steps (next: {', '.join(snapshot.next)})"
    else:
        state = "finished" if not values.get("halted") else "cut short"
    console.print(f"[bold]{escape(str(files.root))}[/]: {state}", soft_wrap=True)
    console.print(f"goal: {escape(values.get('goal') or '(not planned yet)')} · runs: {len(runs)} of {values.get('max_runs', '?')}", soft_wrap=True)
    if runs:
        console.print(runs_table(progress))
    console.print(f"LLM use: {progress.spent()}", soft_wrap=True)
    if values.get("stop_reason") and not snapshot.next:
        console.print(escape(outcome(values)), soft_wrap=True)
    if not runner and (snapshot.next or snapshot.interrupts or values.get("halted")):
        console.print(f"To go on: `{hint}`", soft_wrap=True)
    elif not runner and not snapshot.next:
        console.print(f"To go on with more runs: `{hint} --max-runs M` with M above {len(runs)}", soft_wrap=True)
    return EXIT_FINISHED


def main(argv: list[str] | None = None) -> int:
    styles = {"color_system": None} if os.environ.get("NO_COLOR") else {}  # no-color.org: rich alone would keep bold and dim
    console = Console(highlight=False, **styles)
    errors = Console(stderr=True, highlight=False, **styles)
    args = None
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["status"]:
            return status(parse_status_args(argv[1:]), console)
        args = parse_args(argv)
        on_leave: list[Callable[[], None]] = []
        _stop_on_signals(resume_command(args.experiment_dir), errors, on_leave)
        return run(args, console, errors, on_leave)
    except (UsageError, SettingsError, ExperimentInputError) as exc:
        errors.print(_one_line(f"error: {exc}"), markup=False, soft_wrap=True)
        return EXIT_USAGE
    except (KeyboardInterrupt, RunCancelled):
        _interrupted_message(resume_command(args.experiment_dir) if args else "python main.py --resume", errors)
        return EXIT_INTERRUPTED
    except LLMError as exc:
        if args is not None and args.debug:
            traceback.print_exc()
        reason = "llm_unavailable" if exc.kind == "unavailable" else "fatal"
        when = "later" if exc.kind == "unavailable" else "after fixing it"
        if getattr(exc, "nothing_saved", False):
            hint = f" Nothing was spent: {when}, run the same command again."
        else:
            hint = f" Every finished step is saved: {when}, resume with `{resume_command(args.experiment_dir)}`." if args else ""
        errors.print(_one_line(f"error ({reason}): {exc}.{hint}"), markup=False, soft_wrap=True)
        return EXIT_ERROR
    except Exception as exc:
        if args is not None and args.debug:
            traceback.print_exc()
        detail = f"{type(exc).__name__}: {exc}"
        hint = f" State is saved: after fixing it, resume with `{resume_command(args.experiment_dir)}`." if args else ""
        errors.print(_one_line(f"error: {detail}.{hint}"), markup=False, soft_wrap=True)
        return EXIT_ERROR


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _interrupted_message(hint: str, errors: Console) -> None:
    errors.print(f"interrupted: every finished step is saved; resume with `{hint}`", markup=False, soft_wrap=True)


def _stop_on_signals(hint: str, errors: Console, on_leave: list[Callable[[], None]]) -> None:
    """First Ctrl-C (or SIGTERM): kill the running train.py's process tree and stop; a second one exits at once.

    Nodes run in LangGraph's worker threads, so the main thread cannot unwind them: the running
    child is killed, execute raises RunCancelled, and the stream ends with it. An LLM call in
    flight cannot be cancelled that way, so after a short grace the process leaves regardless;
    with durability="sync" every finished step is already in the checkpoint. `on_leave` is run before
    such an exit (it gives the terminal back from the live view).
    """
    state = {"stopping": False}

    def leave() -> None:
        for cleanup in on_leave:
            cleanup()
        _interrupted_message(hint, errors)
        sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)

    def on_signal(signum, frame) -> None:
        if state["stopping"]:
            leave()
        state["stopping"] = True
        cancel_running_scripts()
        timer = threading.Timer(INTERRUPT_GRACE_S, leave)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def cli() -> None:
    """Console-script entry point."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code) if code == EXIT_INTERRUPTED else sys.exit(code)  # don't wait for a worker thread stuck in an LLM call


if __name__ == "__main__":
    cli()
