"""Result tables from runs.csv: mean and 95 % interval over seeds, in rich, markdown, csv or LaTeX.

Layout: one block per value of the ``by`` columns (default: dataset), ``rows`` down the side
(default: arch) and ``cols`` across (default: rule). A cell reads ``mean ± h (n)``: h is the
half-width of the 95 % confidence interval of the mean over its n seeds (Student's t,
:mod:`fabench.report.stats`). In each row the best cell is in bold where it is separated from
every other (intervals that do not overlap); cells whose interval overlaps the best one's are
marked ``≈``: the table does not rank them. ``vs`` shows each rule's paired difference from a
reference rule over matched seeds instead. Runs that trained to the end enter the
statistics: ``finished`` ones, ``unstable`` ones (their loss rose) and ``no-learning`` ones (at
chance), which mark the cell (``†``, ``‡``) and a footnote so that they are never averaged in
silently; ``*`` marks cells run with tuned settings; a cell also says how many
of its runs diverged or failed. If runs that land in one
cell differ in another setting (say optimizer, in a grid with sgd and adam variants), the
blocks are split by that setting too, so different experiments are never averaged together.

``compare`` mode lists every measured dataset/arch/rule/optimizer beside the published number
(see :mod:`fabench.report.published`) and the difference, measured minus published. Each
published number is compared with the measured value of the same selection rule (final epoch,
best test epoch, or test at the best-validation epoch), whatever ``--metric`` says; the metric
decides only whether errors or accuracies are shown.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from fabench.errors import FabenchError, unknown_choice
from fabench.report.published import (
    SELECTION_COLUMNS,
    base_dataset,
    load_published,
    load_sources,
    match_published,
)
from fabench.train import schema


@dataclass(frozen=True)
class Metric:
    """A reported quantity: its runs.csv column, whether it is shown as 100 - value, its label."""

    column: str
    label: str
    error: bool = False
    digits: int = 2
    lower_is_better: bool = False

    @property
    def better_low(self) -> bool:
        return self.error or self.lower_is_better


METRICS = {
    "top1-err": Metric("final_top1", "top-1 error (%)", error=True),
    "top5-err": Metric("final_top5", "top-5 error (%)", error=True),
    "top1": Metric("final_top1", "final top-1 accuracy (%)"),
    "top5": Metric("final_top5", "final top-5 accuracy (%)"),
    "best-top1": Metric("best_top1", "best top-1 accuracy (%)"),
    "best-top5": Metric("best_top5", "best top-5 accuracy (%)"),
    "best-top1-err": Metric("best_top1", "best-epoch top-1 error (%)", error=True),
    "test-at-best-val": Metric("test_top1_at_best_val", "test top-1 accuracy at the best-validation epoch (%)"),
    "test-at-best-val-err": Metric("test_top1_at_best_val", "test top-1 error at the best-validation epoch (%)", error=True),
    "train-loss": Metric("final_train_loss", "final training loss", digits=3, lower_is_better=True),
    "first-train-loss": Metric("first_train_loss", "first-epoch training loss", digits=3, lower_is_better=True),
    "train-time": Metric("train_time_s", "train time (s)", digits=1, lower_is_better=True),
    "images-per-s": Metric("images_per_s", "training throughput (images/s)", digits=0),
}

#: Datasets that are JPEG-re-encoded samples, not the original pixels.
JPEG_SAMPLE_DATASETS = ("cifar10-mini",)
JPEG_NOTE = (
    "{name} is a JPEG-re-encoded sample of CIFAR-10 (a small class-balanced subset whose pixels went "
    "through quality-75 JPEG), not the original dataset: expect accuracies below those on CIFAR-10."
)
#: Config columns that may legitimately differ inside one cell (they identify repeats).
_REPEAT_COLUMNS = ("schema_version", "run_id", "seed")
FORMATS = ("rich", "markdown", "csv", "latex")


@dataclass
class Block:
    """One rendered table: a title, a header, body rows of text, notes, and tidy records for CSV."""

    title: str
    header: list[str]
    body: list[list[str]]
    notes: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def is_jpeg_sample(dataset: str) -> bool:
    """True for datasets whose pixels went through JPEG (see JPEG_NOTE)."""
    return dataset in JPEG_SAMPLE_DATASETS


def _check_columns(names: Sequence[str], option: str) -> None:
    """Reject grouping columns that are not runs.csv config columns."""
    allowed = [c for c in schema.CONFIG_COLUMNS if c not in ("schema_version", "run_id")]
    for name in names:
        if name not in allowed:
            raise FabenchError(f"{option}: {unknown_choice('column', name, allowed)}")


def filter_runs(frame, *, task: str | None = None, rule: str | None = None, arch: str | None = None, dataset: str | None = None):
    """Rows whose task/rule/arch/dataset match the given fnmatch patterns."""
    for column, pattern in (("task", task), ("rule", rule), ("arch", arch), ("dataset", dataset)):
        if pattern:
            frame = frame[frame[column].astype(str).map(lambda v, p=pattern: fnmatch.fnmatchcase(v, p))]
    return frame


def split_columns(frame, keys: list[str]) -> list[str]:
    """Config columns that vary among runs sharing ``keys``, added one at a time in schema order.

    Adding ``optimizer`` often makes ``lr`` constant within cells, so columns are added only
    while some cell still mixes settings.
    """
    candidates = [c for c in schema.CONFIG_COLUMNS if c not in _REPEAT_COLUMNS and c not in keys]
    added: list[str] = []
    while True:
        group = frame.groupby(keys + added, dropna=False, sort=False)
        varying = [c for c in candidates if c not in added and (group[c].nunique(dropna=False) > 1).any()]
        if not varying:
            return added
        added.append(varying[0])


def _key_text(value) -> str:
    """A grouping value as text: empty cells as '-', whole floats without '.0'."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _as_key_text(frame, columns: list[str]):
    """A copy of ``frame`` whose grouping columns are text, so empty cells group and print cleanly."""
    frame = frame.copy()
    for column in dict.fromkeys(columns):
        frame[column] = frame[column].map(_key_text)
    return frame


