"""Per-invocation settings: the graph's context schema, each read from one environment variable.

Settings travel as LangGraph runtime context, never in checkpointed state, so a secret
never lands in a checkpoint. Context is not checkpointed: a resume passes it again.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from adapters.errors import SettingsError

OPENROUTER_URL = "https://openrouter.ai/api/v1"


class UsageError(Exception):
    """Bad arguments or input: shown as one line, exit code 2."""


def _whole_number(minimum: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, got {value}")
        return value

    return parse


def _choice(*options: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        if value not in options:
            raise SettingsError(f"{name} must be one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1 or 0 (true or false), got {raw!r}")


def _names(name: str, raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if bad := [n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]:
        raise SettingsError(f"{name} must be a comma-separated list of variable names, got {bad[0]!r}")
    return names


def _amount(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise SettingsError(f"{name} must be a number of at least 0, got {raw!r}")
    return value


def _devices(name: str, raw: str) -> str:
    """'0,1, 2' → '0,1,2'; 'none' stays. Device names are what CUDA_VISIBLE_DEVICES takes: indices, or GPU-/MIG- UUIDs."""
    if raw.strip().lower() == "none":
        return "none"
    devices = [d.strip() for d in raw.split(",") if d.strip()]
    if bad := [d for d in devices if not re.fullmatch(r"\d+|(GPU|MIG)-[A-Za-z0-9/-]+", d)]:
        raise SettingsError(f"{name} must be comma-separated GPU indices (0,1,2) or UUIDs, or none, got {bad[0]!r}")
    if len(set(devices)) != len(devices):
        raise SettingsError(f"{name} names a GPU twice: {raw.strip()!r}")
    return ",".join(devices)


def _prices(name: str, raw: str) -> dict[str, list[float]]:
    """'openai/gpt-4o-mini=0.15/0.6/0.075, other/model=3/15' → {model: [input, output(, cached input)]} in USD per million tokens."""
    prices = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        model, _, pair = item.rpartition("=")
        numbers = pair.split("/")
        try:
            values = [float(n) for n in numbers]
        except ValueError:
            values = []
        if not model.strip() or len(values) not in (2, 3) or min(values) < 0:
            raise SettingsError(f"{name} entries look like model=INPUT/OUTPUT or model=INPUT/OUTPUT/CACHED_INPUT (USD per million tokens), got {item!r}")
        prices[model.strip()] = values
    return prices


@dataclass(frozen=True)
class EnvSetting:
    """How one setting is read: its variable, default and parser."""

    env: str
    default: Any
    parse: Callable[[str, str], Any]

    def read(self, env: Mapping[str, str]) -> Any:
        raw = env.get(self.env, "")
        return self.parse(self.env, raw) if raw.strip() else self.default


ENV_SETTINGS: dict[str, EnvSetting] = {}
"""Every environment setting by variable name, in declaration order."""


def _setting(env: str, default: Any, description: str, parse: Callable[[str, str], Any] = _text, secret: bool = False) -> Any:
    """A dataclass field whose default comes from `env` when it is set (and not empty)."""
    spec = ENV_SETTINGS[env] = EnvSetting(env, default, parse)
    # Pydantic (LangGraph Studio's schema) passes this metadata on to Field(), so only Field's own keys.
    return field(
        default_factory=lambda: spec.read(os.environ),
        repr=not secret,
        metadata={"description": description, "json_schema_extra": {"env": env}},
    )


@dataclass(kw_only=True)
class Settings:
    """How one invocation of the experiment graph talks to models and runs code."""

    openrouter_api_key: str = _setting("OPENROUTER_API_KEY", "", "API key for OpenRouter (required with the default base URL).", secret=True)
    llm_api_key: str = _setting("LLM_API_KEY", "", "API key for another OpenAI-compatible server; falls back to OPENROUTER_API_KEY.", secret=True)
    llm_base_url: str = _setting("LLM_BASE_URL", OPENROUTER_URL, "Any OpenAI-compatible endpoint: OpenRouter, Ollama, vLLM, LM Studio, llama.cpp.")
    model: str = _setting("MODEL", "", "Model for every stage (`--model`); CODE_MODEL, SUMMARIZE_MODEL and REPORT_MODEL each override it for theirs.")
    summarize_model: str = _setting("SUMMARIZE_MODEL", "openai/gpt-4o-mini", "Model that analyses each run and updates tasks and findings.")
    code_model: str = _setting("CODE_MODEL", "anthropic/claude-sonnet-4.6", "Model that writes train.py.")
    report_model: str = _setting("REPORT_MODEL", "anthropic/claude-sonnet-4.6", "Model that writes PLAN.md, the first tasks and REPORT.md.")
    max_runs: int = _setting("MAX_RUNS", 10, "How many runs before the final report (`--max-runs` wins).", _whole_number(1))
    patience: int = _setting("PATIENCE", 0, "Stop after this many runs in a row without a better goal metric (`--patience`); 0: off.", _whole_number(0))
    max_cost_usd: float = _setting("MAX_COST_USD", 0.0, "LLM spend in USD after which no new run starts (`--max-cost`); 0: no limit.", _amount)
    max_tokens: int = _setting("MAX_TOKENS", 0, "LLM tokens (input + output) after which no new run starts (`--max-tokens`); 0: no limit.", _whole_number(0))
    max_hours: float = _setting("MAX_HOURS", 0.0, "Hours of runs (train.py time) after which no new run starts (`--max-hours`); 0: no limit.", _amount)
    max_consecutive_failures: int = _setting(
        "MAX_CONSECUTIVE_FAILURES",
        3,
        "Runs in a row failing the same way that abandon a failed line of the tree, and stop the experiment as stuck when they span lines.",
        _whole_number(1),
    )
    search: str = _setting(
        "SEARCH",
        "tree",
        "How each run's code comes about (`--search`): tree (draft, debug a failed run, else improve the best) or linear (build on the run before).",
        _choice("tree", "linear"),
    )
    drafts: int = _setting(
        "DRAFTS",
        0,
        "How many of the first runs are fresh solutions (drafts) in the tree search (`--drafts`); 0: 1, or WORKERS when that is more.",
        _whole_number(0),
    )
    workers: int = _setting(
        "WORKERS", 1, "Runs in flight at once (`--workers`): when one ends it is analysed and the next starts while the others train.", _whole_number(1)
    )
    ahead: int = _setting(
        "AHEAD",
        0,
        "Runs written ahead while every worker is busy (`--ahead`), started the moment a worker frees (chosen before the runs in flight end); 0: off.",
        _whole_number(0),
    )
    gpus: str = _setting(
        "GPUS",
        "",
        "GPUs shared out among the runs (`--gpus 0,1,2,3`), each its own CUDA_VISIBLE_DEVICES; empty: every GPU nvidia-smi lists; none: no GPU.",
        _devices,
    )
    gpus_per_run: int = _setting(
        "GPUS_PER_RUN", 1, "GPUs each run gets (`--gpus-per-run`); a run waits for that many to be free rather than share one.", _whole_number(1)
    )
    executor: str = _setting(
        "EXECUTOR",
        "local",
        "Where runs train (`--executor`): local (this machine's GPUs) or ray (Ray tasks on a cluster; needs the ray extra).",
        _choice("local", "ray"),
    )
    ray_address: str = _setting(
        "RAY_ADDRESS", "", "Ray's own variable: the cluster EXECUTOR=ray joins (e.g. 10.0.0.5:6379); empty: a Ray instance of the experiment's own."
    )
    cpus_per_run: int = _setting(
        "CPUS_PER_RUN", 1, "With EXECUTOR=ray, the CPUs Ray reserves for each run (`--cpus-per-run`), also the size of its thread pools.", _whole_number(1)
    )
    shared_data: str = _setting(
        "SHARED_DATA",
        "",
        "With EXECUTOR=ray, a folder every node mounts at this path (`--shared-data`), the runs' DATA_DIR; empty: data/ is shipped.",
    )
    ship_data_max_mb: int = _setting(
        "SHIP_DATA_MAX_MB",
        1024,
        "With EXECUTOR=ray and no SHARED_DATA, the largest data/ shipped to the cluster (once per experiment); beyond it the runner refuses to start.",
        _whole_number(0),
    )
    debug_depth: int = _setting(
        "DEBUG_DEPTH", 3, "Fixes in a row that may fail before the tree search abandons a failed run's line (`--debug-depth`).", _whole_number(0)
    )
    keep_checkpoints: int = _setting(
        "KEEP_CHECKPOINTS",
        50,
        "Checkpoints kept in .runner/checkpoints.sqlite, the latest ones (a run makes about five); older ones are pruned. 0: keep all.",
        _whole_number(0),
    )
    model_prices: dict = _setting(
        "MODEL_PRICES",
        {},
        "USD per million tokens for providers that report no cost: `model=INPUT/OUTPUT`, or `model=INPUT/OUTPUT/CACHED_INPUT` "
        "where input read from the provider's prompt cache costs less; comma-separated.",
        _prices,
    )
    train_python: str = _setting(
        "TRAIN_PYTHON", "", "Python interpreter that runs train.py (`--python`), e.g. a conda env's or venv's; empty: the runner's own."
    )
    timeout_seconds: int = _setting("TIMEOUT_SECONDS", 7200, "Wall-clock limit of one run of train.py, in seconds.", _whole_number(1))
    grade_timeout_seconds: int = _setting(
        "GRADE_TIMEOUT_SECONDS", 600, "Wall-clock limit of one run of the experiment's grade.py on a run, in seconds.", _whole_number(1)
    )
    grade_tolerance: float = _setting(
        "GRADE_TOLERANCE",
        0.01,
        "How far a run's self-reported metric may stray from its grade before the run is flagged: an absolute difference, relative above 1.",
        _amount,
    )
    llm_timeout_seconds: int = _setting("LLM_TIMEOUT_SECONDS", 600, "Limit of one LLM request, in seconds.", _whole_number(1))
    llm_max_retries: int = _setting("LLM_MAX_RETRIES", 2, "Retries of a failed LLM request inside the HTTP client.", _whole_number(0))
    llm_retry_backoff_seconds: int = _setting(
        "LLM_RETRY_BACKOFF_SECONDS", 2, "Seconds before a stage's LLM call is tried again after a 429, 5xx, timeout or lost connection.", _whole_number(0)
    )
    structured_output: str = _setting(
        "STRUCTURED_OUTPUT",
        "auto",
        "How structured replies are asked for: function_calling (tools), json_schema (a response format), prompt (the schema "
        "in the prompt, JSON read from the reply), or auto: the first of these the server takes, found once per model.",
        _choice("auto", "function_calling", "json_schema", "prompt"),
    )
    sandbox: str = _setting(
        "SANDBOX", "auto", "Where train.py runs: bwrap (bubblewrap), none (process limits only), or auto.", _choice("auto", "bwrap", "none")
    )
    no_network: bool = _setting("NO_NETWORK", False, "1 cuts train.py off every network, loopback included (`--no-network`).", _flag)
    sandbox_env: tuple[str, ...] = _setting("SANDBOX_ENV", (), "Comma-separated names of extra environment variables passed to train.py on purpose.", _names)
    memory_limit_mb: int = _setting("MEMORY_LIMIT_MB", 0, "Resident memory of a run's whole process tree before it is stopped; 0: no limit.", _whole_number(0))
    file_size_limit_mb: int = _setting("FILE_SIZE_LIMIT_MB", 16384, "Largest file train.py may write, in MB.", _whole_number(1))
    log_max_mb: int = _setting("LOG_MAX_MB", 100, "Size cap of output.log: past it the head and a rolling tail are kept.", _whole_number(1))
    review: bool = _setting("REVIEW", False, "1 pauses before each run to approve, reject or edit train.py (`--review`).", _flag)
    audit_content: bool = _setting(
        "AUDIT_CONTENT", True, "0 keeps only the metadata of each LLM call in .runner/llm_calls.jsonl, not the messages and the reply.", _flag
    )
    mlflow_tracking_uri: str = _setting(
        "MLFLOW_TRACKING_URI",
        "",
        "Log each run to MLflow there (e.g. sqlite:///mlflow.db; needs the mlflow extra); empty: off (`--mlflow`: a store in .runner/).",
        _text,
    )
    chat_model: Any = field(default=None, repr=False, metadata={"description": "A ready chat model used for every stage (tests, embedding)."})
    program: str = field(
        default="python main.py", metadata={"description": "How the runner was started, for the hints that name a command: a command line, or run_experiment."}
    )

    @property
    def api_key(self) -> str:
        """The key sent to the LLM server."""
        return self.llm_api_key or self.openrouter_api_key

    @property
    def python(self) -> str:
        """The interpreter that runs train.py."""
        return self.train_python or sys.executable or "python3"

    @property
    def uses_openrouter(self) -> bool:
        return self.llm_base_url.rstrip("/").startswith("https://openrouter.ai")

    def start_command(self, experiment_dir: str) -> str:
        return start_command(self.program, experiment_dir)

    def resume_command(self, experiment_dir: str) -> str:
        return resume_command(self.program, experiment_dir)

    def check(self) -> None:
        """Raise SettingsError for a combination no LLM call can succeed with, or no run can."""
        if self.chat_model is None and self.uses_openrouter and not self.api_key:
            raise SettingsError("OPENROUTER_API_KEY is not set: put it in .env or the environment (or set LLM_BASE_URL for a local server)")
        if self.shared_data and not os.path.isabs(self.shared_data):
            raise SettingsError(f"SHARED_DATA must be an absolute path, the same on every node, not {self.shared_data!r}")
        if self.ahead and self.search == "linear":
            raise SettingsError("SEARCH=linear builds each run on the one before it, so no run can be written ahead: use AHEAD=0, or SEARCH=tree")
        if self.workers > 1 and self.search == "linear":
            raise SettingsError(
                f"SEARCH=linear builds each run on the one before it, so runs cannot overlap: use WORKERS=1, or SEARCH=tree with WORKERS={self.workers}"
            )

    @property
    def draft_count(self) -> int:
        """How many of the first runs are drafts: DRAFTS, or when it is 0, one per worker."""
        return self.drafts or self.workers

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from `env` (default: os.environ); keyword overrides win."""
        env = os.environ if env is None else env
        values = {f.name: ENV_SETTINGS[env_name(f)].read(env) for f in fields(cls) if env_name(f) and f.name not in overrides}
        # MODEL names the model of every stage whose own variable is not set; `model=` (--model) every stage not named itself.
        if every_stage := overrides.get("model") or values.get("model"):
            for name, variable in STAGE_MODELS.items():
                if name not in overrides and ("model" in overrides or not env.get(variable, "").strip()):
                    values[name] = every_stage
        return cls(**values, **overrides)


