"""README and .ci/run say what the code does."""

from __future__ import annotations

import re

from scripted import REPO

from settings import settings_table


def test_readme_settings_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- settings-table:.*?-->\n(.*?)\n<!-- /settings-table -->", readme, re.DOTALL)
    assert block is not None
    assert block.group(1).strip() == settings_table()


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in readme and 'pip install -e ".[dev]"' in ci
    for command in ("python -m pytest -q", "ruff check . && ruff format --check ."):
        assert command in readme and command in ci
