"""Reports: tables in every format, published comparison, bad rows skipped, and the curve plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from cli_helpers import cli

from fabench.train import schema
from fabench.train.config import RunConfig
from fabench.train.curves import CurveWriter
from fabench.train.runs_csv import upsert_run_row

# (arch, rule, dataset, optimizer, seed, status, final_top1)
RUNS = [
    ("arch1", "bp", "cifar10-mini", "adam", 0, "finished", 70.0),
    ("arch1", "bp", "cifar10-mini", "adam", 1, "finished", 72.0),
    ("arch1", "fa", "cifar10-mini", "adam", 0, "finished", 40.0),
    ("arch1", "fa", "cifar10-mini", "adam", 1, "finished", 44.0),
    ("arch1", "fa", "cifar10-mini", "adam", 2, "diverged", 10.0),
    ("lenet", "bp", "mnist-mini", "sgd", 0, "finished", 98.0),
]




def add_run(results: Path, arch, rule, dataset, optimizer, seed, status, top1, task="fixture") -> RunConfig:
    """Record one run the way fabench.train does: a runs.csv row (locked upsert) and its curves."""
    config = RunConfig(rule=rule, arch=arch, dataset=dataset, optimizer=optimizer, seed=seed, task=task,
                       task_version="1", epochs=3, results_dir=str(results))
    metrics = {"status": status, "epochs_done": 3, "final_top1": top1, "final_top5": min(top1 + 20, 100),
               "best_top1": top1 + 1, "train_time_s": 12.5 + seed}
    upsert_run_row(results, schema.make_row({**config.to_dict(), "run_id": config.run_id}, metrics, {}))
    run_dir = results / task / config.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    with CurveWriter(run_dir / "curves.csv", config.run_id) as curves:
        for epoch in (1, 2, 3):
            curves.log(epoch, epoch * 10, "test", "top1", top1 * epoch / 3)
            curves.log(epoch, epoch * 10, "test", "loss", 2.3 / epoch)
            curves.log(epoch, epoch * 10, "train", "loss", 2.0 / epoch)
    return config


@pytest.fixture
def results(tmp_path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    for spec in RUNS:
        add_run(folder, *spec)
    with (folder / "runs.csv").open("a", encoding="utf-8") as handle:
        handle.write("garbage,row\n")  # line 8: too few fields
        bad_status = [str(schema.SCHEMA_VERSION), "abc", "fixture", "1", "bp", "arch1", "cifar10-mini", "0"] + [""] * (len(schema.COLUMNS) - 8)
        bad_status[schema.COLUMNS.index("status")] = "exploded"
        handle.write(",".join(bad_status) + "\n")  # line 9: unknown status
    return folder


def test_table_default_rich_skips_and_reports_bad_rows(results, capsys):
    code, out, err = cli(capsys, "table", "--results-dir", str(results))
    assert code == 0, err
    assert "runs.csv:8: row has 2 fields" in err
    assert "runs.csv:9: row unknown status 'exploded'" in err
    assert "29.00 ± 12.71 (2)" in out  # bp: errors 30 and 28
    assert "58.00 ± 25.41 (2) [+1 diverged]" in out  # fa: errors 60 and 56, one diverged run
    assert "2.00 (1)" in out  # lenet bp on mnist-mini
    assert "JPEG-re-encoded" in out


def test_table_markdown_has_blocks_per_dataset_and_the_jpeg_note(results, capsys):
    code, out, _ = cli(capsys, "table", "--results-dir", str(results), "--format", "markdown")
    assert code == 0
    assert "### dataset=cifar10-mini" in out and "### dataset=mnist-mini" in out
    assert "| arch | bp | fa |" in out
    assert "| arch1 | 29.00 ± 12.71 (2) | ≈58.00 ± 25.41 (2) [+1 diverged] |" in out
    cifar_block = out.split("### dataset=mnist-mini")[0]
    assert "JPEG-re-encoded sample of CIFAR-10" in cifar_block
    assert "JPEG" not in out.split("### dataset=mnist-mini")[1]


def test_table_csv_is_tidy_and_numeric(results, capsys):
    code, out, _ = cli(capsys, "table", "--results-dir", str(results), "--format", "csv", "--metric", "top1")
    assert code == 0
    rows = {(r["dataset"], r["arch"], r["rule"]): r for r in csv.DictReader(io.StringIO(out))}
    bp = rows["cifar10-mini", "arch1", "bp"]
    assert (float(bp["mean"]), round(float(bp["std"]), 3), int(bp["n"])) == (71.0, 1.414, 2)
    assert rows["cifar10-mini", "arch1", "fa"]["not_finished"] == "diverged=1"
    assert "JPEG" in bp["note"] and rows["mnist-mini", "lenet", "bp"]["note"] == ""


def test_table_latex_escapes_and_captions(results, capsys, tmp_path):
    target = tmp_path / "out" / "table.tex"
    code, _, err = cli(capsys, "table", "--results-dir", str(results), "--format", "latex", "--output", str(target))
    assert code == 0, err
    text = target.read_text()
    assert text.count(r"\begin{tabular}") == 2
    assert r"29.00 $\pm$ 12.71 (2)" in text
    assert r"\caption{dataset=cifar10-mini. top-1 error (\%)" in text
    assert "JPEG-re-encoded" in text


def test_table_rows_cols_by_and_automatic_split(results, capsys):
    add_run(results, "arch1", "bp", "cifar10-mini", "sgd", 0, "finished", 60.0)
    code, out, _ = cli(capsys, "table", "--results-dir", str(results), "--format", "markdown", "--task", "fixture",
                       "--dataset", "cifar10-*", "--metric", "train-time")
    assert code == 0
    assert "### dataset=cifar10-mini, optimizer=adam" in out and "### dataset=cifar10-mini, optimizer=sgd" in out
    assert "split by optimizer" in out
    assert "| arch1 | 13.0 ± 6.4 (2) |" in out  # bp with adam: 12.5 and 13.5 seconds
    code, out, _ = cli(capsys, "table", "--results-dir", str(results), "--format", "markdown",
                       "--rows", "rule", "--cols", "dataset", "--by", "")
    assert code == 0
    sgd_block = out.split("### optimizer=sgd")[1]
    assert "### optimizer=adam" in out and "| rule | cifar10-mini | mnist-mini |" in sgd_block
    assert "| bp | 40.00 (1) | 2.00 (1) |" in sgd_block


def test_compare_published(results, capsys):
    code, out, err = cli(capsys, "table", "--results-dir", str(results), "--compare", "published", "--format", "markdown")
    assert code == 0, err
    assert "| arch1 | bp | adam | final | 29.00 ± 12.71 (2) | 2 | 24.20 | +4.80 | lance-kieu-2026 |" in out
    assert "| arch1 | fa | adam | final | 58.00 ± 25.41 (2) [+1 diverged] | 2 | 59.93 | -1.93 | lance-kieu-2026 |" in out
    # BioTorch's MNIST numbers are its best test epoch (its validation split is the test split)
    assert "| lenet | bp | sgd | best-test | 1.00 (1) | 1 | 0.91 | +0.09 | biotorch-2021 |" in out
    assert "published numbers are for cifar10, measured on cifar10-mini" in out
    assert "arXiv:2605.08564" in out and "arXiv:2108.13446" in out
    code, out, _ = cli(capsys, "table", "--results-dir", str(results), "--compare", "published", "--metric", "top1", "--format", "csv")
    rows = {(r["arch"], r["rule"]): r for r in csv.DictReader(io.StringIO(out))}
    assert float(rows["arch1", "bp"]["published"]) == pytest.approx(75.8)


def test_plot_writes_a_png(results, capsys, tmp_path):
    target = tmp_path / "figs" / "curves.png"
    code, _out, err = cli(capsys, "plot", "--results-dir", str(results), "--task", "fixture", "--out", str(target))
    assert code == 0, err
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(target.parent.glob(".*.png"))  # no temporary file left behind


def test_plot_title_names_task_dataset_and_jpeg_sample(results):
    from fabench.report.plot import _figure_title
    from fabench.train.runs_csv import read_runs

    title = _figure_title(read_runs(results).frame())
    assert title.startswith("task fixture: cifar10-mini, mnist-mini")
    assert "cifar10-mini: JPEG-re-encoded CIFAR-10 sample, not the original dataset" in title


def test_jpeg_sample_list_matches_the_dataset_registry():
    from fabench.data import DATASETS
    from fabench.report.table import JPEG_SAMPLE_DATASETS

    flagged = {name for name in DATASETS if DATASETS.get(name).jpeg_sample}
    assert flagged == set(JPEG_SAMPLE_DATASETS)


def test_intervals_rank_only_separated_rules_and_vs_pairs_seeds(tmp_path, capsys):
    """bp (70, 71, 72) is separated from fa (40, 42, 44); fa-usf (69, 72, 75) is not separated from bp."""
    from fabench.report.stats import interval, t975

    folder = tmp_path / "results"
    folder.mkdir()
    for rule, values in (("bp", (70.0, 71.0, 72.0)), ("fa", (40.0, 42.0, 44.0)), ("fa-usf", (69.0, 72.0, 75.0))):
        for seed, top1 in enumerate(values):
            add_run(folder, "arch1", rule, "cifar10-mini", "adam", seed, "finished", top1)
    mean, half, n = interval([70.0, 71.0, 72.0])
    assert (mean, n) == (71.0, 3) and half == pytest.approx(t975(2) * 1.0 / 3 ** 0.5)
    code, out, err = cli(capsys, "table", "--results-dir", str(folder), "--metric", "top1", "--format", "markdown")
    assert code == 0, err
    assert "| arch1 | ≈71.00 ± 2.48 (3) | 42.00 ± 4.97 (3) | 72.00 ± 7.45 (3) |" in out  # bp ties with the best, fa-usf
    code, out, err = cli(capsys, "table", "--results-dir", str(folder), "--metric", "top1", "--format", "markdown",
                         "--rule", "??")
    assert "| arch1 | **71.00 ± 2.48 (3)** | 42.00 ± 4.97 (3) |" in out  # separated: the best in bold
    code, out, err = cli(capsys, "table", "--results-dir", str(folder), "--metric", "top1", "--format", "markdown",
                         "--vs", "bp")
    assert code == 0, err
    # fa - bp per seed: -30, -29, -28; fa-usf - bp: -1, +1, +3
    assert "| arch1 | reference | -29.00 ± 2.48 (3) | +1.00 ± 4.97 (3) (not separated) |" in out