def _metric_values(frame, metric: Metric):
    """The metric's column, as error (100 - value) where the metric is an error."""
    values = frame[metric.column]
    return 100.0 - values if metric.error else values


def _format_stat(mean: float, half: float, n: int, digits: int, sign: str = "") -> str:
    """'mean ± h (n)' (h: the 95 % interval's half-width), or 'mean (1)' for a single run."""
    if n == 0:
        return ""
    return f"{mean:{sign}.{digits}f} ± {half:.{digits}f} ({n})" if n > 1 else f"{mean:{sign}.{digits}f} ({n})"


#: The mark of a cell holding unstable runs, and its footnote.
DAGGER = "†"
UNSTABLE_NOTE = (f"{DAGGER}k: k of the cell's runs are unstable (their final training loss is above the first "
                 f"epoch's by more than {100 * (schema.UNSTABLE_RISE_FACTOR - 1):g} %, or above {schema.UNSTABLE_LOSS_FACTOR:g}·ln(classes), or an epoch's went above "
                 f"{schema.UNSTABLE_PEAK_FACTOR:g}·ln(classes)); they are included in the mean; see their curves.csv.")
#: The mark of a cell holding runs that did not learn, and its footnote.
DOUBLE_DAGGER = "‡"
NO_LEARNING_NOTE = (f"{DOUBLE_DAGGER}k: k of the cell's runs did not learn (final test top-1 below "
                    f"{schema.NO_LEARNING_ACCURACY_FACTOR:g}x chance and a training loss that never fell below "
                    f"{schema.NO_LEARNING_LOSS_FRACTION:g}·ln(classes)); they are included in the mean; see their "
                    "curves.csv and alignment angles.")
TUNED_MARK = "§"
#: Prefix of a cell text shown in bold (each renderer turns it into its own bold).
BOLD = "\x02"
TUNED_NOTE = (f"{TUNED_MARK}: run with the settings `fabench tune` chose for the cell (the same trials x epochs for "
              "every rule, on validation images); the manifest names the study and trial.")
TIE_MARK = "≈"
TIE_NOTE = (f"bold: the row's best, separated from every other cell (95 % intervals do not overlap); {TIE_MARK}: "
            "the interval overlaps the best cell's: not separated from it, so not ranked.")


