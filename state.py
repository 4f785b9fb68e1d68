"""What an experiment knows: the graph's state, made of JSON-native values only.

Every value is a str, int, float, bool, None, list or dict (paths as str), so checkpoints
need no custom serializer. Nothing here grows with the runs: every checkpoint holds the whole state, so the run
records (run_N/result.json) and the older finished tasks (tasks.json) live in the files only.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import BaseModel, Field
from typing_extensions import TypedDict


class Task(TypedDict):
    """One line of tasks.json."""

    id: int
    """Stable number, starting at 1."""
    title: str
    """What to try or find out."""
    status: str
    """One of: todo, in_progress, done, dropped."""
    notes: str
    """What was learned about it so far."""
    runs: list[int]
    """Numbers of the runs that worked on it."""


class RunRecord(TypedDict):
    """What happened in one run of train.py, taken mechanically from its process and log."""

    number: int
    """N of run_N/."""
    status: str
    """ok (exit 0), failed (non-zero exit), timeout, cancelled (stopped in flight when another run ended the experiment), or
    grade_failed (it ended well, but grade.py crashed, timed out or printed no JSON on it)."""
    exit_code: int | None
    """The process's exit status; negative for a signal; None if it never ended by itself."""
    duration_s: float
    """Wall-clock seconds."""
    metrics: dict[str, float]
    """The metrics that judge the run (goal, best, plateau, search, report). With a grader (grade.py), what it graded, and
    none when it did not grade the run; without one, what the script reported: metrics.json if it wrote one, else the
    last values in the log."""
    error: str
    """Last line of the traceback, or empty."""
    operator: str
    """How the run's code came about: draft (a fresh solution), improve (one change to a good parent) or debug (a fix of a failed parent)."""
    parent: int | None
    """The run whose code this one builds on; None for a draft."""
    node: NotRequired[str]
    """The machine it ran on (a Ray node's host name with EXECUTOR=ray); absent in records from before it was kept."""
    gpus: NotRequired[list[str]]
    """The GPUs it had (its CUDA_VISIBLE_DEVICES); absent in records from before they were kept."""
    reported: NotRequired[dict[str, float]]
    """With a grader only: the metrics the script reported about itself (metrics.json, else its log), kept beside the grade."""
    flags: NotRequired[list[str]]
    """Why its numbers deserve doubt, a line each (trust.py): a self-report the grade contradicts, links out of its folder
    removed before grading; without a grader, a perfect score or a test score far above validation."""


class NextRun(TypedDict):
    """The search's choice for the coming run (see search.next_choice), made before its code is written."""

    number: int
    """N of run_N/: runs are numbered in the order they start."""
    operator: str
    """draft, improve or debug."""
    parent: int | None
    """The run it builds on; None for a draft."""
    reason: str
    """Why the search chose it, in words."""
    change: NotRequired[str]
    """The one change the code model named in advance (improve), once it has written the code."""


class InFlight(NextRun):
    """A run submitted to the executor and not recorded yet: training, or waiting for a device."""

    submitted_at: float
    """time.time() when it was handed to the executor."""


class Usage(TypedDict):
    """Tokens spent by one LLM call, or (in the state) by all the calls of one stage and model."""

    stage: str
    """Node that made the call."""
    model: str
    """Model name as sent to the provider."""
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    """Cost reported by the provider (OpenRouter does), else None."""
    cached_tokens: NotRequired[int]
    """Of the input tokens, those the provider read from its prompt cache (at a lower price); absent when it reported none."""
    calls: NotRequired[int]
    """How many calls this counts; 1 when absent."""


def add_usage(existing: list[Usage], new: list[Usage]) -> list[Usage]:
    """The state's usage: summed per stage, model and whether the provider reported the cost, so it stays
    a few entries however many calls there were (every checkpoint holds the whole state; the audit log
    has each call)."""
    totals: dict[tuple[str, str, bool], Usage] = {}
    for call in [*existing, *new]:
        key = (call["stage"], call["model"], call["cost_usd"] is not None)
        if (total := totals.get(key)) is None:
            totals[key] = Usage(**{**call, "calls": call.get("calls", 1)})
            continue
        total["input_tokens"] += call["input_tokens"]
        total["output_tokens"] += call["output_tokens"]
        if cached := call.get("cached_tokens", 0):
            total["cached_tokens"] = total.get("cached_tokens", 0) + cached
        total["calls"] += call.get("calls", 1)
        if call["cost_usd"] is not None:
            total["cost_usd"] = (total["cost_usd"] or 0.0) + call["cost_usd"]
    return list(totals.values())


