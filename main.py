"""The doorway: arguments, rendering the stream on the terminal, signals, the exit code. The runner itself is in runner.py."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from adapters.logs import one_line
from settings import ENV_SETTINGS, SettingsError, UsageError, resume_command

if TYPE_CHECKING:
    from adapters.files import ExperimentFiles

# LangGraph, the LLM client and the runner itself are imported once the arguments are read: `--help` stays instant.

EXIT_FINISHED, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = {
    **dict.fromkeys(["goal_met", "max_runs", "plateau", "budget"], EXIT_FINISHED),
    **dict.fromkeys(["stuck", "fatal", "llm_unavailable"], EXIT_ERROR),
    "interrupted": EXIT_INTERRUPTED,
}
INTERRUPT_GRACE_S = 3.0
"""After Ctrl-C, how long a step still in flight (an LLM call) may take before the runner leaves anyway."""
LEAVE_CLEANUP_S = 2.0
"""How long recording the halt and giving the terminal back may take as the runner leaves."""


class _Parser(argparse.ArgumentParser):
    """Options only by their whole names (`--max-run 3` is no abbreviation), and errors as one line with a guess at a typo."""

    def __init__(self, **kwargs) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):  # one line, not usage + message
        unknown = message.removeprefix("unrecognized arguments: ").split() if message.startswith("unrecognized arguments: ") else []
        for word in unknown:
            if word.startswith("-") and (close := difflib.get_close_matches(word.split("=")[0], self._option_string_actions, n=1, cutoff=0.6)):
                message += f" (did you mean {close[0]}?)"
                break
        raise UsageError(message)


def program() -> str:
    """How the user started the runner, for the hints that name a command: `python main.py` (as typed) or `auto-ml-runner`."""
    started_as = sys.argv[0] if sys.argv and sys.argv[0] else "main.py"
    if not started_as.endswith(".py"):  # the console script, wherever it is installed
        return os.path.basename(started_as)
    shorter = os.path.relpath(started_as)  # the same script, as a path from here when it is below here
    return f"python {shlex.quote(started_as if shorter.startswith('..') else shorter)}"


def _like(variable: str, flag: str):
    """An argparse type that reads a flag exactly as settings.py reads its environment variable."""
    parse = ENV_SETTINGS[variable].parse

    def convert(raw: str):
        try:
            return parse(flag, raw)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def parse_args(argv: list[str] | None, prog: str = "main.py") -> argparse.Namespace:
    parser = _Parser(
        prog=prog,
        description="Run an ML experiment described in IDEA.md, run after run, until done.",
        epilog=f"Also: `{prog} status [-d DIR]` shows where an experiment stands, without disturbing a runner at work.",
    )
    parser.add_argument("-d", "--experiment-dir", default=".", help="folder holding IDEA.md (default: current directory)")
    parser.add_argument("-r", "--max-runs", type=_like("MAX_RUNS", "--max-runs"), help="number of runs (default: MAX_RUNS, 10)")
    parser.add_argument("--resume", action="store_true", help="continue this experiment from its last finished step")
    parser.add_argument("--fresh", action="store_true", help="start anew, moving an earlier experiment's outputs in the folder aside into a dated folder")
    parser.add_argument("--model", metavar="NAME", help="the model of every stage (default: MODEL; CODE_MODEL etc. set one stage's)")
    parser.add_argument("--python", metavar="PATH", help="the Python that runs train.py, e.g. a conda env's (default: TRAIN_PYTHON, else this one)")
    parser.add_argument("--patience", type=_like("PATIENCE", "--patience"), help="stop after N runs without improving the goal metric")
    parser.add_argument(
        "--search", choices=("tree", "linear"), help="tree: draft, debug, improve the best; linear: build on the run before (default: SEARCH, tree)"
    )
    parser.add_argument(
        "--drafts", type=_like("DRAFTS", "--drafts"), metavar="N", help="how many of the first runs are fresh solutions (default: DRAFTS, else 1 per worker)"
    )
    parser.add_argument(
        "-w",
        "--workers",
        type=_like("WORKERS", "--workers"),
        metavar="K",
        help="runs in flight at once; each ended run is analysed while the others train (default: WORKERS, 1)",
    )
    parser.add_argument(
        "--ahead",
        type=_like("AHEAD", "--ahead"),
        metavar="N",
        help="runs written ahead while every worker is busy, started the moment one frees (default: AHEAD, 0)",
    )
    parser.add_argument(
        "--gpus", type=_like("GPUS", "--gpus"), metavar="LIST", help="GPUs to share out, e.g. 0,1,2,3, or none (default: GPUS, else every GPU nvidia-smi lists)"
    )
    parser.add_argument("--gpus-per-run", type=_like("GPUS_PER_RUN", "--gpus-per-run"), metavar="G", help="GPUs each run gets (default: GPUS_PER_RUN, 1)")
    parser.add_argument("--executor", choices=("local", "ray"), help="where runs train: this machine, or Ray tasks on a cluster (default: EXECUTOR, local)")
    parser.add_argument(
        "--cpus-per-run", type=_like("CPUS_PER_RUN", "--cpus-per-run"), metavar="C", help="with --executor ray, CPUs Ray reserves for each run (default: 1)"
    )
    parser.add_argument("--shared-data", metavar="PATH", help="with --executor ray, a folder every node mounts, used as DATA_DIR (default: data/ is shipped)")
    parser.add_argument(
        "--debug-depth",
        type=_like("DEBUG_DEPTH", "--debug-depth"),
        metavar="D",
        help="failed fixes in a row before a line is abandoned (default: DEBUG_DEPTH, 3)",
    )
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
    parser.set_defaults(program=prog)
    return parser.parse_args(argv)


def parse_status_args(argv: list[str], prog: str = "main.py") -> argparse.Namespace:
    parser = _Parser(prog=f"{prog} status", description="Show where an experiment stands, also while a runner works on it.")
    parser.set_defaults(program=prog)
    parser.add_argument("-d", "--experiment-dir", default=".", help="folder holding IDEA.md (default: current directory)")
    return parser.parse_args(argv)


def flag_settings(args: argparse.Namespace) -> dict:
    """The settings the command line's flags set (None: not given)."""
    return {
        "sandbox": args.sandbox,
        "no_network": args.no_network or None,
        "review": args.review or None,
        "patience": args.patience,
        "search": args.search,
        "drafts": args.drafts,
        "workers": args.workers,
        "ahead": args.ahead,
        "gpus": args.gpus,
        "gpus_per_run": args.gpus_per_run,
        "executor": args.executor,
        "cpus_per_run": args.cpus_per_run,
        "shared_data": args.shared_data,
        "debug_depth": args.debug_depth,
        "max_cost_usd": args.max_cost,
        "max_tokens": args.max_tokens,
        "max_hours": args.max_hours,
        "model": args.model,
        "train_python": args.python,
        "program": args.program,
    }


