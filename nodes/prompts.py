"""Every prompt the runner sends, with the size budget of each part, in one place."""

# Characters each part of the codegen prompt may take; the prompt never grows past their sum.
BUDGET = {
    "idea": 6_000,
    "plan": 6_000,
    "tasks": 4_000,
    "findings": 6_000,
    "previous_code": 16_000,  # the parent's train.py
    "previous_run": 6_000,  # the parent's summary and the other runs' lines (or the other drafts')
    "feedback": 2_000,
    "machine": 1_200,
    "grading": 400,  # the grader's metric names (a graded experiment)
}

# Requests are built stable part first, volatile part last (adapters.llm.Prompt): consecutive requests of a stage then
# share a byte-identical prefix (system message, idea, plan, machine) that providers cache, which cuts the input bill;
# codegen's parent code (the recurring part) sits between the two. Nothing in a system message, and nothing in a
# *_STABLE template, may change from run to run.

# What every codegen, analyze and report request reads first: the experiment's brief, fixed when it began.
EXPERIMENT_BRIEF = """<idea>
{idea}
</idea>

<plan>
{plan}
</plan>
"""

# Where the experiment stands: it changes with every run.
PROGRESS = """
<tasks>
{tasks}
</tasks>

<key_findings>
{findings}
</key_findings>
"""

EXPERIMENT_CONTEXT = EXPERIMENT_BRIEF + PROGRESS

PLAN_SYSTEM = """You are the lead of a machine-learning experiment that an automatic runner will carry out.
The runner writes one complete train.py per run, executes it on this machine, reads its log and metrics,
and iterates. Turn the researcher's idea into:
- goal: the measurable goal in one line (metric name, comparison and target, e.g. "test_accuracy >= 0.99"),
- plan: PLAN.md in Markdown: approach, metrics to report, what to try first and what next,
- tasks: 3 to 8 concrete, ordered tasks (title and short notes), the first one runnable in the first run.
Prefer small, fast first runs and datasets that can be loaded without manual steps."""

PLAN_USER = """<idea>
{idea}
</idea>"""

# The same text for every run (the run's own facts go in CODEGEN_VOLATILE), so providers can cache it.
CODEGEN_SYSTEM = """You write train.py, the script of one run of an automatic machine-learning experiment.
Rules:
- Reply with the whole file in one ```python block. Never a patch or a partial file.
- The script runs as `python train.py` with its own folder as the working directory, without any input.
- Where <machine> lists the Python packages and hardware, import only the packages listed there and fit the
  hardware: use a GPU (CUDA) only when one is listed, and size the model, batches and data loading to its
  CPU cores and memory.
- Download datasets and pretrained weights into the folder named by the environment variable DATA_DIR
  (`os.environ["DATA_DIR"]`): it is shared by every run, so reuse what an earlier run left there.
  Write files only there and in the working directory; everything else may be read-only.
- Print progress as it trains, in lines like `epoch=3 loss=0.41 val_accuracy=0.93`.
- At the end, print the final metrics and write them as a flat JSON object of numbers to
  `metrics.json` in the working directory, e.g. {"test_accuracy": 0.991, "train_seconds": 42.0}.
- Use the metric names of the goal. Keep runs reasonably short; set seeds for reproducibility.
- Do not read API keys or other secrets; none are available to the script."""

CODEGEN_STABLE = (
    EXPERIMENT_BRIEF
    + """
<machine>
{machine}
</machine>
"""
)

# Between the two comes the parent's code (PARENT_CODE), the prompt's recurring part: when the search builds on the
# same run again, the request repeats it too, and providers cache it as well.
# The grading block leads it: the grader's metric names are known only once it graded a run.
CODEGEN_VOLATILE = (
    "{grading}"
    + PROGRESS
    + """
<runs>
{previous_run}
</runs>
{feedback}
{instruction}"""
)

CODEGEN_USER = CODEGEN_STABLE + "{parent_code}" + CODEGEN_VOLATILE