def priced_cost(call: Usage, price: list[float]) -> float:
    """USD of a call's tokens at a MODEL_PRICES price: input, output and, where given, cached input (else input's)."""
    per_input, per_output, per_cached = (*price, price[0])[:3]
    cached = call.get("cached_tokens", 0)
    return ((call["input_tokens"] - cached) * per_input + cached * per_cached + call["output_tokens"] * per_output) / 1e6


def spend(usage: list[Usage], prices: dict[str, list[float]]) -> tuple[float | None, str]:
    """USD spent and where the figure comes from; None when neither the provider nor MODEL_PRICES tell."""
    total, reported, priced, unknown = 0.0, 0, 0, 0
    for call in usage:
        calls = call.get("calls", 1)
        if call["cost_usd"] is not None:
            total += call["cost_usd"]
            reported += calls
        elif call["model"] in prices:
            total += priced_cost(call, prices[call["model"]])
            priced += calls
        else:
            unknown += calls
    if reported + priced == 0:
        return (0.0 if not usage else None), "no LLM call yet" if not usage else "not reported by the provider, and no MODEL_PRICES"
    source = "reported by the provider" if not priced else "MODEL_PRICES" if not reported else "provider reports and MODEL_PRICES"
    if unknown:
        source += f" ({unknown} calls without a price)"
    return total, source


class Halt(TypedDict):
    """Where an experiment was cut short, and the stop it had reached before (if any), to resume from there."""

    stage: str
    """The node that failed or was interrupted; a resume runs it again."""
    stop_reason: str | None
    """The stop reason in force when it happened (set when the report itself failed), else None."""
    stop_detail: str


class InputState(TypedDict):
    """What a caller must give the graph."""

    experiment_dir: str
    """Folder holding IDEA.md; every file of the experiment lives under it."""
    max_runs: NotRequired[int]
    """How many runs before the report; defaults to the MAX_RUNS setting."""


class OutputState(TypedDict):
    """What the graph hands back when it ends."""

    stop_reason: str
    """Why the loop ended: goal_met, max_runs, plateau, budget or stuck; or fatal, llm_unavailable or interrupted (resumable)."""
    stop_detail: str
    """The stop reason in words."""
    report_path: str
    """Path of REPORT.md."""
    run_count: int
    """How many runs finished; each one's record is run_N/result.json (ExperimentFiles.read_runs)."""
    best_run: RunRecord | None
    """The best run by the goal's metric, if any run reported it."""


