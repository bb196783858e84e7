"""Run records and the runs.csv index on cluster file systems: many writers, no working lock.

Each run folder holds its own record; runs.csv is merged from them and heals when it is lost,
stale, or overwritten by a concurrent writer that had not seen every record. ``flock`` failing
with ENOLCK is how NFS without a lock daemon (and Lustre without the ``flock`` mount option)
answers; the tests make every ``flock`` call answer that way.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fabench.data._factory import EMBEDDED_DIR
from fabench.train.config import RunConfig
from fabench.train.records import RECORD
from fabench.train.run_index import RUNS_CSV, refresh_index
from fabench.train.runs_csv import read_runs, upsert_run_row
from fabench.train.schema import COLUMNS, DONE_STATUSES, make_row

REPO = Path(__file__).resolve().parents[1]
WRITERS, RUNS_EACH = 12, 8
#: Makes every flock call fail as on a file system without locks (loaded by ``sitecustomize``).
NO_FLOCK = """import errno, fcntl
def _no_lock(*args, **kwargs):
    raise OSError(errno.ENOLCK, "No locks available")
fcntl.flock = _no_lock
"""


def _no_lock(*args, **kwargs):
    raise OSError(errno.ENOLCK, "No locks available")


def row(run_id: str, status: str = "finished", top1: float = 50.0) -> dict:
    return make_row({**RunConfig(task="cluster").to_dict(), "run_id": run_id},
                    {"status": status, "final_top1": top1}, {})


def _writer(results: str, worker: int) -> None:
    for i in range(RUNS_EACH):
        upsert_run_row(Path(results), row(f"w{worker:02d}r{i}"))
        upsert_run_row(Path(results), row(f"w{worker:02d}r{i}", top1=60.0 + i))  # a rerun replaces its row


def _reader(results: str, stop, torn) -> None:
    """Read runs.csv over and over while the writers run; count versions that do not parse whole."""
    path = Path(results) / RUNS_CSV
    while not stop.is_set():
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        records = list(csv.reader(text.splitlines()))
        if tuple(records[0]) != COLUMNS or any(len(r) != len(COLUMNS) for r in records[1:]):
            torn.value += 1


def _index_ids(results: Path) -> list[str]:
    with open(results / RUNS_CSV, newline="") as handle:
        return [r["run_id"] for r in csv.DictReader(handle)]


def test_many_writers_without_a_lock_lose_duplicate_and_tear_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _no_lock)  # inherited by the forked writers
    context = multiprocessing.get_context("fork")
    stop, torn = context.Event(), context.Value("i", 0)
    reader = context.Process(target=_reader, args=(str(tmp_path), stop, torn))
    reader.start()
    writers = [context.Process(target=_writer, args=(str(tmp_path), w)) for w in range(WRITERS)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
    stop.set()
    reader.join(30)
    assert all(p.exitcode == 0 for p in writers)
    assert torn.value == 0
    expected = sorted(f"w{w:02d}r{i}" for w in range(WRITERS) for i in range(RUNS_EACH))
    records = sorted(tmp_path.glob(f"cluster/*/{RECORD}"))
    assert [p.parent.name for p in records] == expected  # every run has its record
    table = read_runs(tmp_path)  # merges what the index lost to a concurrent writer
    assert table.problems == []
    assert sorted(r["run_id"] for r in table.rows) == expected
    assert {r["final_top1"] for r in table.rows} == {f"{60.0 + i}" for i in range(RUNS_EACH)}
    assert sorted(_index_ids(tmp_path)) == expected  # and runs.csv itself now holds each once


def test_an_index_overwritten_by_a_stale_writer_heals_on_the_next_read(tmp_path):
    upsert_run_row(tmp_path, row("aaaa"))
    stale = (tmp_path / RUNS_CSV).read_bytes()
    upsert_run_row(tmp_path, row("bbbb"))
    # a writer that read the index before "bbbb" was merged moves its copy into place
    (tmp_path / "copy.csv").write_bytes(stale)
    os.replace(tmp_path / "copy.csv", tmp_path / RUNS_CSV)
    assert _index_ids(tmp_path) == ["aaaa"]
    assert sorted(r["run_id"] for r in read_runs(tmp_path).rows) == ["aaaa", "bbbb"]
    assert sorted(_index_ids(tmp_path)) == ["aaaa", "bbbb"]


def test_a_lost_index_is_rebuilt_by_readers_and_by_fabench_index(tmp_path):
    for name in ("aaaa", "bbbb", "cccc"):
        upsert_run_row(tmp_path, row(name))
    (tmp_path / RUNS_CSV).unlink()
    assert sorted(r["run_id"] for r in read_runs(tmp_path).rows) == ["aaaa", "bbbb", "cccc"]
    (tmp_path / RUNS_CSV).unlink()
    (tmp_path / ".runs.csv.state.json").unlink()
    done = subprocess.run([sys.executable, "-m", "fabench", "index", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 run records merged" in done.stdout
    assert sorted(_index_ids(tmp_path)) == ["aaaa", "bbbb", "cccc"]


def test_a_record_rewritten_behind_the_index_wins(tmp_path):
    upsert_run_row(tmp_path, row("aaaa", status="failed"))
    shutil.copy(tmp_path / RUNS_CSV, tmp_path / "old.csv")
    upsert_run_row(tmp_path, row("aaaa", status="finished", top1=71.5))
    os.replace(tmp_path / "old.csv", tmp_path / RUNS_CSV)  # the index of before the rerun
    (rerun,) = read_runs(tmp_path).rows
    assert (rerun["status"], rerun["final_top1"]) == ("finished", "71.5")


def test_an_unreadable_record_is_reported_and_the_rest_indexed(tmp_path):
    upsert_run_row(tmp_path, row("aaaa"))
    broken = tmp_path / "cluster" / "bbbb" / RECORD
    broken.parent.mkdir()
    broken.write_text("not,a,record\n")
    table = read_runs(tmp_path)
    assert [r["run_id"] for r in table.rows] == ["aaaa"]
    assert len(table.problems) == 1 and "bbbb/record.csv: not a run record" in table.problems[0]


def test_the_index_of_a_read_only_results_folder_is_read_from_its_records(tmp_path):
    upsert_run_row(tmp_path, row("aaaa"))
    upsert_run_row(tmp_path, row("bbbb"))
    (tmp_path / "empty.csv").write_text(",".join(COLUMNS) + "\n")
    os.replace(tmp_path / "empty.csv", tmp_path / RUNS_CSV)  # an index written without their rows
    for name in (RUNS_CSV, ".runs.csv.lock", ""):  # no file there can be replaced, none created
        _refuse_writes(tmp_path / name)
    try:
        assert sorted(r["run_id"] for r in read_runs(tmp_path).rows) == ["aaaa", "bbbb"]
        assert _index_ids(tmp_path) == []  # left as it was
    finally:
        for name in ("", ".runs.csv.lock", RUNS_CSV):
            _allow_writes(tmp_path / name)


def _refuse_writes(path: Path) -> None:
    """``chattr +i`` as root (whom modes do not stop), a read-only mode otherwise."""
    if os.geteuid() != 0:
        path.chmod(0o555 if path.is_dir() else 0o444)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
        pytest.skip("root without chattr +i: nothing here can refuse a write")


def _allow_writes(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    else:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_fabench_index_gives_an_earlier_release_s_run_folders_their_record(tmp_path):
    upsert_run_row(tmp_path, row("aaaaaaaaaaaa", top1=42.0))
    record = tmp_path / "cluster" / "aaaaaaaaaaaa" / RECORD
    record.unlink()  # as an earlier release left it: the row only in runs.csv, a manifest in the folder
    manifest = {"run_id": "aaaaaaaaaaaa", "status": "finished", "config": RunConfig(task="cluster").to_dict(),
                "timings": {"started_at": "", "finished_at": ""}}
    (record.parent / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-m", "fabench", "index", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 of them recorded from an earlier release" in done.stdout
    with open(record, newline="") as handle:
        assert next(csv.DictReader(handle))["final_top1"] == "42.0"  # the row that release wrote


def test_fabench_index_without_records_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fabench", "index", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"fabench: error: no run records under {tmp_path} "
                                                "(results/<task>/<run_id>/record.csv); nothing to index"]


# --- real runs, no working lock ----------------------------------------------------------------


@pytest.fixture
def no_flock_env(tmp_path) -> dict:
    """An environment whose Python processes get ENOLCK from every flock call."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_FLOCK)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)])}


