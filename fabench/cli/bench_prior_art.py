"""``fabench bench biotorch``: fabench's rules vs BioTorch's layers (see fabench.bench.prior_art)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from fabench.cli.bench import bench_app


@bench_app.command("biotorch")
def bench_biotorch(
    arch: str = typer.Option("resnet20", help="Architecture name (fabench, timm or tv)."),
    rules: str = typer.Option("fa,fa-usf,fa-frsf,fa-brsf", help="Comma-separated rules with a BioTorch counterpart."),
    batch_size: int = typer.Option(128, help="Images per step."),
    image_size: int = typer.Option(32, help="Input height and width."),
    steps: int = typer.Option(2, help="Timed steps per contestant per round."),
    rounds: int = typer.Option(5, help="Rounds over all contestants (after one warm-up round)."),
) -> None:
    """Time ARCH under bp, each fabench rule and its BioTorch counterpart (CPU); print ratios to bp."""
    from fabench.bench.prior_art import compare_with_biotorch

    names = [r.strip() for r in rules.split(",") if r.strip()]
    times = compare_with_biotorch(arch, names, batch_size=batch_size, image_size=image_size,
                                  steps=steps, rounds=rounds)
    table = Table(title=f"{arch}, batch {batch_size}, {image_size}x{image_size}, cpu: step time / bp")
    for column in ("implementation and rule", "step ms", "time / bp"):
        table.add_column(column, justify="left" if column.startswith("impl") else "right")
    for label, ms in times.items():
        table.add_row(label, f"{ms:.1f}", f"{ms / times['bp']:.3f}")
    Console(width=100).print(table)
