"""A results folder written by an earlier fabench release is read, tabulated and extended.

``tests/fixtures/old-release`` holds what release 0.1.0 (commit ecea8ca, runs.csv schema 3)
wrote for the task file beside it: runs.csv, and per run a manifest, curves and checkpoint. The
current fabench must read every row, find every cell already finished (same run ids), tabulate
the runs, evaluate their checkpoints, and upgrade the runs.csv in place without losing a row.
Each test works on a copy: the fixture itself is never written.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fabench.train.schema import DONE_STATUSES

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "old-release"
#: The run ids release 0.1.0 gave the task's four cells (the names of its run folders).
OLD_RUN_IDS = ("392fa4f0cc1c", "772e45f107dd", "de228b9d3c2e", "f25dabcaeeba")


@pytest.fixture
def old(tmp_path) -> Path:
    """A copy of the fixture: its task file and results folder."""
    shutil.copytree(FIXTURE, tmp_path / "old-release")
    return tmp_path / "old-release"


def _fabench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FABENCH_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "fabench", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _old_rows() -> dict[str, dict]:
    with (FIXTURE / "results" / "runs.csv").open(newline="") as handle:
        return {row["run_id"]: row for row in csv.DictReader(handle)}


def _digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (runs.csv aside) -> its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "runs.csv"}


def test_the_fixture_is_what_the_old_release_wrote():
    rows = _old_rows()
    assert sorted(rows) == list(OLD_RUN_IDS)
    assert {row["schema_version"] for row in rows.values()} == {"3"}
    for run_id in OLD_RUN_IDS:
        assert {p.name for p in (FIXTURE / "results" / "old-release" / run_id).iterdir()} >= {
            "manifest.json", "curves.csv", "last.pt"}


def test_the_current_task_gives_the_old_run_ids(old):
    from fabench.tasks import load_task

    cells = load_task(old / "old-release.yaml").cells(results_dir=str(old / "results"))
    assert sorted(cell.run_id for cell in cells) == list(OLD_RUN_IDS)


def test_every_old_row_is_read_with_its_values(old):
    from fabench.train.runs_csv import read_runs

    table = read_runs(old / "results")
    assert table.problems == []
    read = {row["run_id"]: row for row in table.rows}
    assert sorted(read) == list(OLD_RUN_IDS)
    for run_id, before in _old_rows().items():
        kept = {column: read[run_id][column] for column in before if column != "schema_version"}
        assert kept == {column: value for column, value in before.items() if column != "schema_version"}
        assert read[run_id]["rule_options"] == "" and read[run_id]["plugins"] == ""  # columns added since


def test_the_old_runs_are_tabulated(old):
    done = _fabench("table", "--results-dir", str(old / "results"), "--format", "csv", cwd=old)
    assert done.returncode == 0, done.stderr
    records = list(csv.DictReader(done.stdout.splitlines()))
    cells = sorted((r["rule"], r["schedule"], r["n"]) for r in records)
    assert cells == [("bp", "cosine", "1"), ("bp", "multistep", "1"), ("fa", "cosine", "1"), ("fa", "multistep", "1")]


def test_grid_over_the_old_task_finds_every_cell_finished(old):
    results = old / "results"
    before = _digests(results)
    done = _fabench("grid", str(old / "old-release.yaml"), "--results-dir", str(results), "--no-progress", cwd=old)
    assert done.returncode == 0, done.stderr
    assert "4 cells selected, 4 already finished" in done.stdout + done.stderr, done.stdout + done.stderr
    assert {k: v for k, v in _digests(results).items() if k in before} == before  # nothing retrained or rewritten
    assert sorted(p.name for p in (results / "old-release").iterdir()) == list(OLD_RUN_IDS)


def test_an_old_checkpoint_is_evaluated(old):
    from fabench.train import evaluate_run

    entry = evaluate_run(old / "results" / "old-release" / OLD_RUN_IDS[0], "cifar10-mini", device="cpu")
    assert entry["epoch"] == 2 and entry["n"] > 0 and 0 <= entry["top1"] <= 100


def test_a_new_run_upgrades_the_old_runs_csv_in_place_without_losing_a_row(old):
    from fabench.train import schema
    from fabench.train.config import RunConfig
    from fabench.train.runs_csv import read_runs, upsert_run_row

    results = old / "results"
    config = RunConfig(rule="bp", arch="mlp", dataset="cifar10-mini", task="old-release", task_version="1", seed=5)
    upsert_run_row(results, schema.make_row({**config.to_dict(), "run_id": config.run_id},
                                            {"status": "finished", "epochs_done": 1, "final_top1": 12.5}, {}))
    with (results / "runs.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == schema.COLUMNS
    assert {row["schema_version"] for row in rows} == {str(schema.SCHEMA_VERSION)}
    assert sorted(row["run_id"] for row in rows) == sorted([*OLD_RUN_IDS, config.run_id])
    table = read_runs(results)
    assert table.problems == [] and len(table.rows) == 5
    assert {row["status"] for row in table.rows} <= set(DONE_STATUSES)
