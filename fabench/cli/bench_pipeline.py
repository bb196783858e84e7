"""``fabench bench pipeline``: the folder pipeline's images/s per core, as ratios to the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fabench.cli.bench import bench_app


@bench_app.command("pipeline")
def bench_pipeline(
    images: Annotated[int, typer.Option(help="JPEGs to write (500x375, photo-like) and time over.", min=1)] = 200,
    size: Annotated[int, typer.Option(help="Side of the training crops.", min=1)] = 224,
    rounds: Annotated[int, typer.Option(help="Timed rounds of every pipeline.", min=1)] = 3,
    folder: Annotated[Path | None, typer.Option(help="Time these JPEGs (*.jpg, *.jpeg, *.JPEG, searched recursively) instead of writing some.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the written images and of the crops.")] = 0,
) -> None:
    """Time the worker's work on one training image under each folder pipeline, on one core."""
    import statistics
    import tempfile

    from fabench.bench.pipeline import run_pipeline_benchmark, write_photos
    from fabench.errors import FabenchError

    with tempfile.TemporaryDirectory(prefix="fabench-pipeline-") as scratch:
        if folder is None:
            paths = write_photos(Path(scratch), images, seed)
            source = f"{len(paths)} photo-like 500x375 JPEGs written to a temporary folder"
        else:
            if not folder.is_dir():
                raise FabenchError(f"--folder {folder} is not a folder; give a folder of JPEG files")
            paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:images]
            if not paths:
                raise FabenchError(f"--folder {folder} holds no .jpg/.jpeg files")
            source = f"{len(paths)} JPEGs from {folder}"
        kilobytes = sum(p.stat().st_size for p in paths) / len(paths) / 1000
        figures = run_pipeline_benchmark(paths, size, rounds, seed)
    typer.echo(f"{source}, {kilobytes:.0f} KB each on average; crops {size}x{size}; one thread; {rounds} rounds")
    typer.echo("pipeline\timages/s per core (median)\tratio to reference per round\tmedian ratio")
    for name in figures.rates:
        ratios = figures.paired_ratios(name)
        typer.echo(f"{name}\t{figures.median_rate(name):.0f}\t{', '.join(f'{r:.2f}' for r in ratios)}\t"
                   f"{statistics.median(ratios):.2f}")