def _cell_stats(frame, metric: Metric) -> dict:
    """Mean, std (sample), 95 % half-width and n over runs that trained to the end; unstable and
    no-learning ones counted, other statuses counted; the values by seed (for paired differences)."""
    from fabench.report.stats import interval

    done = frame[frame["status"].isin(schema.DONE_STATUSES)]
    values = _metric_values(done, metric)
    by_seed = {str(seed): float(v) for seed, v in zip(done["seed"], values, strict=True) if v == v}
    values = values.dropna()
    others = frame.loc[~frame["status"].isin(schema.DONE_STATUSES), "status"].value_counts().to_dict()
    mean, half, n = interval(values.tolist())
    tuned = frame.get("tuned", [])
    return {
        "mean": mean,
        "std": float(values.std(ddof=1)) if n > 1 else float("nan"),
        "ci95": half,
        "n": n,
        "unstable": int((done["status"] == "unstable").sum()),
        "no_learning": int((done["status"] == "no-learning").sum()),
        "tuned": any(isinstance(t, str) and t not in ("", "-") for t in tuned),
        "others": {str(k): int(v) for k, v in others.items()},
        "by_seed": by_seed,
    }


def _cell_text(stats: dict, metric: Metric, sign: str = "") -> str:
    """A table cell: the statistics, marks for unstable, no-learning and tuned runs, and counts of
    runs that did not finish."""
    half = 0.0 if stats["ci95"] != stats["ci95"] else stats["ci95"]
    text = _format_stat(stats["mean"], half, stats["n"], metric.digits, sign)
    if stats.get("tuned"):
        text += TUNED_MARK
    if stats["unstable"]:
        text += f" {DAGGER}{stats['unstable']}"
    if stats.get("no_learning"):
        text += f" {DOUBLE_DAGGER}{stats['no_learning']}"
    extra = ", ".join(f"{v} {k}" for k, v in stats["others"].items())
    if not extra:
        return text
    return f"{text} [+{extra}]" if text else f"[{extra}]"


def _title(keys: list[str], values: tuple) -> str:
    """A block title such as 'dataset=cifar10, optimizer=sgd'."""
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) if keys else "all runs"


def _dataset_notes(datasets) -> list[str]:
    """The JPEG-sample note for each such dataset among ``datasets``."""
    return [JPEG_NOTE.format(name=d) for d in dict.fromkeys(datasets) if is_jpeg_sample(str(d))]


def _as_tuple(value) -> tuple:
    """A pandas group key as a tuple (single keys come back bare)."""
    return value if isinstance(value, tuple) else (value,)



def _natural_order(keys) -> list[tuple]:
    """Distinct key tuples sorted naturally (bp, fa, fa-usf, ...; resnet20 before resnet110)."""
    from fabench._registry import natural_key

    return sorted(dict.fromkeys(keys), key=lambda key: [natural_key(str(part)) for part in key])

def build_blocks(frame, *, rows: list[str], cols: list[str], by: list[str], metric_name: str,
                 vs: str | None = None) -> list[Block]:
    """Group runs into blocks (``by``) of rows × cols cells with statistics over seeds; with ``vs``
    (a rule), each cell shows its paired difference from that rule's cell in the same row."""
    metric = _metric(metric_name)
    for names, option in ((rows, "--rows"), (cols, "--cols"), (by, "--by")):
        _check_columns(names, option)
    if vs is not None and cols != ["rule"]:
        raise FabenchError("--vs compares rules: it needs the rules across the top (--cols rule, the default)")
    if frame.empty:
        raise FabenchError("no runs match the filters")
    if vs is not None and vs not in set(frame["rule"]):
        raise unknown_choice("rule to compare with (--vs)", vs, sorted(set(frame["rule"])))
    extra = split_columns(frame, by + rows + cols)
    by = by + extra
    frame = _as_key_text(frame, by + rows + cols)
    blocks = []
    # one order for every block, independent of which worker finished first: natural sort
    row_order = _natural_order(frame[rows].itertuples(index=False, name=None))
    col_order = _natural_order(frame[cols].itertuples(index=False, name=None))
    groups = frame.groupby(by, dropna=False, sort=False) if by else [((), frame)]
    for by_values, part in groups:
        by_values = _as_tuple(by_values)
        row_keys = [k for k in row_order if k in set(part[rows].itertuples(index=False, name=None))]
        col_keys = [k for k in col_order if k in set(part[cols].itertuples(index=False, name=None))]
        cells = {_as_tuple(key): sub for key, sub in part.groupby(rows + cols, dropna=False, sort=False)}
        header = [" / ".join(rows)] + [" / ".join(map(str, c)) for c in col_keys]
        body, records = [], []
        for r in row_keys:
            stats = {c: _cell_stats(cells[tuple(r) + tuple(c)], metric) for c in col_keys if tuple(r) + tuple(c) in cells}
            if vs is not None:
                texts = _paired_texts(stats, (vs,), metric)
            elif cols == ["rule"]:  # rules are ranked against each other, nothing else is
                texts = _ranked_texts(stats, metric)
            else:
                texts = {c: _cell_text(s_, metric) for c, s_ in stats.items()}
            body.append([" / ".join(map(str, r))] + [texts.get(c, "") for c in col_keys])
            records += [_record(by, by_values, rows, r, cols, c, metric_name, stats[c], cells[tuple(r) + tuple(c)])
                        for c in col_keys if c in stats]
        blocks.append(Block(_title(by, by_values), header, body, _block_notes(metric, records, extra, part, vs), records))
    return blocks