class ExperimentState(InputState):
    """Everything the experiment knows between steps."""

    idea: NotRequired[str]
    """Contents of IDEA.md when the experiment began."""
    plan: NotRequired[str]
    """Contents of PLAN.md."""
    goal: NotRequired[str]
    """The goal the planner read from the idea, in one line."""
    tasks: NotRequired[list[Task]]
    """The working tasks: the open ones and the latest finished ones, what prompts read (see nodes.records.working_tasks).
    tasks.json holds every task; the older finished ones live there only, so the state does not grow with the runs."""
    tasks_created: NotRequired[int]
    """How many tasks were ever created (the highest id): tasks.json's tasks past it come from a step cut short."""
    machine: NotRequired[str]
    """What train.py runs on, as the code model is told: the interpreter, its ML packages, CPUs, memory and GPUs
    (adapters.machine.machine_text), gathered once when the experiment begins."""
    structured_output: NotRequired[dict[str, str]]
    """How each model gives structured replies (adapters.llm.STRUCTURED_METHODS), by model name: found by its first
    structured request and kept, so that neither a later request nor a resume probes the server again."""
    findings_digest: NotRequired[str]
    """KEY_FINDINGS.md as prompts read it, within its budget (see nodes.records.findings_digest); made by analyze.
    The sections themselves live in the file only: every checkpoint holds the whole state."""
    run_count: NotRequired[int]
    """How many runs finished (or were cancelled). Their records are run_N/result.json, never the state: every checkpoint holds the whole
    state, and a search runs hundreds of runs (ExperimentFiles.read_runs reads them)."""
    latest_run: NotRequired[RunRecord | None]
    """The record of the run that finished last, as analyze and the views read it."""
    best_run: NotRequired[RunRecord | None]
    """The best run so far by the goal's metric, kept up to date by analyze."""
    next_run: NotRequired[NextRun | None]
    """What the coming run does (draft, improve or debug) and on which parent: chosen by summarize, read by codegen and execute;
    None when no new run may start now (every worker busy, or a limit reached while runs are still in flight)."""
    in_flight: NotRequired[list[InFlight]]
    """The runs submitted and not recorded yet (at most WORKERS), in the order they were submitted. The runs given out are
    numbered 1 to run_count + len(in_flight): every one either finished (run_N/result.json) or is in here."""
    slots: NotRequired[int]
    """How many runs may be in flight at once (WORKERS, plus AHEAD written ahead), as execute last read it: whether another
    run is written before one in flight ends (the edge after execute)."""
    latest_change: NotRequired[str]
    """The change the latest finished run named in advance (improve), as analyze tells the analyst."""
    usage: Annotated[list[Usage], add_usage]
    """LLM tokens and cost so far, summed per stage and model (see add_usage)."""
    last_summary: NotRequired[str]
    """The latest run's bounded mechanical summary (status, metrics, traceback, the log's tail), as analyze reads it.
    Only the latest: a parent's summary is made again from its files (nodes.records.run_summary)."""
    previous_digest: NotRequired[str]
    """Bounded text that codegen reads besides the parent's code: the parent's summary and a line for recent runs and
    the best (improve, debug), or one line for each other draft's approach (draft); made by summarize."""
    code: NotRequired[str]
    """The train.py that codegen wrote (or the reviewer edited) for the coming run; a parent's code is read from run_P/train.py."""
    review_feedback: NotRequired[str]
    """Why the reviewer rejected the last train.py; empty once a version is approved."""
    goal_met: NotRequired[bool]
    """The analyst's judgement on the last run."""
    stop_reason: NotRequired[str | None]
    """Why the loop ends (goal_met, max_runs, plateau, budget, stuck; set by analyze), or why it was cut short
    (fatal, llm_unavailable, interrupted; see `halted`); None while it goes on."""
    stop_detail: NotRequired[str]
    """The stop reason in words, with the numbers behind it."""
    report_path: NotRequired[str]
    """Set by report."""
    halted: NotRequired[Halt | None]
    """Set when an error or Ctrl-C cut the experiment short; a resume re-enters `halted.stage`."""


# Structured replies the LLM gives; nodes turn them into the records above.


class NewTask(BaseModel):
    """A task the planner or analyst proposes."""

    title: str = Field(description="What to try or find out, in one line.")
    notes: str = Field(default="", description="Why, and how to tell it worked.")


class ExperimentPlan(BaseModel):
    """The planner's reply: goal, PLAN.md and the first tasks."""

    goal: str = Field(description="The measurable goal in one line, e.g. 'test_accuracy >= 0.99'.")
    plan: str = Field(description="PLAN.md in Markdown.")
    tasks: list[NewTask] = Field(description="3 to 8 ordered tasks.")


class TaskUpdate(BaseModel):
    """A change to an existing task."""

    id: int = Field(description="The task's id.")
    status: Literal["todo", "in_progress", "done", "dropped"]
    notes: str = Field(default="", description="What was learned about it; replaces the old notes when given.")


class RunAnalysis(BaseModel):
    """The analyst's reply about one run."""

    summary: str = Field(description="What the run did and how it went, one or two sentences.")
    change: str = Field(
        default="",
        description="What this run changed compared with the run it builds on (for a draft: the approach it set up), in one short line.",
    )
    findings: list[str] = Field(default_factory=list, description="Facts this run established, one line each.")
    task_updates: list[TaskUpdate] = Field(default_factory=list)
    new_tasks: list[NewTask] = Field(default_factory=list)
    goal_achieved: bool = Field(description="True only if this run's metrics meet the goal.")
    goal_evidence: str = Field(default="", description="The metric values that show it.")
