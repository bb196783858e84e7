"""Helpers shared by tests that drive the real command line."""

from __future__ import annotations

from fabench.cli import main

#: A valid task file of two cells, for folders that hold broken task files beside it.
TINY_TASK = """task: tiny
version: 1
description: a tiny grid
rules: [bp, fa]
archs: [arch1]
datasets: [cifar10-mini]
seeds: [0]
"""


def alias_bomb(levels: int) -> str:
    """A YAML "billion laughs": each level a list of nine aliases of the level before
    (nine levels: 9**9 strings from about 400 bytes)."""
    lines = ["l0: &l0 [" + ",".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real CLI entry point; return (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, fragment: str) -> None:
    """The CLI's promise for a user error: exit 2, no traceback, and one stderr line
    ``fabench: error: ...`` that holds ``fragment``."""
    assert "Traceback" not in err + out, err
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fabench: error: ") and fragment in lines[0], lines[0]