# Only for an experiment with a grader (grade.py): what counts, and what the run must write for it.
GRADING = """
<grading>
The runner grades every run that ends well with the experiment's own grader, which the script can neither see nor run:
it scores the file IDEA.md says the run must write (in the working directory, e.g. submission.csv), against an answer
key the script has no access to. Only the grader's metrics count ({metrics}). What the script prints or writes to
metrics.json is kept as its self-report and compared with the grade. Write that file on every run, exactly in the
format IDEA.md gives, and still report your own validation metrics.
</grading>
"""

PARENT_CODE = """
<parent_code run="{parent}">
{code}
</parent_code>
"""

# What each operator of the search asks for (see search.py); {run} is the coming run, {parent} the one it builds on.
CODEGEN_INSTRUCTION = {
    "draft": "Write train.py for run {run}: a new solution from scratch (a draft), not built on any earlier run's code{differ}. Work on the first open task.",
    "improve": "Write train.py for run {run} by making one focused change to run {parent}'s code (in <parent_code>), chosen from "
    "the open tasks and the findings. Name the change first, on a line of its own: `Change: <the one change>`; then the whole file.",
    "debug": "Run {parent} failed (its error and log tail are in <runs>). Write train.py for run {run}: run {parent}'s code "
    "(in <parent_code>) with that failure fixed, and nothing else changed.",
}
DRAFTS_DIFFER = ", with an approach different from the other drafts listed in <runs>"

CODEGEN_SYNTAX_RETRY = """That file does not compile:
{error}
Reply with the whole corrected train.py in one ```python block."""

CODEGEN_CUT_OFF_RETRY = """Your reply was cut off at the output limit; answer with the complete file only:
the whole train.py in one ```python block, with no explanation around it."""

ANALYZE_SYSTEM = """You analyse one run of an automatic machine-learning experiment and keep its records.
From the experiment's idea and plan, the run's summary, its code and the current tasks, give:
- summary: what the run did and how it went, in one or two sentences,
- change: what this run changed compared with the run it builds on (its parent), in one short line
  (e.g. "hidden layer 64 -> 128 units, lr 1e-3 -> 3e-4"; for a draft, the approach it set up),
- findings: the few facts this run established (numbers included), each one line,
- task_updates: for existing tasks whose status or notes change (status: todo, in_progress, done or dropped),
- new_tasks: tasks worth adding, if any,
- goal_achieved: true only if this run's metrics meet the goal, with goal_evidence quoting them.
Where the summary gives graded metrics, those are the run's metrics: the script's self-report does not count, and a
flagged disagreement between the two is a bug in the script to find (e.g. evaluating on training data) and a finding.
Flags on numbers that look too good (a perfect score, test far above validation) call for a check of the same kind."""

ANALYZE_STABLE = (
    EXPERIMENT_BRIEF
    + """
<goal>
{goal}
</goal>
"""
)

ANALYZE_VOLATILE = """
<origin>
{origin}
</origin>

<tasks>
{tasks}
</tasks>

<code>
{code}
</code>

<run>
{run}
</run>"""

ANALYZE_USER = ANALYZE_STABLE + ANALYZE_VOLATILE

REPORT_SYSTEM = """You write the narrative of REPORT.md, the final report of an automatic machine-learning experiment.
The runner puts your text between tables it computes from the run files: the goal and outcome, the best run
with all its metrics, every run's status, duration, metrics and change, plots, tokens and cost, and how to
reproduce the best run. Do not repeat those tables, and write no title. Write, in Markdown:
- one short paragraph: what was tried and how it ended,
- a section `## Key findings`: what the runs established and what failed and why, a bullet each,
- a section `## What to try next`: the next experiments worth running, a bullet each, most promising first.
Be factual: quote only numbers given below, exactly as written; never estimate or round one."""

REPORT_USER = (
    EXPERIMENT_CONTEXT
    + """
<runs>
{runs}
</runs>

<best_run>
{best}
</best_run>

The experiment stopped because: {stop_reason}."""
)