def _ranked_texts(stats: dict, metric: Metric) -> dict:
    """Cell texts of one row: the best in bold where separated from all others, ties with it marked."""
    from fabench.report.stats import separated

    texts = {c: _cell_text(s, metric) for c, s in stats.items()}
    scored = {c: s for c, s in stats.items() if s["n"]}
    if len(scored) < 2:
        return texts
    pick = min if metric.better_low else max
    best = pick(scored, key=lambda c: scored[c]["mean"])
    interval_of = {c: (s["mean"], s["ci95"], s["n"]) for c, s in scored.items()}
    for c in scored:
        if c != best and not separated(interval_of[c], interval_of[best]):
            texts[c] = f"{TIE_MARK}{texts[c]}"
            scored[c]["tie"] = True
    if not any(s.get("tie") for s in scored.values()):
        texts[best] = BOLD + texts[best]
        scored[best]["best"] = True
    return texts


def _paired_texts(stats: dict, reference: tuple, metric: Metric) -> dict:
    """Cell texts of one row under ``--vs``: each rule minus the reference over matched seeds."""
    from fabench.report.stats import paired

    ref = stats.get(reference)
    texts = {}
    for c, s in stats.items():
        if c == reference:
            texts[c] = "reference"
            continue
        if ref is None:
            texts[c] = "no reference runs"
            continue
        mean, half, n = paired(s["by_seed"], ref["by_seed"])
        s.update(diff_mean=mean, diff_ci95=half, diff_n=n)
        text = _format_stat(mean, 0.0 if half != half else half, n, metric.digits, "+")
        separated = half == half and abs(mean) > half
        texts[c] = (text + ("" if separated else " (not separated)")) if n else "no matched seeds"
    return texts


def _block_notes(metric: Metric, records: list[dict], extra: list[str], part, vs: str | None) -> list[str]:
    """The footnotes of one block: what a cell shows, and each mark that occurs in it."""
    if vs is None:
        notes = [f"{metric.label}; mean ± half-width of the 95 % confidence interval over seeds (Student's t; "
                 "n runs that trained to the end)."]
        notes += [TIE_NOTE] if any(r["best"] or r["tied_with_best"] for r in records) else []
    else:
        notes = [f"{metric.label}: each rule minus {vs}, paired over the seeds both ran; mean ± half-width of the "
                 "95 % interval of the difference (n pairs); 'not separated': the interval includes 0."]
    for key, note in (("unstable", UNSTABLE_NOTE), ("no_learning", NO_LEARNING_NOTE), ("tuned", TUNED_NOTE)):
        if any(r.get(key) for r in records):
            notes.append(note)
    if extra:
        notes.append(f"split by {', '.join(extra)}: runs in one cell differed in {'it' if len(extra) == 1 else 'them'}.")
    return notes + _dataset_notes(part["dataset"])