def run(args: argparse.Namespace, console: Console, errors: Console, on_leave: list[Callable[[], None]]) -> int:
    """Start or resume the experiment and stream it to the terminal; returns the exit code."""
    from adapters.sandbox import resolve_mode
    from adapters.views import Progress
    from runner import outcome, record_interrupt, session

    with session(
        args.experiment_dir,
        resume=args.resume,
        max_runs=args.max_runs,
        overrides=flag_settings(args),
        mlflow=args.mlflow,
        export=True,
        fresh=args.fresh,
    ) as started:
        settings = started.settings
        resume_hint = settings.resume_command(args.experiment_dir)
        if started.finished:  # only a higher run limit gives it more to do
            values = started.values()
            runs_done = values.get("run_count", 0)
            console.print(
                f"Experiment already finished ({values.get('stop_reason')}, {runs_done} runs); report: {values.get('report_path')}. "
                f"To go on: `{resume_hint} --max-runs M` with M above {runs_done}.",
                soft_wrap=True,
            )
            return EXIT_FINISHED
        on_leave.append(lambda: record_interrupt(started.app, started.config, settings))
        if started.moved_aside:
            errors.print(f"[yellow]! the earlier experiment's outputs were moved to {escape(str(started.moved_aside))}[/]", soft_wrap=True)
        for warning in started.warnings:
            errors.print(f"[yellow]! {escape(warning)}[/]", soft_wrap=True)

        progress = Progress(
            experiment=args.experiment_dir,
            max_runs=args.max_runs or settings.max_runs,
            models={"plan, report": settings.report_model, "codegen": settings.code_model, "analyze": settings.summarize_model},
            sandbox=(
                f"{settings.sandbox} on the Ray workers" if settings.executor == "ray" else resolve_mode(settings.sandbox, no_network=settings.no_network)[0]
            )
            + (", no network" if settings.no_network else ""),
            model_prices=settings.model_prices,
        )
        values = started.values()
        progress.seed(values, started.runs(values))
        view = _view(args, console, errors, progress)
        on_leave.append(view.stop)
        view.start()

        def answer(request: dict) -> dict:
            with view.paused():
                return _answer(request, settings, console)

        try:
            final = started.drive(on_event=view.event, on_update=view.update, answer=answer)
        finally:
            view.stop()

    reason = final.get("stop_reason") or "max_runs"
    console.print(escape(outcome(final)), soft_wrap=True)
    if final.get("halted"):
        _halt_message(reason, final.get("stop_detail", ""), resume_hint, errors)
    return EXIT_CODES.get(reason, EXIT_ERROR)