def test_concurrent_fabench_runs_without_a_lock_record_every_run(tmp_path, no_flock_env):
    with np.load(EMBEDDED_DIR / "cifar10-mini.npz") as archive:
        np.savez(tmp_path / "tiny.npz", x_train=archive["x_train"][::50], y_train=archive["y_train"][::50],
                 x_test=archive["x_test"][::20], y_test=archive["y_test"][::20])
    results = tmp_path / "results"
    runs = [subprocess.Popen([sys.executable, "-m", "fabench", "run", "--results-dir", str(results), "--no-progress",
                              "--dataset", str(tmp_path / "tiny.npz"), "--epochs", "1", "--batch-size", "20",
                              "--seed", str(seed), "--device", "cpu", "--workers", "0"],
                             cwd=tmp_path, env=no_flock_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed in (0, 1, 2)]
    outputs = [p.communicate(timeout=300) for p in runs]
    assert all(p.returncode == 0 for p in runs), [err for _, err in outputs]
    records = sorted(results.glob(f"adhoc/*/{RECORD}"))
    assert len(records) == 3
    table = read_runs(results)
    assert sorted(r["seed"] for r in table.rows) == ["0", "1", "2"]
    assert all(r["status"] in DONE_STATUSES for r in table.rows)
    refresh_index(results)
    assert sorted(_index_ids(results)) == sorted(p.parent.name for p in records)


def test_fabench_index_over_an_earlier_release_s_results_keeps_every_row(tmp_path):
    results = Path(shutil.copytree(REPO / "tests" / "fixtures" / "old-release" / "results", tmp_path / "results"))
    before = sorted(read_runs(results, refresh_records=False).rows, key=lambda r: r["run_id"])
    done = subprocess.run([sys.executable, "-m", "fabench", "index", str(results)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folders = sorted(p for p in (results / "old-release").iterdir() if p.is_dir())
    assert len(folders) == len(before) and all((p / RECORD).is_file() for p in folders)
    assert sorted(read_runs(results, refresh_records=False).rows, key=lambda r: r["run_id"]) == before
