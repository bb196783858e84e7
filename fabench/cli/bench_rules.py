"""``fabench bench rules``: per-rule step time and memory as ratios to bp (see fabench.bench.rules)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from fabench.cli.bench import bench_app

DEFAULT_RULES = ("fa", "fa-usf", "fa-usf-init", "fa-usf-sn", "fa-frsf", "fa-brsf", "fa-usf-sn+const")


@bench_app.command("rules")
def bench_rules(
    arch: str = typer.Option("resnet20", help="Architecture name (fabench, timm or tv)."),
    rules: str = typer.Option(",".join(DEFAULT_RULES), help="Comma-separated rules; bp is always the baseline."),
    batch_size: int = typer.Option(128, help="Images per step."),
    image_size: int = typer.Option(32, help="Input height and width."),
    num_classes: int = typer.Option(10, help="Classes of the output layer."),
    steps: int = typer.Option(5, help="Timed steps per rule per round."),
    rounds: int = typer.Option(3, help="Rounds over all rules (after one warm-up round)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
) -> None:
    """Train a few steps of ARCH under each rule; print median step time and peak memory vs bp."""
    from fabench.bench.rules import BenchSetup, run_rule_benchmark

    names = ["bp", *[r.strip() for r in rules.split(",") if r.strip() and r.strip() != "bp"]]
    setup = BenchSetup(arch, batch_size, image_size, num_classes, device)
    figures = run_rule_benchmark(setup, names, steps=steps, rounds=rounds)
    base = figures[0]
    table = Table(title=f"{arch}, batch {batch_size}, {image_size}x{image_size}, {device}: ratios to bp")
    columns = ("rule", "step ms", "time / bp", "step peak MiB", "step / bp", "total peak MiB", "total / bp",
               "feedback state MiB")
    for column in columns:
        table.add_column(column, justify="left" if column == "rule" else "right")
    for f in figures:
        table.add_row(f.rule, f"{f.step_ms:.1f}", f"{f.step_ms / base.step_ms:.3f}",
                      f"{f.step_peak_mib:.1f}", f"{f.step_peak_mib / base.step_peak_mib:.3f}",
                      f"{f.total_peak_mib:.1f}", f"{f.total_peak_mib / base.total_peak_mib:.3f}",
                      f"{f.state_mib:.2f}")
    Console(width=140).print(table)
