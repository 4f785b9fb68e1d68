"""Prompt cache: how much of each codegen and analyze request repeats the previous one byte for byte, and what caching saves at list prices.

Requests are built stable part first (nodes/prompts.py: the system message, then the idea, the plan and, for
codegen, the machine), so that a provider can serve that prefix from its cache. This reads the grown experiment's
audit log and measures, for a request of a stage, the prefix it shares with the stage's previous request (the
previous run's): the bound is that it reaches at least the end of the plan.

The bill is arithmetic on the tokens measured, not a bound: every request of the log priced as if it went to one
Anthropic and one OpenAI model, without caching and with it. It assumes:
- tokens are characters / 4, as in bench/prompt_size.py, for the prompt (system and user messages, content blocks
  joined) and for the reply (its text and its tool calls' arguments as JSON); tool schemas are not counted;
- Anthropic caches only up to a mark (adapters.llm.prompt_messages: the end of the stable part, and of codegen's
  parent code), a prefix at least its minimum size: the longest marked prefix the stage's previous request marked
  too is read (0.1x input), what lies between it and the last mark is written (1.25x), consecutive requests of a
  stage being within the 5-minute TTL (runs shorter than that); initialize and report requests mark nothing;
- OpenAI caches by itself the prefix a request shares with the stage's previous one, from 1,024 tokens on, in
  steps of 128 tokens, with nothing to pay for writing it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

from fake_llm import message_text
from figures import Figure
from prompt_size import CHARS_PER_TOKEN, run_of

from adapters.audit import read_audit
from adapters.files import ExperimentFiles
from nodes import prompts

BENCH = "prompt cache"
STAGES = ("codegen", "analyze")
"""The stages whose requests repeat a stable prefix run after run."""
PREFIX_RUNS = (2, 10, 50)
"""The runs whose requests are compared with the previous run's (those the experiment has)."""
COST_RUN = 50
"""The run the bill is counted to (or the experiment's last, when it has fewer)."""
BRIEF_END = "</plan>\n"
"""Where the experiment's brief (EXPERIMENT_BRIEF: idea, then plan) ends: the shared prefix must reach it."""
VOLATILE_START = {"codegen": (prompts.GRADING.split("{")[0], prompts.PROGRESS.split("{")[0]), "analyze": (prompts.ANALYZE_VOLATILE.split("{")[0],)}
"""The texts each stage's volatile part may open with (codegen's with its grading block, or its tasks): where its
stable and recurring parts end in a request sent as one string."""


@dataclass(frozen=True)
class Pricing:
    """A model's list prices, in USD per million tokens, and how its provider caches a prompt's prefix."""

    model: str
    input: float
    output: float
    cache_read: float
    cache_write: float
    """What a token written to the cache costs (the input price where writing costs nothing more)."""
    marked_only: bool
    """True: only the prefix the request marks is cached (Anthropic); False: any identical prefix (OpenAI)."""
    min_tokens: int
    """A shorter prefix is not cached at all."""
    step_tokens: int = 1
    """The cached prefix is a whole number of these."""


# https://platform.claude.com/docs/en/about-claude/pricing (Sonnet 4.6: $3 input, $3.75 5-minute cache writes,
# $0.30 cache hits, $15 output); the minimum of 1,024 tokens for Sonnet 4.6 is the prompt-caching page's, as quoted in
# anthropics/anthropic-sdk-python#1194 (which reports no cache below 2,048 in practice).
SONNET = Pricing("anthropic/claude-sonnet-4.6", input=3.0, output=15.0, cache_read=0.30, cache_write=3.75, marked_only=True, min_tokens=1024)
# https://openai.com/api/pricing (gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output); caching from
# https://developers.openai.com/api/docs/guides/prompt-caching: automatic for prompts of 1,024 tokens or more, cache
# hits in increments of 128 tokens, no fee to write.
GPT_4O_MINI = Pricing("openai/gpt-4o-mini", input=0.15, output=0.60, cache_read=0.075, cache_write=0.15, marked_only=False, min_tokens=1024, step_tokens=128)
PRICINGS = (SONNET, GPT_4O_MINI)


class Request(NamedTuple):
    """One request of the audit log, as far as caching goes."""

    stage: str
    run: int | None
    system: str
    user: str
    """The other messages' text, content blocks joined."""
    marks: tuple[int, ...]
    """Where each prefix the runner marks for caching ends in `text`, in characters: the stable part's end, then the
    recurring part's (codegen's parent code) when there is one; none for the stages that mark nothing."""
    reply_chars: int

    @property
    def text(self) -> str:
        return self.system + self.user

    @property
    def stable(self) -> str:
        """The system message and the prompt's stable part: what every request of the stage repeats."""
        return self.text[: self.marks[0]] if self.marks else ""