def settings_env(experiment: Path) -> dict[str, str]:
    """The variables settings are read from: the environment, then <experiment>/.env, then ./.env (the first to set a name wins)."""
    found: dict[str, str] = {}
    for dotenv in (Path.cwd() / ".env", experiment / ".env"):  # later ones win within this loop
        found.update({name: value for name, value in dotenv_values(dotenv).items() if value is not None})
    return {**found, **os.environ}


STAGE_MODELS = {"summarize_model": "SUMMARIZE_MODEL", "code_model": "CODE_MODEL", "report_model": "REPORT_MODEL"}
"""The Settings field of each stage's model and its variable; MODEL sets those not set themselves."""


def start_command(program: str, experiment_dir: str) -> str:
    """The command (or call) that starts the experiment in `experiment_dir`, as the user started the runner (`program`)."""
    if program == "run_experiment":
        return f"run_experiment({experiment_dir!r})"
    return f"{program} -d {shlex.quote(experiment_dir)}"


def resume_command(program: str, experiment_dir: str) -> str:
    """The command (or call) that continues the experiment in `experiment_dir` from its last finished step."""
    if program == "run_experiment":
        return f"run_experiment({experiment_dir!r}, resume=True)"
    return f"{start_command(program, experiment_dir)} --resume"


def env_name(f: Field) -> str | None:
    """The environment variable a Settings field is read from, None for fields without one."""
    return f.metadata.get("json_schema_extra", {}).get("env")


def settings_table() -> str:
    """The Markdown table of every environment setting, as README shows it."""
    rows = ["| Variable | Default | What it sets |", "|---|---|---|"]
    for f in fields(Settings):
        if name := env_name(f):
            default = ENV_SETTINGS[name].default
            shown = f"`{default}`" if default not in ("", None, (), {}) else "(none)"
            rows.append(f"| `{name}` | {shown} | {f.metadata['description']} |")
    return "\n".join(rows)