def _view(args: argparse.Namespace, console: Console, errors: Console, progress):
    """The live view on a terminal; plain lines with --plain or when stdout is a file or pipe; only the outcome with --quiet."""
    from adapters.views import LiveView, PlainView, QuietView

    if args.quiet:
        return QuietView(console, progress, errors)
    if args.plain or not console.is_terminal:
        return PlainView(console, progress)
    return LiveView(console, progress)


def _halt_message(reason: str, detail: str, hint: str, errors: Console) -> None:
    """One line on stderr for an experiment cut short: why, and the command that goes on once the cause is gone."""
    if reason == "interrupted":
        _interrupted_message(hint, errors)
        return
    when = "later" if reason == "llm_unavailable" else "after fixing it"
    errors.print(one_line(f"error ({reason}): {detail}. Every finished step is saved: {when}, resume with `{hint}`."), markup=False, soft_wrap=True)


def _answer(request: dict, settings, console: Console) -> dict:
    """The terminal's answer to an interrupt (today only review asks)."""
    from adapters.terminal import ask_review

    if not settings.review:  # review was switched off since this pause: let the run go ahead
        return {"action": "approve"}
    try:
        return ask_review(request, console)
    except EOFError:
        raise UsageError("review needs an answer on standard input; run it in a terminal, or resume without --review") from None


