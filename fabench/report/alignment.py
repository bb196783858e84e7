"""Alignment figures and tables from the probe rows of runs' ``curves.csv`` (fabench.diagnostics).

- :func:`plot_alignment`: for one dataset/architecture, one column per rule (side by side, same
  axes): the δx angle against depth at chosen epochs, the δx angle against epoch for each
  layer, and the error-signal norm ‖δy‖ against depth (log scale) at the same epochs. Values
  are means over the runs (seeds) of each rule.
- :func:`alignment_blocks`: ``fabench table --metric alignment``: per run, the mean over layers
  of the δx angle at its last probe; cells give mean ± std over seeds, laid out like the other
  tables (``--rows``/``--cols``/``--by``).

"At epoch e" means the probe logged at the end of epoch e (epoch 0: before training); probes
every N steps appear on the angle-against-epoch curves at ``step / steps_per_epoch``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fabench.errors import FabenchError
from fabench.report.plot import JPEG_SHORT_NOTE, _save_atomic
from fabench.report.table import Block, is_jpeg_sample
from fabench.train import schema

PROBE_SPLIT = "probe"
ANGLE_METRIC = "dx_angle"
NORM_METRIC = "dy_norm"
RUN_KEYS = ("task", "run_id", "rule", "arch", "dataset", "seed")


def _steps_per_epoch(run_dir: Path) -> float:
    try:
        value = json.loads((run_dir / "manifest.json").read_text()).get("steps_per_epoch")
        return float(value) if value else math.nan
    except (OSError, ValueError):
        return math.nan


def read_probe_rows(run_dir: Path):
    """A run's probe rows as a DataFrame (epoch, step, metric, layer, value), later rows winning."""
    import pandas as pd

    # all text first: a torn last line (a killed run) or a stray value must not stop a report
    curves = pd.read_csv(run_dir / "curves.csv", dtype=str, keep_default_na=False, on_bad_lines="skip")
    complete = (curves["wall_time"] != "") & (curves["layer"] != "")  # a torn line lacks its last fields
    probe = curves[(curves["split"] == PROBE_SPLIT) & complete].copy()
    for column in ("epoch", "step", "value"):
        probe[column] = pd.to_numeric(probe[column], errors="coerce")
    probe = probe.dropna(subset=["epoch", "step"]).astype({"epoch": int, "step": int})
    probe = probe.drop_duplicates(["step", "metric", "layer"], keep="last")
    return probe[["epoch", "step", "metric", "layer", "value"]]


def load_probes(frame, results_dir: Path):
    """Probe rows of every run in a runs.csv ``frame``, with the run's keys; plus skip messages."""
    import pandas as pd

    parts, skipped = [], []
    for row in frame.itertuples(index=False):
        run_dir = Path(results_dir) / str(row.task) / str(row.run_id)
        label = f"run {row.run_id} ({row.arch}/{row.rule}/{row.dataset})"
        if not (run_dir / "curves.csv").is_file():
            skipped.append(f"{label}: no curves.csv in {run_dir}; skipped")
            continue
        probe = read_probe_rows(run_dir)
        if probe.empty:
            skipped.append(f"{label}: no probe rows (run with --diagnostics off?); skipped")
            continue
        for key in RUN_KEYS:
            probe[key] = getattr(row, key)
        probe["x_epoch"] = probe["step"] / _steps_per_epoch(run_dir)
        parts.append(probe)
    if not parts:
        raise FabenchError("none of the selected runs has probe rows in its curves.csv; "
                           "run them with --diagnostics epoch (the default) or N")
    return pd.concat(parts, ignore_index=True), skipped


def _epoch_end_probes(probes):
    """Only the probe taken at each epoch's end (the first probe of its ``epoch`` value)."""
    first = probes.groupby(["run_id", "epoch"])["step"].transform("min")
    return probes[probes["step"] == first]


def _layer_order(probes) -> list[str]:
    """Layer names in forward order, from the ``depth`` rows."""
    depth = probes[probes["metric"] == "depth"].groupby("layer")["value"].median()
    return list(depth.sort_values(kind="stable").index)


