"""``fabench bench peak``: achieved GFLOP/s and fraction of the machine's peak (see fabench.bench.peak)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from fabench.cli.bench import bench_app


@bench_app.command("peak")
def bench_peak(
    arch: str = typer.Option("resnet20", help="Architecture name (fabench, timm or tv)."),
    rule: str = typer.Option("fa", help="Rule attached for the fabench step."),
    batch_size: int = typer.Option(128, help="Images per step."),
    image_size: int = typer.Option(32, help="Input height and width."),
    num_classes: int = typer.Option(10, help="Classes of the output layer."),
    steps: int = typer.Option(3, help="Timed steps per setting per round."),
    rounds: int = typer.Option(3, help="Rounds over all settings (after one warm-up round)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    plugin: list[str] = typer.Option([], "--plugin", help="A .py file or module whose rules to load (repeatable)."),
) -> None:
    """Time one training step of ARCH in fp32 and in bf16 with channels_last, plain and under RULE,
    and print its GFLOP/s as a fraction of this machine's matmul peak in the same precision."""
    from fabench.bench.peak import BF16_NHWC, FP32, run_peak_benchmark
    from fabench.bench.rules import BenchSetup
    from fabench.errors import FabenchError
    from fabench.rules import load_plugins, parse_rule

    load_plugins(tuple(plugin))
    parse_rule(rule)
    if steps < 1 or rounds < 1:
        raise FabenchError(f"--steps and --rounds must be at least 1, got {steps} and {rounds}")
    setup = BenchSetup(arch, batch_size, image_size, num_classes, device, plugins=tuple(plugin)).check()
    figures = run_peak_benchmark(setup, rule, steps=steps, rounds=rounds)
    import torch

    peaks = ", ".join(f"{str(dtype).removeprefix('torch.')} {rate:.0f} GFLOP/s"
                      for dtype, rate in figures.peak_gflops.items())
    typer.echo(f"matmul peak ({torch.get_num_threads()} threads, {device}): {peaks}")
    typer.echo(f"{arch}, batch {batch_size}, {image_size}x{image_size}: {figures.step_gflop:.2f} GFLOP per step "
               f"(PyTorch's FLOP counter, forward and backward)")
    table = Table()
    for column in ("setting", "step", "ms", "images/s", "GFLOP/s", "% of peak"):
        table.add_column(column, justify="left" if column in ("setting", "step") else "right")
    for step in figures.steps:
        label = "plain PyTorch" if step.rule == "plain" else f"fabench {step.rule}"
        table.add_row(step.setting.name, label, f"{1000 * step.seconds:.1f}",
                      f"{figures.batch_size / step.seconds:.0f}", f"{figures.achieved_gflops(step):.1f}",
                      f"{100 * figures.fraction_of_peak(step):.1f}")
    Console(width=120).print(table)
    for name in ("plain", rule):
        speedup = figures.find(FP32, name).seconds / figures.find(BF16_NHWC, name).seconds
        label = "plain PyTorch" if name == "plain" else f"fabench {name}"
        typer.echo(f"{label}: {BF16_NHWC.name} is {speedup:.2f}x the speed of {FP32.name}")