def status(args: argparse.Namespace, console: Console) -> int:
    """Print where an experiment stands, from its checkpoint (opened read-only) and files: a working runner is not disturbed."""
    from adapters.files import ExperimentFiles
    from adapters.views import Progress, runs_table
    from runner import outcome, read_state, unfinished
    from search import lineage_text, origin
    from settings import Settings, settings_env

    files = ExperimentFiles(args.experiment_dir)
    if not files.root.is_dir():
        raise UsageError(f"experiment directory {args.experiment_dir} does not exist")
    runner = files.runner()
    settings = Settings.from_env(settings_env(files.root), program=args.program)
    hint = settings.resume_command(args.experiment_dir)
    snapshot = read_state(files) if files.checkpoints.is_file() else None
    if snapshot is None or not snapshot.values:  # never started, or its first start stopped before its first step (preflight failed)
        console.print(f"{files.root}: not started yet; start it with `{settings.start_command(args.experiment_dir)}`", soft_wrap=True)
        return EXIT_FINISHED
    values = snapshot.values
    runs = files.runs_of(values)
    in_flight = values.get("in_flight") or []
    progress = Progress(experiment=str(files.root), max_runs=values.get("max_runs", 0), models={}, sandbox="", model_prices=settings.model_prices)
    progress.seed(values, runs)
    pending = unfinished(snapshot)
    coming = values.get("next_run") if pending or runner else None
    if coming and coming["number"] != len(runs) + len(in_flight) + 1:  # in flight already, or chosen before the last run ended
        coming = None

    if runner:
        state = f"running (process {runner['pid']}, since {runner['started']})"
    elif snapshot.interrupts:
        state = "waiting for review of the next train.py"
    elif pending:
        state = f"stopped between steps (next: {', '.join(pending)})"
    else:
        state = "finished" if not values.get("halted") else "cut short"
    console.print(f"[bold]{escape(str(files.root))}[/]: {state}", soft_wrap=True)
    flying = f" · {len(in_flight)} in flight" if in_flight else ""
    console.print(f"goal: {escape(values.get('goal') or '(not planned yet)')} · runs: {len(runs)} of {values.get('max_runs', '?')}{flying}", soft_wrap=True)
    if in_flight:
        console.print("in flight:" if runner else "in flight when the runner stopped (a resume starts them again):", soft_wrap=True)
        for flight in in_flight:
            console.print(escape(f"  {_in_flight_line(files, flight, running=runner is not None)}"), soft_wrap=True)
    if coming:
        why = f": {coming['reason']}" if coming.get("reason") else ""
        console.print(escape(f"next: run {coming['number']} · {origin(coming)}{why}"), soft_wrap=True)
    if runs:
        console.print(runs_table(progress))
    if (best := progress.best) is not None:
        console.print(f"best: {lineage_text(runs, best['number'])}", soft_wrap=True)
    console.print(f"LLM use: {progress.spent()}", soft_wrap=True)
    if values.get("stop_reason") and not pending:
        console.print(escape(outcome(values)), soft_wrap=True)
    if not runner and (pending or snapshot.interrupts or values.get("halted")):
        console.print(f"To go on: `{hint}`", soft_wrap=True)
    elif not runner:
        console.print(f"To go on with more runs: `{hint} --max-runs M` with M above {len(runs)}", soft_wrap=True)
    return EXIT_FINISHED


def _in_flight_line(files: ExperimentFiles, flight: dict, running: bool) -> str:
    """`run 3 · improve ← 1 · GPU 0 · 2:05 · epoch 3/10 (30%)`: a run in flight as its files tell (child-N.json while its
    train.py runs, output.log, result.json once it ended); its time only while a runner is at work (`running`)."""
    from adapters.logs import run_progress
    from adapters.machine import devices_text
    from adapters.views import elapsed
    from search import origin

    number = flight["number"]
    parts = [f"run {number}", origin(flight)]
    if (ended := files.read_result(number)) is not None:  # it ended; the runner has yet to take it (or a resume will)
        return " · ".join([*parts, f"ended: {ended['status']}"])
    log = files.run_dir(number) / "output.log"
    if (note := _child_note(files, number)) is not None:
        parts.append(devices_text(note.get("gpus") or [], note.get("node") or ""))
        if running and isinstance(note.get("started"), int | float):
            parts.append(elapsed(max(time.time() - note["started"], 0)))
    elif running and not log.exists():  # queued for a device, or about to start
        parts.append("waiting to start")
    if where := run_progress(log):
        parts.append(where)
    return " · ".join(parts)