def parse_epochs(text: str | None) -> list[int] | None:
    """``--epochs 0,5,10`` as a list of non-negative integers (None when not given)."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = [-1]
    if not values or min(values) < 0:
        raise FabenchError(f"--epochs takes comma-separated epoch numbers, e.g. 0,5,10; got '{text}'")
    return values


def _choose_epochs(available: list[int], wanted: list[int] | None) -> list[int]:
    """``wanted`` (each must exist), else the first, middle and last epoch probed."""
    if wanted:
        missing = [e for e in wanted if e not in available]
        if missing:
            raise FabenchError(f"--epochs {','.join(map(str, missing))}: no probe at the end of that epoch; "
                               f"probed epochs: {', '.join(map(str, available))}")
        return sorted(set(wanted))
    return sorted({available[0], available[len(available) // 2], available[-1]})


def _rule_order(rules) -> list[str]:
    """Rules in the registry's order (bp first), modifiers after their base, unknown names last."""
    from fabench.rules import list_rules

    known = list(list_rules())

    def key(rule: str):
        base = rule.split("+")[0]
        return (known.index(base) if base in known else len(known), rule)
    return sorted(dict.fromkeys(rules), key=key)


def _one_group(probes):
    groups = probes[["dataset", "arch"]].drop_duplicates()
    if len(groups) > 1:
        names = ", ".join(f"{d}/{a}" for d, a in groups.itertuples(index=False))
        raise FabenchError(f"the alignment plot draws one dataset/arch at a time, the selection has {names}; "
                           "narrow it with --dataset/--arch")
    return groups.iloc[0]["dataset"], groups.iloc[0]["arch"]


def _mean_by(probes, metric: str, keys: list[str]):
    """Mean over runs (seeds) of ``metric`` per ``keys``, with the number of runs."""
    part = probes[probes["metric"] == metric]
    return part.groupby(keys, sort=False)["value"].agg(["mean", "count"]).reset_index()


def _draw_depth(ax, probes, metric: str, epochs: list[int], layers: list[str]) -> None:
    import matplotlib.pyplot as plt

    ends = _epoch_end_probes(probes)
    means = _mean_by(ends[ends["epoch"].isin(epochs)], metric, ["epoch", "layer"])
    cmap = plt.get_cmap("viridis")
    for i, epoch in enumerate(epochs):
        line = means[means["epoch"] == epoch].set_index("layer").reindex(layers)
        colour = cmap(i / max(1, len(epochs) - 1) * 0.85)
        ax.plot(range(len(layers)), line["mean"], marker="o", markersize=4, color=colour, label=f"epoch {epoch}")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize="small")


def _draw_epochs(ax, probes, metric: str, layers: list[str]) -> None:
    import matplotlib.pyplot as plt

    means = _mean_by(probes, metric, ["x_epoch", "layer"])
    cmap = plt.get_cmap("plasma")
    for depth, layer in enumerate(layers):
        line = means[means["layer"] == layer].sort_values("x_epoch")
        if line["mean"].isna().all():  # the first layer sends no δx
            continue
        ax.plot(line["x_epoch"], line["mean"], marker=".", markersize=3,
                color=cmap(depth / max(1, len(layers) - 1) * 0.85), label=layer)
    ax.set_xlabel("epoch")


def _title(probes, dataset: str, arch: str) -> str:
    tasks = ", ".join(dict.fromkeys(map(str, probes["task"])))
    runs = probes.groupby("rule", sort=False)["run_id"].nunique()
    counts = ", ".join(f"{rule} n={n}" for rule, n in runs.items())
    title = (f"task {tasks}: {dataset} / {arch}; angle between each rule's δx and backprop's on a fixed "
             f"probe batch (mean over seeds: {counts})\nδx = the error a layer sends to its input; "
             "the first layer sends none (its input is the image)")
    return title + ("\n" + JPEG_SHORT_NOTE.format(name=dataset) if is_jpeg_sample(dataset) else "")