PARENT_CODE_END = "</parent_code>\n"


def as_request(line: dict) -> Request:
    """An audit log line as a Request. Its marks are those of its content blocks where the prompt came in blocks (an
    Anthropic model), else where the runner would put them for an Anthropic model: before the parent's code or the
    stage's volatile part, and after the parent's code."""
    messages = line.get("messages") or []
    system = message_text(messages[0]) if messages else ""
    user = "".join(message_text(m) for m in messages[1:])
    content = messages[1].get("content") if len(messages) > 1 else None
    marks: list[int] = []
    if isinstance(content, list):
        at = len(system)
        for block in content:
            at += len(block.get("text", "")) if isinstance(block, dict) else 0
            if isinstance(block, dict) and "cache_control" in block:
                marks.append(at)
    elif starts := [user.index(start) for start in VOLATILE_START.get(line["stage"], ()) if start in user]:
        volatile = min(starts)
        parent = user.find(prompts.PARENT_CODE.split("{")[0], 0, volatile)
        marks = [len(system) + (parent if parent >= 0 else volatile)]
        if parent >= 0:
            marks.append(len(system) + user.index(PARENT_CODE_END, parent) + len(PARENT_CODE_END))
    reply = line.get("reply") or {}
    reply_text = message_text(reply) + "".join(json.dumps(call.get("args"), ensure_ascii=False) for call in reply.get("tool_calls") or [])
    return Request(line["stage"], run_of(line["stage"], messages), system, user, tuple(marks), len(reply_text))


def requests(experiment: Path) -> list[Request]:
    """Every request of the experiment's audit log, in the order it was sent."""
    return [as_request(line) for line in read_audit(ExperimentFiles(experiment).llm_calls)]


class SharedPrefix(NamedTuple):
    """What a request shares byte for byte with the previous request of its stage."""

    chars: int
    prefix_chars: int
    brief_end_chars: int | None
    """Where the plan ends in the request (system message included); None when it holds no plan."""

    @property
    def share(self) -> float:
        return self.prefix_chars / self.chars if self.chars else 0.0

    @property
    def holds(self) -> bool:
        """The bound: the shared prefix covers the system message, the idea and the plan."""
        return self.brief_end_chars is not None and self.prefix_chars >= self.brief_end_chars


def shared_prefix(request: Request, previous: Request) -> SharedPrefix:
    end = request.user.find(BRIEF_END)
    brief_end = len(request.system) + end + len(BRIEF_END) if end >= 0 else None
    return SharedPrefix(len(request.text), shared_chars(request, previous), brief_end)


def shared_chars(request: Request, previous: Request) -> int:
    """The length of the prefix two requests share byte for byte (system message included)."""
    return len(os.path.commonprefix([request.text, previous.text]))


def tokens(chars: int) -> float:
    return chars / CHARS_PER_TOKEN


class Cost(NamedTuple):
    """A request's price in USD, without caching and with it."""

    uncached: float
    cached: float


def cached_tokens(request: Request, previous: Request | None, pricing: Pricing) -> tuple[float, float]:
    """The prompt tokens `pricing`'s provider reads from its cache and those it writes to it."""
    if pricing.marked_only:  # a cache entry ends at each mark whose prefix is long enough; the longest one kept is read
        kept = [mark for mark in request.marks if tokens(mark) >= pricing.min_tokens]
        if not kept:
            return 0.0, 0.0
        found = previous is not None and shared_chars(request, previous)
        read = max((mark for mark in kept if found and mark in previous.marks and mark <= found), default=0)
        return tokens(read), tokens(max(kept) - read)
    shared = tokens(shared_chars(request, previous)) if previous is not None else 0.0
    if shared < pricing.min_tokens:
        return 0.0, 0.0
    return shared // pricing.step_tokens * pricing.step_tokens, 0.0


def costs(found: list[Request], pricing: Pricing) -> list[Cost]:
    """Each request's price at `pricing`, its cache being what the previous request of its stage left there."""
    result, previous = [], {}
    for request in found:
        read, written = cached_tokens(request, previous.get(request.stage), pricing)
        previous[request.stage] = request
        prompt, reply = tokens(len(request.text)), tokens(request.reply_chars)
        uncached = prompt * pricing.input + reply * pricing.output
        cached = (prompt - read - written) * pricing.input + read * pricing.cache_read + written * pricing.cache_write + reply * pricing.output
        result.append(Cost(uncached / 1e6, cached / 1e6))
    return result