def _record(by, by_values, rows, r, cols, c, metric_name, stats, sub) -> dict:
    """One tidy CSV record of a table cell."""
    record = dict(zip(by, by_values, strict=True))
    record.update(zip(rows, r, strict=True))
    record.update(zip(cols, c, strict=True))
    datasets = sub["dataset"].unique()
    record.update({
        "metric": metric_name, "mean": stats["mean"], "std": stats["std"], "ci95": stats["ci95"], "n": stats["n"],
        "unstable": stats["unstable"], "no_learning": stats["no_learning"], "tuned": stats["tuned"],
        "best": stats.get("best", False), "tied_with_best": stats.get("tie", False),
        **{key: stats[key] for key in ("diff_mean", "diff_ci95", "diff_n") if key in stats},
        "not_finished": ";".join(f"{k}={v}" for k, v in stats["others"].items()),
        "note": " ".join(_dataset_notes(datasets)),
    })
    return record


def _metric(name: str) -> Metric:
    """The Metric named ``name``, or an error listing the valid names."""
    if name not in METRICS:
        raise unknown_choice("metric", name, [*METRICS, "alignment"])
    return METRICS[name]


def check_metric(name: str, *, compare: bool = False) -> None:
    """Refuse a metric ``fabench table`` cannot show (or, with ``compare``, cannot set beside
    published numbers) before any results are read."""
    column = "" if name == "alignment" else _metric(name).column
    if compare and column not in SELECTION_COLUMNS.values():
        raise FabenchError(f"published numbers are top-1 error; with --compare published use --metric top1-err "
                           f"or top1 (or best-top1-err, test-at-best-val-err, ...), not '{name}'")


def build_comparison(frame, *, metric_name: str) -> list[Block]:
    """One block per dataset: measured vs published, with difference, for every matched group.

    Each group is measured with the selection rule of the number it is compared with (see the
    module docstring); ``metric_name`` chooses error or accuracy.
    """
    check_metric(metric_name, compare=True)
    metric = _metric(metric_name)
    if frame.empty:
        raise FabenchError("no runs match the filters")
    published = load_published()
    citations = load_sources()
    keys = ["dataset", "arch", "rule", "optimizer"]
    keys += split_columns(frame, keys)
    frame = _as_key_text(frame, keys)
    shown = keys[1:]
    blocks = []
    for dataset, part in frame.groupby("dataset", sort=False):
        block = Block(f"dataset={dataset}", [*shown, "selection", "measured", "n", "published", "Δ", "source"], [])
        used: set[str] = set()
        groups = {_as_tuple(key): sub for key, sub in part.groupby(shown, dropna=False, sort=False)}
        for values in _natural_order(groups):
            sub = groups[values]
            named = {"dataset": dataset, **dict(zip(shown, values, strict=True))}
            match, why = match_published(published, dataset, named["arch"], named["rule"], named["optimizer"])
            selection = match.selection if match else next(k for k, v in SELECTION_COLUMNS.items() if v == metric.column)
            measure = dataclasses.replace(metric, column=SELECTION_COLUMNS[selection])  # the selection's twin
            stats = _cell_stats(sub, measure)
            pub_value = None if match is None else (match.value if metric.error else 100.0 - match.value)
            delta = stats["mean"] - pub_value if (pub_value is not None and stats["n"]) else None
            source = "" if match is None else match.source + (f" ({why})" if why else "")
            if match is not None:
                used.add(match.source)
            if match is not None and not stats["n"] and len(sub):
                source += f"; measured runs lack {measure.column} (a {selection} comparison needs it)"
            block.body.append([*map(str, values), selection, _cell_text(stats, measure), str(stats["n"]),
                               "" if pub_value is None else f"{pub_value:.2f}",
                               "" if delta is None else f"{delta:+.2f}", source])
            block.records.append({**named, "metric": metric_name, "selection": selection, "mean": stats["mean"],
                                  "std": stats["std"], "ci95": stats["ci95"], "n": stats["n"], "unstable": stats["unstable"],
                                  "no_learning": stats["no_learning"], "tuned": stats["tuned"],
                                  "published": pub_value, "delta": delta, "source": source,
                                  "note": " ".join(_dataset_notes([dataset]))})
        kind = "error" if metric.error else "accuracy"
        block.notes.append(f"test top-1 {kind} (%) at the epoch the published source selects (selection: final "
                           "epoch, best test epoch, or test at the best-validation epoch); measured: mean ± half-width of "
                           "the 95 % interval over seeds (Student's t; n runs); Δ = measured - published.")
        for key, note in (("unstable", UNSTABLE_NOTE), ("no_learning", NO_LEARNING_NOTE), ("tuned", TUNED_NOTE)):
            if any(r[key] for r in block.records):
                block.notes.append(note)
        if base_dataset(dataset) != dataset:
            block.notes.append(f"published numbers are for {base_dataset(dataset)}, measured on {dataset}.")
        block.notes += _dataset_notes([dataset])
        block.notes.append(f"measured settings: {_settings_text(part)}.")
        for key in sorted(used):
            settings = "; ".join(dict.fromkeys(p.notes for p in published if p.source == key and p.dataset == base_dataset(dataset)))
            block.notes.append(f"{key}: {citations.get(key, key)}; published settings: {settings}")
        blocks.append(block)
    return blocks


