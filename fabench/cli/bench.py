"""``fabench bench ...``: benchmarks that print ratios against a baseline measured in the same run.

This module only defines the ``bench`` group; each benchmark adds its subcommand from its own
module (``bench_rules``, ``bench_loop``, ...), imported by :mod:`fabench.cli.commands`.
"""

from __future__ import annotations

import typer

from fabench.cli import app

bench_app = typer.Typer(help="Benchmarks: time and memory as ratios to a baseline in the same process.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
