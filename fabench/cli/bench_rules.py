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
    plugin: list[str] = typer.Option([], "--plugin", help="A .py file or module whose rules to load (repeatable)."),
) -> None:
    """Train a few steps of ARCH under each rule; print median step time and peak memory vs bp.

    "model ms" is the work model's floor for the covered layers' part of the rule's step (FLOPs,
    bytes and random draws at this machine's measured rates; fabench.bench.work_model); "model /
    bp" adds to every rule's floor what bp's measured step spends beyond its own floor (the layers
    no rule changes: BatchNorm, activations, pooling, the optimizer) and takes the ratio to bp;
    "measured / model" is time / bp over model / bp: 1 means the rule costs what its arithmetic
    says, above 1 how far its implementation is from that."""
    from fabench.bench.rules import BenchSetup, run_rule_benchmark

    names = ["bp", *[r.strip() for r in rules.split(",") if r.strip() and r.strip() != "bp"]]
    setup = BenchSetup(arch, batch_size, image_size, num_classes, device, plugins=tuple(plugin))
    figures = run_rule_benchmark(setup, names, steps=steps, rounds=rounds)
    base = figures[0]
    table = Table(title=f"{arch}, batch {batch_size}, {image_size}x{image_size}, {device}: ratios to bp")
    # what the model leaves out (BatchNorm, activations, pooling, the optimizer) costs every rule the
    # same: bp's measured time beyond its model's floor, added to every rule's floor
    common = max(0.0, base.step_ms - base.model_ms)
    columns = ("rule", "step ms", "time / bp", "model ms", "model / bp", "measured / model", "GFLOP", "step peak MiB",
               "step / bp", "total peak MiB", "total / bp", "feedback state MiB")
    for column in columns:
        table.add_column(column, justify="left" if column == "rule" else "right")
    for f in figures:
        time_ratio, model_ratio = f.step_ms / base.step_ms, (f.model_ms + common) / (base.model_ms + common)
        table.add_row(f.rule, f"{f.step_ms:.1f}", f"{time_ratio:.3f}", f"{f.model_ms:.1f}", f"{model_ratio:.3f}",
                      f"{time_ratio / model_ratio:.3f}", f"{f.model_gflop:.2f}", f"{f.step_peak_mib:.1f}", f"{f.step_peak_mib / base.step_peak_mib:.3f}",
                      f"{f.total_peak_mib:.1f}", f"{f.total_peak_mib / base.total_peak_mib:.3f}",
                      f"{f.state_mib:.2f}")
    Console(width=180).print(table)
