"""Paths as shown to the user: short when they lie below the working directory."""

from __future__ import annotations

import os
from pathlib import Path


def display_path(path: Path | str) -> str:
    """A path relative to the working directory when it lies below it, else absolute."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)