def _child_note(files: ExperimentFiles, number: int) -> dict | None:
    """What run `number` wrote of itself while it runs (.runner/child-N.json: its GPUs, when it started), or None."""
    try:
        note = json.loads(files.child_file(number).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def main(argv: list[str] | None = None) -> int:
    styles = {"color_system": None} if os.environ.get("NO_COLOR") else {}  # no-color.org: rich alone would keep bold and dim
    console = Console(highlight=False, **styles)
    errors = Console(stderr=True, highlight=False, **styles)
    args = None
    started_as = program() if argv is None else "python main.py"
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["status"]:
            return status(parse_status_args(argv[1:], started_as), console)
        args = parse_args(argv, started_as)
        on_leave: list[Callable[[], None]] = []
        _stop_on_signals(_resume_hint(args), errors, on_leave)
        return run(args, console, errors, on_leave)
    except (UsageError, SettingsError) as exc:
        errors.print(one_line(f"error: {exc}"), markup=False, soft_wrap=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _interrupted_message(_resume_hint(args), errors)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _failed(exc, args, errors)


def _resume_hint(args: argparse.Namespace | None) -> str:
    return resume_command(args.program, args.experiment_dir) if args else "python main.py --resume"


def _failed(exc: Exception, args: argparse.Namespace | None, errors: Console) -> int:
    """The one line (and exit code) for an error that ended the runner: bad input, Ctrl-C during a run, the LLM, or anything else."""
    from adapters.files import ExperimentBusy, ExperimentInputError
    from adapters.llm import LLMError
    from adapters.process import RunCancelled

    if isinstance(exc, ExperimentBusy):
        watch = f": watch it with `{args.program} status -d {shlex.quote(args.experiment_dir)}`" if args else ""
        errors.print(one_line(f"error: {exc}{watch}"), markup=False, soft_wrap=True)
        return EXIT_USAGE
    if isinstance(exc, ExperimentInputError):
        errors.print(one_line(f"error: {exc}"), markup=False, soft_wrap=True)
        return EXIT_USAGE
    if isinstance(exc, RunCancelled):
        _interrupted_message(_resume_hint(args), errors)
        return EXIT_INTERRUPTED
    if args is not None and args.debug:
        traceback.print_exc()
    if isinstance(exc, LLMError):
        reason = "llm_unavailable" if exc.kind == "unavailable" else "fatal"
        when = "later" if exc.kind == "unavailable" else "after fixing it"
        if getattr(exc, "nothing_saved", False):
            hint = f" Nothing was spent: {when}, run the same command again."
        else:
            hint = f" Every finished step is saved: {when}, resume with `{_resume_hint(args)}`." if args else ""
        errors.print(one_line(f"error ({reason}): {exc}.{hint}"), markup=False, soft_wrap=True)
        return EXIT_ERROR
    hint = f" State is saved: after fixing it, resume with `{_resume_hint(args)}`." if args else ""
    errors.print(one_line(f"error: {type(exc).__name__}: {exc}.{hint}"), markup=False, soft_wrap=True)
    return EXIT_ERROR


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
    from adapters.process import cancel_running_scripts  # imported now: not inside a signal handler

    state = {"stopping": False}

    def cleanups() -> None:
        for cleanup in on_leave:
            cleanup()

    def leave() -> None:
        # In a thread, with a deadline: the main thread may hold a lock a cleanup needs (the checkpointer's, mid-read).
        helper = threading.Thread(target=cleanups, daemon=True)
        helper.start()
        helper.join(timeout=LEAVE_CLEANUP_S)
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


def __getattr__(name: str):
    """`from main import run_experiment` works too; the runner is imported only then."""
    if name == "run_experiment":
        from runner import run_experiment

        return run_experiment
    raise AttributeError(f"module 'main' has no attribute {name!r}")


def cli() -> None:
    """Console-script entry point."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code) if code == EXIT_INTERRUPTED else sys.exit(code)  # don't wait for a worker thread stuck in an LLM call


if __name__ == "__main__":
    cli()