def _settings_text(frame) -> str:
    """The training settings of measured runs (each value, or the set of values if they differ)."""
    parts = []
    for column, name in (("epochs", "epochs"), ("batch_size", "batch"), ("subset", "subset"), ("val_split", "val split"),
                         ("image_size", "image size")):
        values = list(dict.fromkeys(_key_text(v) for v in frame[column]))
        if values not in (["-"], ["0"]):
            parts.append(f"{name} {'/'.join(values)}")
    return ", ".join(parts)


# --- rendering -------------------------------------------------------------------------------

def render_rich(blocks: list[Block], console) -> None:
    """Print each block as a rich table followed by its notes (full width, not squeezed into a caption)."""
    from rich.table import Table

    for block in blocks:
        table = Table(title=block.title, title_justify="left")
        for i, name in enumerate(block.header):
            table.add_column(name, style="bold" if i == 0 else None, justify="left" if i == 0 else "right")
        for line in block.body:
            table.add_row(*(_bold(cell, "[bold]{}[/bold]") for cell in line))
        console.print(table)
        for note in block.notes:
            console.print(f"  {note}", highlight=False)
        console.print()


def _bold(cell: str, form: str) -> str:
    """A cell's text, put in ``form`` (e.g. ``**{}**``) if it is marked bold."""
    return form.format(cell[len(BOLD):]) if cell.startswith(BOLD) else cell


def _md_escape(text: str) -> str:
    """Escape the pipe, the only character that breaks a markdown table cell; bold as **...**."""
    return _bold(text.replace("|", "\\|"), "**{}**")


def render_markdown(blocks: list[Block]) -> str:
    """GitHub-flavoured markdown: a heading, a pipe table and the notes per block."""
    out = []
    for block in blocks:
        out.append(f"### {block.title}\n")
        out.append("| " + " | ".join(map(_md_escape, block.header)) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(block.header) - 1)) + "|")
        out += ["| " + " | ".join(map(_md_escape, line)) + " |" for line in block.body]
        out.append("")
        out += [f"- {note}" for note in block.notes]
        out.append("")
    return "\n".join(out)


def render_csv(blocks: list[Block]) -> str:
    """Tidy CSV: one record per table cell with numeric mean, std and n (and notes per record)."""
    import csv

    records = [r for b in blocks for r in b.records]
    columns = list(dict.fromkeys(k for r in records for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if v is None or v != v else v) for k, v in record.items()})
    return buffer.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    """Escape LaTeX specials and typeset ±, Δ and ‖ in math mode."""
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("‖", r"$\|$")


def render_latex(blocks: list[Block]) -> str:
    """One ``table`` environment per block (booktabs rules), the notes as its caption."""
    out = []
    for block in blocks:
        spec = "l" + "r" * (len(block.header) - 1)
        out += [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
        out.append(" & ".join(map(_latex_escape, block.header)) + r" \\")
        out.append(r"\midrule")
        out += [" & ".join(_bold(_latex_escape(cell), r"\textbf{{{}}}") for cell in line) + r" \\" for line in block.body]
        out += [r"\bottomrule", r"\end{tabular}"]
        caption = _latex_escape(block.title + ". " + " ".join(block.notes))
        out += [rf"\caption{{{caption}}}", r"\end{table}", ""]
    return "\n".join(out)