def plot_alignment(frame, results_dir: Path, out: Path, *, epochs: list[int] | None = None) -> tuple[Path, list[str]]:
    """Draw the alignment figure for the runs in ``frame``; return the PNG path and skip messages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if frame.empty:
        raise FabenchError("no runs match the filters")
    probes, skipped = load_probes(frame, results_dir)
    dataset, arch = _one_group(probes)
    layers = _layer_order(probes)
    chosen = _choose_epochs(sorted(set(_epoch_end_probes(probes)["epoch"].astype(int))), epochs)
    rules = _rule_order(probes["rule"])
    fig, axes = plt.subplots(3, len(rules), figsize=(4.2 * len(rules) + 0.8, 11.5), squeeze=False,
                             sharey="row")
    for col, rule in enumerate(rules):
        part = probes[probes["rule"] == rule]
        top, middle, bottom = axes[0][col], axes[1][col], axes[2][col]
        _draw_depth(top, part, ANGLE_METRIC, chosen, layers)
        _draw_epochs(middle, part, ANGLE_METRIC, layers)
        _draw_depth(bottom, part, NORM_METRIC, chosen, layers)
        top.set_title(rule)
        for ax in (top, middle):
            ax.axhline(90.0, color="grey", linestyle="--", linewidth=0.8)
            ax.set_ylim(-3, 120)
        bottom.set_yscale("log")
        for ax in (top, middle, bottom):
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("δx angle to backprop (°)\nagainst depth")
    axes[1][0].set_ylabel("δx angle to backprop (°)\nagainst epoch, per layer")
    axes[2][0].set_ylabel("‖δy‖ per image (log)\nagainst depth")
    axes[0][-1].legend(fontsize="small")
    axes[1][-1].legend(fontsize="x-small")
    axes[2][-1].legend(fontsize="small")
    fig.suptitle(_title(probes, dataset, arch), fontsize="medium")
    fig.tight_layout()
    _save_atomic(fig, Path(out))
    plt.close(fig)
    return Path(out), skipped


def _run_scores(probes):
    """Per run: the mean over layers of the δx angle at its last probe."""
    angles = probes[probes["metric"] == ANGLE_METRIC]
    last = angles[angles["step"] == angles.groupby("run_id")["step"].transform("max")]
    return last.groupby("run_id")["value"].mean()


def _cell_stats(values: list[float]) -> tuple[str, dict]:
    """A cell's text (mean ± std (n), one decimal) and its numbers for the tidy CSV."""
    finite = [v for v in values if not math.isnan(v)]
    n = len(finite)
    mean = sum(finite) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else math.nan
    text = "" if not n else (f"{mean:.1f} ± {std:.1f} ({n})" if n > 1 else f"{mean:.1f} (1)")
    return text, {"metric": "alignment", "mean": mean, "std": std, "n": n}


def _block(part, by: list[str], by_values: tuple, rows: list[str], cols: list[str]) -> Block:
    """One table of run scores: ``rows`` × ``cols`` cells for one value of ``by``."""
    row_keys = list(dict.fromkeys(part[rows].itertuples(index=False, name=None)))
    col_keys = list(dict.fromkeys(part[cols].itertuples(index=False, name=None)))
    cells = {key: list(sub["_score"]) for key, sub in part.groupby(rows + cols, sort=False)}
    title = ", ".join(f"{k}={v}" for k, v in zip(by, by_values, strict=True)) or "all runs"
    block = Block(title, [" / ".join(rows)] + [" / ".join(c) for c in col_keys], [])
    for r in row_keys:
        line = [" / ".join(r)]
        for c in col_keys:
            values = cells.get(tuple(r) + tuple(c), [])
            text, stats = _cell_stats(values)
            line.append(text)
            if values:
                named = dict(zip([*by, *rows, *cols], [*by_values, *r, *c], strict=True))
                block.records.append({**named, **stats})
        block.body.append(line)
    block.notes.append("mean δx angle to backprop (degrees): mean over the rule's layers at each run's last "
                       "probe, then mean ± std over seeds (n finished runs). 0 = backprop's direction, 90 = orthogonal.")
    block.notes += [JPEG_SHORT_NOTE.format(name=d) for d in dict.fromkeys(part["dataset"]) if is_jpeg_sample(d)]
    return block


def alignment_blocks(frame, results_dir: Path, *, rows: list[str], cols: list[str], by: list[str]) -> tuple[list[Block], list[str]]:
    """Blocks of mean δx angle (mean over layers at the last probe, then over seeds), and skips."""
    if frame.empty:
        raise FabenchError("no runs match the filters")
    for name in (*rows, *cols, *by):
        if name not in frame.columns:
            raise FabenchError(f"unknown column '{name}' for --rows/--cols/--by")
    frame = frame[frame["status"].isin(schema.DONE_STATUSES)]
    if frame.empty:
        raise FabenchError("no finished runs match the filters")
    probes, skipped = load_probes(frame, results_dir)
    scores = _run_scores(probes)
    frame = frame[frame["run_id"].isin(list(scores.index))].copy()
    frame["_score"] = frame["run_id"].map(scores)
    keys = [*by, *rows, *cols]
    frame[keys] = frame[keys].astype(str)
    groups = frame.groupby(by, sort=False) if by else [((), frame)]
    blocks = [_block(part, by, values if isinstance(values, tuple) else (values,), rows, cols)
              for values, part in groups]
    return blocks, skipped
