"""``fabench bench feedback-memory``: dfa/dense-fa feedback memory and step time per form (see
fabench.bench.feedback_memory)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from fabench.cli.bench import bench_app

COLUMNS = ("case", "rule", "form", "materialised MiB", "held MiB", "step peak MiB", "bp peak MiB",
           "feedback / materialised", "step s", "time / bp", "feedback GFLOP", "bp δx GFLOP", "draws/step", "note")


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _row(row) -> list[str]:
    """One table row; 'feedback / materialised' is the feedback memory a step used over the materialised size."""
    work = row.arithmetic
    used = None
    if row.step_s is not None and work.matrix_mib:
        transient = work.tile_mib if row.form == "tiled" else 0.0
        used = (row.held_mib + transient) / work.matrix_mib
    draws = work.random_numbers if row.form == "tiled" else 0.0
    return [row.case, row.rule, row.form, f"{work.matrix_mib:.1f}", _cell(row.held_mib, ".1f"),
            _cell(row.peak_mib, ".1f"), _cell(row.bp_peak_mib, ".1f"), _cell(used, ".2%"), _cell(row.step_s, ".2f"),
            _cell(row.time_ratio, ".2f"), f"{work.feedback_gflop:.1f}", f"{work.bp_dx_gflop:.2f}",
            f"{draws:.2e}", row.note]


@bench_app.command("feedback-memory")
def bench_feedback_memory(
    cases: str = typer.Option("arch1,resnet20,resnet18",
                              help="Comma-separated cases: arch1 (24 px, 10 classes), resnet20 (32 px, 10), "
                                   "resnet18 (timm, 224 px, 1000)."),
    rules: str = typer.Option("dfa,dense-fa", help="Comma-separated rules among dfa, dfa-conv, dfa-wht, dense-fa."),
    batch_size: int | None = typer.Option(None, help="Images per step (default: 64, 64 and 8 per case)."),
    steps: int = typer.Option(3, help="Timed steps per form, each paired with a bp step (after a warm-up)."),
    max_materialise: str = typer.Option("4GiB", help="Largest matrices the materialised form may allocate."),
    max_step_seconds: float = typer.Option(120.0, help="Skip a form whose estimated step takes longer."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
) -> None:
    """Feedback memory (computed and measured) and step time vs bp of dfa/dense-fa, per form."""
    from fabench.bench.memory import ensure_steady_malloc
    from fabench.errors import FabenchError

    if device == "cpu":
        ensure_steady_malloc()
    from fabench.bench.feedback_memory import run_feedback_memory_benchmark
    from fabench.rules import parse_size

    limit = parse_size(max_materialise)
    if limit is None:
        raise FabenchError(f"--max-materialise must be a size such as 4GiB or 512MB, got '{max_materialise}'")
    console = Console(width=200)
    table = Table(title=f"dfa / dense-fa feedback memory and step time, {device}; ratios to bp in the same process")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("case", "rule", "form", "note") else "right")

    def show(row) -> None:
        """Print each row as it is measured (a case can take minutes), then keep it for the table."""
        if not table.rows:
            console.print("  " + " | ".join(COLUMNS), highlight=False)
        console.print("  " + " | ".join(_row(row)), highlight=False)
        table.add_row(*_row(row))

    run_feedback_memory_benchmark(
        [c.strip() for c in cases.split(",") if c.strip()], [r.strip() for r in rules.split(",") if r.strip()],
        steps=steps, batch_size=batch_size, device=device, max_materialise_bytes=limit,
        max_step_seconds=max_step_seconds, on_row=show, on_rates=lambda rates: console.print(
            f"  drawing the matrices: {rates.ns_per_number:.2f} ns per entry (counter stream, by tiles); "
            f"torch.randn into one tile: {rates.randn_ns_per_number:.2f} ns "
            f"({rates.randn_ns_per_number / rates.ns_per_number:.1f}x the stream's)", highlight=False))
    console.print(table)
