"""``fabench table`` and ``fabench plot``: results as tables (with published numbers) and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fabench.cli import app
from fabench.cli.choices import choice_type
from fabench.report.table import FORMATS, METRICS

#: What ``fabench plot`` draws.
PLOT_KINDS = ("curves", "alignment")
Format = choice_type("Format", FORMATS)
Metric = choice_type("Metric", (*METRICS, "alignment"))
PlotKind = choice_type("PlotKind", PLOT_KINDS)

ResultsOption = Annotated[Path, typer.Option("--results-dir", help="Results folder holding runs.csv.")]
TaskFilter = Annotated[str | None, typer.Option("--task", help="fnmatch filter on task name.")]
RuleFilter = Annotated[str | None, typer.Option("--rule", help="fnmatch filter on rule.")]
ArchFilter = Annotated[str | None, typer.Option("--arch", help="fnmatch filter on arch.")]
DatasetFilter = Annotated[str | None, typer.Option("--dataset", help="fnmatch filter on dataset.")]


def _load_runs(results_dir: Path, **filters):
    """Valid runs.csv rows as a DataFrame, filtered; bad rows reported on stderr."""
    from fabench.report.table import filter_runs
    from fabench.train.runs_csv import read_runs

    runs = read_runs(results_dir)
    for problem in runs.problems:
        typer.echo(f"fabench: warning: {problem}", err=True)
    return filter_runs(runs.frame(), **filters)


def _split(text: str | None) -> list[str] | None:
    """A comma-separated option as a list (None if not given)."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@app.command("table")
def table(
    results_dir: ResultsOption = Path("results"),
    task: TaskFilter = None,
    rule: RuleFilter = None,
    arch: ArchFilter = None,
    dataset: DatasetFilter = None,
    rows: Annotated[str | None, typer.Option(help="Column(s) down the side, comma-separated. [default: arch]")] = None,
    cols: Annotated[str | None, typer.Option(help="Column(s) across the top. [default: rule]")] = None,
    by: Annotated[str | None, typer.Option(help="One table per value of these. [default: dataset]")] = None,
    metric: Annotated[Metric, typer.Option(help="What the cells show (alignment: the mean δx angle to backprop).")] = Metric("top1-err"),
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format("rich"),
    compare: Annotated[str | None, typer.Option(help="'published': show published numbers beside, with the difference.")] = None,
    vs: Annotated[str | None, typer.Option("--vs", help="A rule, e.g. bp: show each rule's paired difference from it over matched seeds, with its 95 % interval.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of the terminal.")] = None,
) -> None:
    """Mean and 95 % interval over seeds of a metric, per arch × rule for each dataset (by default)."""
    from fabench.errors import FabenchError
    from fabench.report import table as tables

    metric, fmt = metric.value, fmt.value
    if compare is not None and compare != "published":
        raise FabenchError(f"--compare takes 'published', got '{compare}'")
    if vs is not None and (compare is not None or metric == "alignment"):
        raise FabenchError("--vs compares rules on a result metric; it cannot go with --compare or --metric alignment")
    tables.check_metric(metric, compare=compare is not None)
    if output is not None and fmt == "rich":
        raise FabenchError("--format rich prints to the terminal; use --format markdown, csv or latex with --output")
    if output is not None:
        from fabench.train.records import check_output_file

        check_output_file(output, "--output")
    frame = _load_runs(results_dir, task=task, rule=rule, arch=arch, dataset=dataset)
    if compare is not None:
        if rows or cols or by:
            raise FabenchError("--compare published lays out dataset/arch/rule/optimizer rows itself; drop --rows/--cols/--by")
        blocks = tables.build_comparison(frame, metric_name=metric)
    elif metric == "alignment":  # per-layer diagnostics: fabench.report.alignment
        from fabench.report.alignment import alignment_blocks

        blocks, skipped = alignment_blocks(frame, results_dir, rows=_split(rows) or ["arch"], cols=_split(cols) or ["rule"],
                                           by=_split(by) if by is not None else ["dataset"])
        for message in skipped:
            typer.echo(f"fabench: warning: {message}", err=True)
    else:
        blocks = tables.build_blocks(frame, rows=_split(rows) or ["arch"], cols=_split(cols) or ["rule"],
                                     by=_split(by) if by is not None else ["dataset"], metric_name=metric, vs=vs)
    if fmt == "rich":
        from rich.console import Console

        console = Console()
        tables.render_rich(blocks, console if console.is_terminal else Console(width=200))
        return
    text = {"markdown": tables.render_markdown, "csv": tables.render_csv, "latex": tables.render_latex}[fmt](blocks)
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
    else:
        from fabench.train.records import atomic_write_bytes

        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(output, text.encode())
        typer.echo(f"wrote {output}", err=True)


@app.command("plot")
def plot(
    kind: Annotated[PlotKind, typer.Argument(help="curves (accuracy and loss), or alignment (per-layer δx angle and error norm).")] = PlotKind("curves"),
    results_dir: ResultsOption = Path("results"),
    task: TaskFilter = None,
    rule: RuleFilter = None,
    arch: ArchFilter = None,
    dataset: DatasetFilter = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG path. [default: RESULTS_DIR/<task>-<kind>.png]")] = None,
    epochs: Annotated[str | None, typer.Option(help="alignment: epochs drawn against depth, e.g. 0,5,10. [default: first, middle, last]")] = None,
) -> None:
    """Test accuracy and loss against epoch per rule (mean ± std over seeds), one column per dataset/arch;
    or, with KIND alignment, per-layer δx angle to backprop and error norm, one column per rule."""
    from fabench.errors import FabenchError
    from fabench.report.plot import default_plot_path, plot_curves

    kind = kind.value
    if out is not None and out.suffix.lower() != ".png":
        raise FabenchError(f"--out must end in .png, got '{out}'")
    from fabench.train.records import check_output_file, disk_errors

    if out is not None:
        check_output_file(out, "--out")
    frame = _load_runs(results_dir, task=task, rule=rule, arch=arch, dataset=dataset)
    if out is None:
        out = default_plot_path(results_dir, sorted(set(map(str, frame["task"]))), kind)
        check_output_file(out, "--out")
    with disk_errors(out.parent):
        if kind == "alignment":  # per-layer diagnostics: fabench.report.alignment
            from fabench.report.alignment import parse_epochs, plot_alignment

            path, skipped = plot_alignment(frame, results_dir, out, epochs=parse_epochs(epochs))
        else:
            path, skipped = plot_curves(frame, results_dir, out)
    for message in skipped:
        typer.echo(f"fabench: warning: {message}", err=True)
    typer.echo(f"wrote {path}")
