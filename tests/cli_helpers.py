"""Helpers shared by tests that drive the real command line."""

from __future__ import annotations

from fabench.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real CLI entry point; return (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
