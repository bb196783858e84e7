"""``fabench bench loop``: ``fabench run``'s training throughput as a ratio to a hand-written loop."""

from __future__ import annotations

from typing import Annotated

import typer

from fabench.cli.bench import bench_app
from fabench.cli.choices import choice_type, plain
from fabench.setting_values import AMP_MODES

#: The loop is timed at a precision the user names: both sides run it, so there is no "auto".
LoopAmp = choice_type("LoopAmp", [mode for mode in AMP_MODES if mode != "auto"])


@bench_app.command("loop")
def bench_loop(
    arch: Annotated[str, typer.Option(help="Architecture.")] = "arch1",
    dataset: Annotated[str, typer.Option(help="Dataset (in-memory).")] = "cifar10-mini",
    epochs: Annotated[int, typer.Option(help="Epochs per timed measurement.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    subset: Annotated[int | None, typer.Option(help="Train on this many images.")] = None,
    rounds: Annotated[int, typer.Option(help="Timed rounds of each side (after one warm-up round).")] = 3,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[LoopAmp, typer.Option(help="Precision of both loops.")] = LoopAmp.off,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory layout.")] = False,
) -> None:
    """Train ARCH under bp with `fabench run` and with a minimal PyTorch loop; print the ratio."""
    from fabench.bench.loop import run_loop_benchmark
    from fabench.errors import FabenchError
    from fabench.train.config import RunConfig
    from fabench.train.session import preflight

    amp = plain(amp)
    if rounds < 1:
        raise FabenchError(f"--rounds must be at least 1, got {rounds}")
    # plain SGD under bp, no probe: what the hand-written loop does too
    config = RunConfig(rule="bp", optimizer="sgd", lr=0.05, weight_decay=5e-4, diagnostics="off",
                       arch=arch, dataset=dataset, epochs=epochs, batch_size=batch_size, subset=subset,
                       device=device, amp=amp, channels_last=channels_last, task="bench")
    device_name = str(preflight(config))
    figures = run_loop_benchmark(config, rounds=rounds)
    fab, base = figures.fabench, figures.baseline

    def mean_sd(values: list[float]) -> str:
        sd = (sum((v - sum(values) / len(values)) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
        return f"{sum(values) / len(values):.0f} ± {sd:.0f}"

    typer.echo(f"{arch} on {dataset}, batch {batch_size}, {epochs} epoch(s) per round, {rounds} rounds, "
               f"{device_name}, amp {amp}")
    typer.echo(f"fabench run (bp):  {mean_sd(fab)} images/s")
    typer.echo(f"hand-written loop: {mean_sd(base)} images/s")
    paired = ", ".join(f"{r:.3f}" for r in figures.paired_ratios)
    typer.echo(f"ratio fabench/hand-written: {figures.ratio:.3f} (ratio of means; target >= 0.95)")
    typer.echo(f"per round: {paired}; median {figures.median_paired_ratio:.3f}; "
               f"best round vs best round: {figures.best_ratio:.3f}")
