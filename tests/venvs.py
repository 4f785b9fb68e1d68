"""Scratch virtual environments, as a user's TRAIN_PYTHON would be: a venv with packages no other interpreter has."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def make_venv(folder: Path, files: Mapping[str, str] | None = None, distributions: Mapping[str, str] | None = None) -> Path:
    """A venv at `folder` (without pip, made in a fraction of a second); returns its python.

    `files` are written into its site-packages ({"pkg/__init__.py": source}), as pip would install them, and
    `distributions` get the metadata importlib.metadata reads ({"scikit-learn": "1.5.2"}).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, capture_output=True, timeout=60)
    site_packages = next(folder.glob("lib/python*/site-packages"))
    for name, source in (files or {}).items():
        (site_packages / name).parent.mkdir(parents=True, exist_ok=True)
        (site_packages / name).write_text(source)
    for name, version in (distributions or {}).items():
        info = site_packages / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder / "bin" / "python"
