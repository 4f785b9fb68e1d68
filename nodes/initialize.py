"""IDEA.md → PLAN.md, tasks.json and an empty KEY_FINDINGS.md, with one structured LLM call."""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from adapters.audit import AuditLog
from adapters.files import ExperimentFiles
from adapters.llm import ask_structured
from adapters.logs import clip, one_line
from adapters.machine import describe_machine, machine_text
from goal import goal_from_idea, plan_goal_line
from nodes.prompts import BUDGET, PLAN_SYSTEM, PLAN_USER
from settings import Settings
from state import ExperimentPlan, ExperimentState, Task


def initialize(state: ExperimentState, runtime: Runtime[Settings]) -> dict:
    """Plan the experiment from its idea and write the first files."""
    settings = runtime.context
    files = ExperimentFiles(state["experiment_dir"])
    idea = files.read_idea()
    runtime.stream_writer({"event": "stage", "stage": "initialize", "model": settings.report_model})

    messages = [SystemMessage(PLAN_SYSTEM), HumanMessage(PLAN_USER.format(idea=clip(idea, BUDGET["idea"])))]
    audit = AuditLog(files.llm_calls, settings.audit_content)
    asked = ask_structured(
        settings, settings.report_model, ExperimentPlan, messages, "initialize", audit, learned=state.get("structured_output"), emit=runtime.stream_writer
    )
    reply, usage = asked.answer, asked.usage

    # A goal stated in IDEA.md wins; otherwise the planner's proposal, shown in PLAN.md, is the goal.
    stated = goal_from_idea(idea)
    goal = stated or one_line(reply.goal)
    source = "from IDEA.md" if stated else "proposed by the planner"
    plan = f"# Plan\n\n{plan_goal_line(goal, source)}\n\n{reply.plan.strip()}"
    tasks = [Task(id=i, title=t.title.strip(), status="todo", notes=t.notes.strip(), runs=[]) for i, t in enumerate(reply.tasks, start=1)]
    # What train.py will run on, asked once: the code model writes for these packages and this hardware.
    machine = machine_text(describe_machine(settings.python))
    files.write_plan(plan)
    files.write_tasks(tasks)
    files.write_findings([])
    return {
        "idea": idea,
        "plan": plan,
        "goal": goal,
        "tasks": tasks,
        "tasks_created": len(tasks),
        "machine": machine,
        "max_runs": state.get("max_runs") or settings.max_runs,
        "stop_reason": None,
        "usage": usage,
        "structured_output": asked.learned,
    }
