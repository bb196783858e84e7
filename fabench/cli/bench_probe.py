"""``fabench bench probe``: diagnostics probe time as a fraction of an epoch (fabench.bench.probe)."""

from __future__ import annotations

from typing import Annotated

import typer

from fabench.cli.bench import bench_app


def _mean_sd(values: list[float]) -> str:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
    return f"{mean:.3f} ± {sd:.3f} s"


@bench_app.command("probe")
def bench_probe(
    rule: Annotated[str, typer.Option(help="Feedback rule of the timed run.")] = "fa",
    arch: Annotated[str, typer.Option(help="Architecture.")] = "arch1",
    dataset: Annotated[str, typer.Option(help="Dataset (in-memory).")] = "cifar10-mini",
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    subset: Annotated[int | None, typer.Option(help="Train on this many images (a shorter epoch).")] = None,
    rounds: Annotated[int, typer.Option(help="Timed epochs (after a warm-up).")] = 2,
    probes: Annotated[int, typer.Option(help="Timed probes after each timed epoch.")] = 3,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Time training epochs and diagnostics probes of one run; print probe time / epoch time."""
    from fabench.bench.probe import run_probe_benchmark
    from fabench.errors import FabenchError
    from fabench.train.config import RunConfig

    if rounds < 1 or probes < 1:
        raise FabenchError(f"--rounds and --probes must be at least 1, got {rounds} and {probes}")
    config = RunConfig(rule=rule, arch=arch, dataset=dataset, batch_size=batch_size, subset=subset,
                       device=device, task="bench")
    f = run_probe_benchmark(config, rounds=rounds, probes=probes)
    typer.echo(f"{arch} / {rule} on {dataset}{f' (subset {subset})' if subset else ''}, batch {batch_size}, "
               f"{f.steps_per_epoch} steps per epoch, {f.device}; probe: {f.probe_images} images, {f.layers} layers")
    typer.echo(f"epoch (training steps): {_mean_sd(f.epoch_s)} over {len(f.epoch_s)}")
    typer.echo(f"probe:                  {_mean_sd(f.probe_s)} over {len(f.probe_s)}")
    typer.echo(f"probe / epoch: {f.ratio:.4f} ({100 * f.ratio:.2f}% per probe; --diagnostics epoch adds one "
               f"probe per epoch, --diagnostics N adds {f.steps_per_epoch} // N more; target <= 5%)")
