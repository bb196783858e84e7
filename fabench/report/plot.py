"""Learning-curve figures: test accuracy and test loss against epoch, one column per dataset/arch.

Each run's ``curves.csv`` (``results/<task>/<run_id>/curves.csv``, tidy rows written by
:mod:`fabench.train.curves`) gives per-epoch values; runs that differ only in seed are drawn as
one line (the mean) with a band of ± one standard deviation. Lines are per rule (plus any
setting that differs between runs of a panel, e.g. optimizer). The PNG is written with the Agg
backend to a temporary file and moved into place, so a failed plot leaves no partial file; it
gets the mode the umask gives, like every other file fabench writes.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from fabench.errors import FabenchError
from fabench.report.table import is_jpeg_sample, split_columns
from fabench.train.records import TASK_NAME, atomic_write

JPEG_SHORT_NOTE = "{name}: JPEG-re-encoded CIFAR-10 sample, not the original dataset"
#: (split, metric) of the curves drawn, with the axis label of each row of panels.
PANELS = ((("test", "top1"), "test top-1 accuracy (%)"), (("test", "loss"), "test loss"))


def read_curves(path: Path) -> dict[tuple[str, str], dict[int, float]]:
    """Whole-model per-epoch values of one run: {(split, metric): {epoch: value}}.

    Later rows for the same epoch win (a resumed run's rows after its checkpoint).
    """
    wanted = {key for key, _ in PANELS}
    values: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            key = (row.get("split", ""), row.get("metric", ""))
            if key not in wanted or row.get("layer"):
                continue
            try:
                values[key][int(float(row["epoch"]))] = float(row["value"])
            except (TypeError, ValueError):
                continue
    return values


def _mean_std(series: list[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """Per-epoch mean and (sample) std over the runs that reached that epoch."""
    epochs = sorted({e for s in series for e in s})
    means, stds = [], []
    for epoch in epochs:
        vals = [s[epoch] for s in series if epoch in s and math.isfinite(s[epoch])]
        mean = sum(vals) / len(vals) if vals else float("nan")
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
        means.append(mean)
        stds.append(math.sqrt(var))
    return epochs, means, stds


def _line_label(keys: list[str], values: tuple) -> str:
    """Legend text of a line: the rule, then any other distinguishing setting."""
    parts = [str(values[0])] + [f"{k}={v}" for k, v in zip(keys[1:], values[1:], strict=True)]
    return ", ".join(parts)


def plot_curves(frame, results_dir: Path, out: Path) -> tuple[Path, list[str]]:
    """Draw the figure for the runs in ``frame``; return the PNG path and skipped-run messages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if frame.empty:
        raise FabenchError("no runs match the filters")
    skipped: list[str] = []
    curves: dict[str, dict] = {}
    for row in frame.itertuples(index=False):
        path = Path(results_dir) / str(row.task) / str(row.run_id) / "curves.csv"
        if not path.is_file():
            skipped.append(f"run {row.run_id} ({row.arch}/{row.rule}/{row.dataset}): no curves.csv at {path}; skipped")
            continue
        curves[row.run_id] = read_curves(path)
    frame = frame[frame["run_id"].isin(list(curves))]
    if frame.empty:
        raise FabenchError("none of the selected runs has a curves.csv to plot")

    panel_keys = ["dataset", "arch"]
    line_keys = ["rule", *split_columns(frame, [*panel_keys, "rule"])]
    panels = list(frame.groupby(panel_keys, sort=False))
    fig, axes = plt.subplots(len(PANELS), len(panels), figsize=(4.6 * len(panels) + 0.6, 7.0), squeeze=False)
    for col, ((dataset, arch), part) in enumerate(panels):
        for (values, runs), colour in zip(part.groupby(line_keys, sort=False), _colours(), strict=False):
            values = values if isinstance(values, tuple) else (values,)
            for row_index, (key, ylabel) in enumerate(PANELS):
                series = [curves[r][key] for r in runs["run_id"] if curves[r].get(key)]
                if not series:
                    continue
                epochs, mean, std = _mean_std(series)
                ax = axes[row_index][col]
                ax.plot(epochs, mean, color=colour, marker="o", markersize=3,
                        label=f"{_line_label(line_keys, values)} (n={len(series)})")
                ax.fill_between(epochs, [m - s for m, s in zip(mean, std, strict=True)],
                                [m + s for m, s in zip(mean, std, strict=True)], color=colour, alpha=0.2, linewidth=0)
                ax.set_xlabel("epoch")
                ax.set_ylabel(ylabel)
        axes[0][col].set_title(f"{dataset} / {arch}")
        for row_index in range(len(PANELS)):
            ax = axes[row_index][col]
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _log_scale_if_wide(ax)
            if ax.has_data():
                ax.legend(fontsize="small")
    fig.suptitle(_figure_title(frame), fontsize="medium")
    fig.tight_layout()
    _save_atomic(fig, Path(out))
    plt.close(fig)
    return Path(out), skipped


def _log_scale_if_wide(ax) -> None:
    """Use a log y axis when positive values span more than a factor of 10 (a diverging loss)."""
    values = [v for line in ax.get_lines() for v in line.get_ydata() if math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")


def _colours():
    """Matplotlib's colour cycle, repeated without end."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    while True:
        yield from cycle


def _figure_title(frame) -> str:
    """Task(s) and dataset(s), plus the JPEG-sample caveat where it applies; mean ± std bands."""
    tasks = ", ".join(dict.fromkeys(map(str, frame["task"])))
    datasets = list(dict.fromkeys(map(str, frame["dataset"])))
    title = f"task {tasks}: {', '.join(datasets)} (mean ± std over seeds)"
    notes = [JPEG_SHORT_NOTE.format(name=d) for d in datasets if is_jpeg_sample(d)]
    return title + ("\n" + "; ".join(notes) if notes else "")


def _save_atomic(fig, out: Path) -> None:
    """Write the PNG beside its destination, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda handle: fig.savefig(handle, dpi=120, format="png"))


def default_plot_path(results_dir: Path, tasks: list[str], kind: str) -> Path:
    """``RESULTS_DIR/<task>-<kind>.png`` for one task (``all-<kind>.png`` for several).

    The task comes from runs.csv, so it is data: a name that is not a plain folder name (``..``,
    a ``/``) is refused rather than allowed to place the figure outside the results folder.
    """
    if len(tasks) != 1:
        return results_dir / f"all-{kind}.png"
    if not TASK_NAME.fullmatch(tasks[0]):
        raise FabenchError(f"runs.csv names task {tasks[0][:60]!r}, which is not a task name (letters, digits, "
                           "'.', '_', '-'); give the figure's path with --out")
    return results_dir / f"{tasks[0]}-{kind}.png"
