"""Tests for settings.py: defaults, parsing from the environment, errors that name the variable, secrets."""

from __future__ import annotations

import pytest

from settings import OPENROUTER_URL, Settings, SettingsError, settings_table

ENV_NAMES = [
    "OPENROUTER_API_KEY",
    "LLM_API_KEY",
    "LLM_BASE_URL",
    "SUMMARIZE_MODEL",
    "CODE_MODEL",
    "REPORT_MODEL",
    "MAX_RUNS",
    "TIMEOUT_SECONDS",
    "LLM_TIMEOUT_SECONDS",
    "LLM_MAX_RETRIES",
    "STRUCTURED_OUTPUT",
]


class RecordingEnvironment(dict):
    """An empty environment that remembers every variable asked of it."""

    def __init__(self):
        super().__init__()
        self.asked: list[str] = []

    def get(self, name, default=None):
        self.asked.append(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.asked.append(name)
        return super().__getitem__(name)

    def __contains__(self, name):
        self.asked.append(name)
        return super().__contains__(name)


def variables_read() -> set[str]:
    env = RecordingEnvironment()
    Settings.from_env(env)
    return set(env.asked)


@pytest.fixture
def clean_environment(monkeypatch):
    """No setting comes from the environment the tests happen to run in."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_every_documented_variable_is_read():
    assert set(ENV_NAMES) <= variables_read()


def test_defaults():
    settings = Settings.from_env({})
    assert settings.openrouter_api_key == ""
    assert settings.llm_api_key == ""
    assert settings.api_key == ""
    assert settings.llm_base_url == OPENROUTER_URL
    assert settings.uses_openrouter
    assert settings.summarize_model == "openai/gpt-4o-mini"
    assert settings.code_model == "anthropic/claude-sonnet-4.6"
    assert settings.report_model == "anthropic/claude-sonnet-4.6"
    assert settings.max_runs == 10
    assert settings.timeout_seconds == 7200
    assert settings.llm_timeout_seconds == 600
    assert settings.llm_max_retries == 2
    assert settings.structured_output == "auto"
    assert settings.chat_model is None


def test_direct_construction_reads_the_process_environment(clean_environment):
    assert Settings() == Settings.from_env({})
    clean_environment.setenv("MAX_RUNS", "4")
    clean_environment.setenv("CODE_MODEL", " qwen/qwen3-coder ")
    settings = Settings()
    assert settings.max_runs == 4
    assert settings.code_model == "qwen/qwen3-coder"


def test_values_are_parsed_from_the_environment():
    settings = Settings.from_env(
        {
            "OPENROUTER_API_KEY": "sk-or-1",
            "LLM_BASE_URL": "http://localhost:11434/v1",
            "SUMMARIZE_MODEL": "llama3.2",
            "CODE_MODEL": "qwen2.5-coder",
            "REPORT_MODEL": "mistral",
            "MAX_RUNS": " 3 ",
            "TIMEOUT_SECONDS": "60",
            "LLM_TIMEOUT_SECONDS": "30",
            "LLM_MAX_RETRIES": "0",
            "STRUCTURED_OUTPUT": "json_schema",
        }
    )
    assert settings.openrouter_api_key == "sk-or-1"
    assert settings.llm_base_url == "http://localhost:11434/v1"
    assert not settings.uses_openrouter
    assert (settings.summarize_model, settings.code_model, settings.report_model) == ("llama3.2", "qwen2.5-coder", "mistral")
    assert (settings.max_runs, settings.timeout_seconds, settings.llm_timeout_seconds, settings.llm_max_retries) == (3, 60, 30, 0)
    assert settings.structured_output == "json_schema"


def test_empty_values_mean_the_default():
    settings = Settings.from_env({"MAX_RUNS": "", "STRUCTURED_OUTPUT": "  ", "CODE_MODEL": ""})
    assert settings.max_runs == 10
    assert settings.structured_output == "auto"
    assert settings.code_model == "anthropic/claude-sonnet-4.6"


def test_model_prices_take_an_optional_cached_input_price():
    prices = Settings.from_env({"MODEL_PRICES": "anthropic/claude-sonnet-4.6=3/15/0.3, openai/gpt-4o-mini=0.15/0.6"}).model_prices
    assert prices == {"anthropic/claude-sonnet-4.6": [3.0, 15.0, 0.3], "openai/gpt-4o-mini": [0.15, 0.6]}


def test_keyword_overrides_win_and_skip_parsing():
    settings = Settings.from_env({"MAX_RUNS": "abc"}, max_runs=2)
    assert settings.max_runs == 2


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("MAX_RUNS", "abc"),
        ("MAX_RUNS", "0"),
        ("MAX_RUNS", "-1"),
        ("MAX_RUNS", "2.5"),
        ("TIMEOUT_SECONDS", "0"),
        ("LLM_TIMEOUT_SECONDS", "ten"),
        ("LLM_MAX_RETRIES", "-1"),
        ("STRUCTURED_OUTPUT", "xml"),
        ("MODEL_PRICES", "m=3"),
        ("MODEL_PRICES", "m=3/15/0.3/1"),
        ("MODEL_PRICES", "m=3/-15"),
    ],
)
def test_bad_values_raise_an_error_naming_the_variable(name, raw):
    with pytest.raises(SettingsError, match=name) as error:
        Settings.from_env({name: raw})
    assert raw in str(error.value)


def test_bad_value_in_the_process_environment(clean_environment):
    clean_environment.setenv("MAX_RUNS", "many")
    with pytest.raises(SettingsError, match="MAX_RUNS"):
        Settings()


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)


def test_llm_api_key_falls_back_to_openrouter_api_key():
    assert Settings.from_env({"OPENROUTER_API_KEY": "sk-or"}).api_key == "sk-or"
    assert Settings.from_env({"OPENROUTER_API_KEY": "sk-or", "LLM_API_KEY": "sk-local"}).api_key == "sk-local"
    assert Settings.from_env({"LLM_API_KEY": "sk-local"}).api_key == "sk-local"


def test_check_needs_a_key_only_for_openrouter():
    with pytest.raises(SettingsError, match="OPENROUTER_API_KEY"):
        Settings.from_env({}).check()
    with pytest.raises(SettingsError, match="OPENROUTER_API_KEY"):
        Settings.from_env({"LLM_BASE_URL": "https://openrouter.ai/api/v1/"}).check()
    Settings.from_env({"OPENROUTER_API_KEY": "sk-or"}).check()
    Settings.from_env({"LLM_API_KEY": "sk-any"}).check()
    Settings.from_env({"LLM_BASE_URL": "http://localhost:8000/v1"}).check()
    Settings.from_env({}, chat_model=object()).check()


def test_api_keys_are_not_in_repr():
    settings = Settings.from_env({"OPENROUTER_API_KEY": "sk-or-very-secret", "LLM_API_KEY": "sk-local-very-secret"})
    shown = repr(settings)
    assert "very-secret" not in shown
    assert "api_key" not in shown
    assert "max_runs=10" in shown


def test_settings_table_lists_every_variable():
    table = settings_table()
    lines = table.splitlines()
    assert lines[:2] == ["| Variable | Default | What it sets |", "|---|---|---|"]
    read = variables_read()
    assert len(lines) == 2 + len(read)
    for name in read:
        assert f"| `{name}` |" in table
    assert "| `OPENROUTER_API_KEY` | (none) |" in table
    assert "| `MAX_RUNS` | `10` |" in table


def test_model_sets_every_stage_whose_own_variable_is_not_set():
    settings = Settings.from_env({"MODEL": "local/qwen3", "CODE_MODEL": "local/coder"})
    assert (settings.code_model, settings.summarize_model, settings.report_model) == ("local/coder", "local/qwen3", "local/qwen3")
    defaults = Settings.from_env({})
    assert defaults.code_model == "anthropic/claude-sonnet-4.6" and defaults.summarize_model == "openai/gpt-4o-mini"


def test_the_model_flag_sets_every_stage_and_a_stage_keyword_still_wins():
    settings = Settings.from_env({"CODE_MODEL": "from/env"}, model="from/flag")
    assert {settings.code_model, settings.summarize_model, settings.report_model} == {"from/flag"}
    settings = Settings.from_env({}, model="from/flag", code_model="local/coder")
    assert (settings.code_model, settings.report_model) == ("local/coder", "from/flag")


def test_hints_name_the_program():
    assert Settings.from_env({}).resume_command("my exp") == "python main.py -d 'my exp' --resume"
    assert Settings.from_env({}, program="auto-ml-runner").start_command("exp") == "auto-ml-runner -d exp"
    assert Settings.from_env({}, program="run_experiment").resume_command("exp") == "run_experiment('exp', resume=True)"
