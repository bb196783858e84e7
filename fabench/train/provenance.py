"""What a result was made with: package versions, the git commit, timestamps."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from functools import cache
from pathlib import Path

import fabench

PACKAGES = ("torch", "torchvision", "timm", "numpy")


@cache
def package_versions() -> dict[str, str]:
    """Versions of Python, fabench and the packages that shape results ("" if absent)."""
    versions = {"python": platform.python_version(), "fabench": fabench.__version__}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = ""
    return versions


@cache
def git_commit() -> str:
    """The commit of the fabench source tree, with ``-dirty`` if it has local changes.

    Empty when fabench is not running from a git checkout (e.g. an installed wheel).
    """
    source = Path(fabench.__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=source, capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def now() -> str:
    """The current time as an ISO 8601 string with timezone."""
    return datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="seconds")
