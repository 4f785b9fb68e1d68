"""Says which direct dependencies the floors venv holds at the lowest version pyproject.toml allows, and which above it.

Run with the floors venv's Python after `uv pip install --resolution lowest-direct`. It only reports: a direct
dependency lifted above its floor by something that depends on it (say a newer anyio needing a newer
typing-extensions) means that floor is no longer what the tests see; raise it to what was installed.
"""

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.version import Version

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
specs = project["dependencies"] + [spec for extra in project["optional-dependencies"].values() for spec in extra]
at_floor, above = [], []
for spec in specs:
    match = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([^,;\s]+)", spec)
    if not match or match[1] == project["name"]:
        continue  # the project's own extras, or a dependency without a floor
    name, floor = match[1], match[2]
    try:
        installed = version(name)
    except PackageNotFoundError:
        above.append(f"{name} not installed (floor {floor})")
        continue
    if Version(installed) == Version(floor):
        at_floor.append(f"{name} {installed}")
    else:
        above.append(f"{name} {installed} (floor {floor})")
print("at their floor:", ", ".join(at_floor))
if above:
    print("above their floor, lifted by what depends on them:", ", ".join(above))