def bill(found: list[Request], pricing: Pricing, run: int) -> dict[str, dict[str, float]]:
    """USD without and with caching: every request up to run `run`'s last, and run `run`'s own requests."""
    priced = costs(found, pricing)
    last = max((i for i, request in enumerate(found) if request.run == run), default=-1)
    own = [cost for cost, request in zip(priced, found, strict=True) if request.run == run]
    return {"through_run": _total(priced[: last + 1]), "run": _total(own)}


def _total(priced: list[Cost]) -> dict[str, float]:
    uncached, cached = sum(cost.uncached for cost in priced), sum(cost.cached for cost in priced)
    saving = 100 * (1 - cached / uncached) if uncached else 0.0
    return {"without_caching_usd": round(uncached, 6), "with_caching_usd": round(cached, 6), "saving_pct": round(saving, 1)}


def figures(experiment: Path, at_runs: tuple[int, ...], cost_run: int) -> tuple[list[Figure], dict]:
    """The shared prefix of each stage's request at `at_runs` (bounded), each stage's stable part, and the bill to `cost_run`."""
    found = requests(experiment)
    shares, share_details = prefix_figures(found, at_runs)
    bills, bill_details = bill_figures(found, cost_run)
    return shares + bills, {**share_details, **bill_details, "pricing": {pricing.model: asdict(pricing) for pricing in PRICINGS}}


def prefix_figures(found: list[Request], at_runs: tuple[int, ...]) -> tuple[list[Figure], dict]:
    """For each stage: the prefix its request at each of `at_runs` shares with the previous run's, and its stable part."""
    result: list[Figure] = []
    details: dict = {"prefix": {}, "stable_chars": {}}
    minimum = ", ".join(f"{pricing.min_tokens:,} tok on {pricing.model.split('/')[-1]}" for pricing in PRICINGS)
    for stage in STAGES:
        first: dict[int, Request] = {}  # a run's first request of the stage (a retry repeats it)
        for request in found:
            if request.stage == stage and request.run is not None:
                first.setdefault(request.run, request)
        for run in at_runs:
            request, previous = first.get(run), first.get(run - 1)
            name = f"{stage} request at run {run}: prefix identical to run {run - 1}'s"
            if request is None or previous is None:
                result.append(Figure(BENCH, name, None, "x", bound=f"reaches {BRIEF_END.strip()}", passed=False))
                continue
            shared = shared_prefix(request, previous)
            details["prefix"].setdefault(stage, {})[f"run_{run}"] = {**shared._asdict(), "share": round(shared.share, 3)}
            shown = f"{shared.share:.1%}: {shared.prefix_chars:,} of {shared.chars:,} ch"
            bound = f">= {shared.brief_end_chars:,} ch (through {BRIEF_END.strip()})" if shared.brief_end_chars else f"reaches {BRIEF_END.strip()}"
            result.append(Figure(BENCH, name, round(shared.share, 3), "x", shown=shown, bound=bound, passed=shared.holds))
        stable = next((request.stable for request in first.values() if request.stable), "")
        details["stable_chars"][stage] = len(stable)
        shown = f"{len(stable):,} ch / {round(tokens(len(stable))):,} tok (cached from {minimum})"
        result.append(Figure(BENCH, f"{stage}: stable prefix (system + stable part)", len(stable), "chars", shown=shown))
    return result, details


def bill_figures(found: list[Request], cost_run: int) -> tuple[list[Figure], dict]:
    """At each model's list prices: the bill through run `cost_run` and run `cost_run`'s own, without and with caching.

    Beside them, what caching would save had the provider no minimum prefix size: what the stable-first order can
    save at most once an experiment's brief is long enough to be cached."""
    result: list[Figure] = []
    details: dict = {"cost_run": cost_run, "cost": {}}
    for pricing in PRICINGS:
        billed, lifted = bill(found, pricing, cost_run), bill(found, replace(pricing, min_tokens=0), cost_run)
        details["cost"][pricing.model] = {**billed, "no_minimum": lifted}
        for part, words in (("through_run", f"LLM bill through run {cost_run}"), ("run", f"run {cost_run}'s requests")):
            usd = billed[part]
            shown = f"${usd['without_caching_usd']:.4f} without caching, ${usd['with_caching_usd']:.4f} with (saves {usd['saving_pct']:.1f}%)"
            if lifted[part] != usd:
                shown += f"; with no minimum prefix ${lifted[part]['with_caching_usd']:.4f} (saves {lifted[part]['saving_pct']:.1f}%)"
            result.append(Figure(BENCH, f"{words}, all at {pricing.model} list prices", usd["with_caching_usd"], "USD", shown=shown))
    return result, details
