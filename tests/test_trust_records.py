"""Run folders, checkpoints and output files under hostile or failing conditions: symbolic links
and forged ids in a run folder given to ``eval``, a damaged manifest or checkpoint, ``--force``
killed half-way, output names built from data, file modes, read-only or immutable results, a
full disk. Each case ends in one line and exit 2, or in records that still tell the truth."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, cli
from test_report import add_run

from fabench.data._factory import EMBEDDED_DIR
from fabench.errors import FabenchError
from fabench.train import run
from fabench.train.checkpoint import load_checkpoint
from fabench.train.config import RunConfig
from fabench.train.run_record import RunRecords
from fabench.train.schema import DONE_STATUSES

REPO = Path(__file__).resolve().parents[1]
#: A deterministic two-epoch run on the ``tiny`` data below: a few seconds on one CPU thread.
SETTINGS = dict(rule="fa", arch="arch1", batch_size=20, epochs=2, optimizer="adam", lr=1e-3, weight_decay=0.0,
                deterministic=True, device="cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A 200/100-image slice of the embedded CIFAR sample, and an eval-only file of its test images."""
    folder = tmp_path_factory.mktemp("data")
    with np.load(EMBEDDED_DIR / "cifar10-mini.npz") as archive:
        test = {"x_test": archive["x_test"][::10], "y_test": archive["y_test"][::10]}
        np.savez(folder / "tiny.npz", x_train=archive["x_train"][::25], y_train=archive["y_train"][::25], **test)
    np.savez(folder / "eval.npz", **test)
    return {"train": str(folder / "tiny.npz"), "eval": str(folder / "eval.npz")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny) -> Path:
    """The folder of a finished run (copied by each test that tampers with it)."""
    result = run(RunConfig(**SETTINGS, dataset=tiny["train"], results_dir=str(tmp_path_factory.mktemp("done"))))
    assert result.status in DONE_STATUSES
    return result.run_dir


@pytest.fixture
def received(finished, tmp_path) -> Path:
    """A copy of a finished run folder, as received from someone else."""
    return Path(shutil.copytree(finished, tmp_path / "received" / finished.name))


def run_args(results: Path, dataset: str, *extra: str) -> list[str]:
    """``fabench run`` arguments for :data:`SETTINGS` on ``dataset``."""
    args = ["run", "--results-dir", str(results), "--no-progress", "--dataset", dataset, *extra]
    for key, value in SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def cli_run(capsys, results: Path, dataset: str, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, *run_args(results, dataset, *extra))


def rows_of(results: Path) -> list[dict]:
    with open(results / "runs.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# --- eval of a run folder from elsewhere ---------------------------------------------------------

def test_eval_does_not_append_through_a_curves_link(received, tiny, tmp_path, capsys):
    target = tmp_path / "crontab"
    target.write_text("unrelated\n")
    (received / "curves.csv").unlink()
    (received / "curves.csv").symlink_to(target)
    code, out, err = cli(capsys, "eval", str(received), "--dataset", tiny["eval"], "--device", "cpu")
    assert_one_line_error(code, out, err, "symbolic link")
    assert target.read_text() == "unrelated\n"


def test_eval_does_not_create_a_file_through_a_lock_link(received, tiny, tmp_path, capsys):
    target = tmp_path / "elsewhere" / "made-by-fabench"
    target.parent.mkdir()
    (received / ".lock").symlink_to(target)
    code, out, err = cli(capsys, "eval", str(received), "--dataset", tiny["eval"], "--device", "cpu")
    assert_one_line_error(code, out, err, "symbolic link")
    assert not target.exists()


def test_eval_refuses_a_forged_run_id(received, tiny, capsys):
    manifest = json.loads((received / "manifest.json").read_text())
    manifest["run_id"] = manifest["run_id"] + "\n* * * * * root sh -c evil\n"
    (received / "manifest.json").write_text(json.dumps(manifest))
    payload = torch.load(received / "last.pt", weights_only=True)
    torch.save({**payload, "run_id": manifest["run_id"]}, received / "last.pt")  # the checkpoint agrees
    curves_before = (received / "curves.csv").read_bytes()
    code, out, err = cli(capsys, "eval", str(received), "--dataset", tiny["eval"], "--device", "cpu")
    assert_one_line_error(code, out, err, "is not 12 hex digits")
    assert (received / "curves.csv").read_bytes() == curves_before


TAMPERED = {
    "not utf-8": lambda m: b"\xff\xfe\x00garbage",
    "not json": lambda m: b'{"run_id": ',
    "a number": lambda m: b"5",
    "a list": lambda m: b'["config"]',
    "config a string": lambda m: json.dumps({**m, "config": "x"}).encode(),
    "no data entry": lambda m: json.dumps({k: v for k, v in m.items() if k != "data"}).encode(),
    "data without sizes": lambda m: json.dumps({**m, "data": {"name": "x"}}).encode(),
    "evaluations not a list": lambda m: json.dumps({**m, "evaluations": {}}).encode(),
    "config of wrong types": lambda m: json.dumps({**m, "config": {**m["config"], "arch": 7}}).encode(),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_eval_of_a_tampered_manifest_is_one_line(case, received, tiny, capsys):
    manifest = json.loads((received / "manifest.json").read_text())
    (received / "manifest.json").write_bytes(TAMPERED[case](manifest))
    code, out, err = cli(capsys, "eval", str(received), "--dataset", tiny["eval"], "--device", "cpu")
    assert_one_line_error(code, out, err, "")


# --- checkpoints ---------------------------------------------------------------------------------

def test_the_manifest_records_the_checkpoints_checksum(finished):
    digest = hashlib.sha256((finished / "last.pt").read_bytes()).hexdigest()
    assert json.loads((finished / "manifest.json").read_text())["checkpoint_sha256"] == [digest]


@pytest.fixture
def interrupted(tiny, tmp_path, monkeypatch) -> RunConfig:
    """A run stopped by Ctrl-C after 3 steps of its first epoch: a checkpoint to resume."""
    config = RunConfig(**SETTINGS, dataset=tiny["train"], results_dir=str(tmp_path / "results"))
    monkeypatch.setenv("FABENCH_FAULT", "sigint@step=3")
    assert run(config).status == "interrupted"
    monkeypatch.delenv("FABENCH_FAULT")
    return config


def overwrite(path: Path, offset: int, size: int, byte: bytes = b"\xff") -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(byte * size)


def test_a_damaged_checkpoint_is_refused_on_resume_and_force_starts_over(interrupted, tiny, capsys):
    checkpoint = Path(interrupted.results_dir) / "adhoc" / interrupted.run_id / "last.pt"
    overwrite(checkpoint, checkpoint.stat().st_size // 2, 4096, b"\x00")  # inside a weight tensor
    code, out, err = cli_run(capsys, Path(interrupted.results_dir), tiny["train"])
    assert_one_line_error(code, out, err, "--force")
    code, out, err = cli_run(capsys, Path(interrupted.results_dir), tiny["train"], "--force")
    assert code == 0, err
    assert [r["status"] in DONE_STATUSES for r in rows_of(Path(interrupted.results_dir))] == [True]


def test_a_checkpoint_with_an_overwritten_header_is_one_line_on_resume(interrupted, tiny, capsys):
    checkpoint = Path(interrupted.results_dir) / "adhoc" / interrupted.run_id / "last.pt"
    overwrite(checkpoint, 1024, 64)
    code, out, err = cli_run(capsys, Path(interrupted.results_dir), tiny["train"])
    assert_one_line_error(code, out, err, "--force")


def test_a_damaged_checkpoint_never_escapes_as_a_traceback(finished, tmp_path):
    """Without a recorded checksum (a run of an older fabench) the loader itself must say one line."""
    original = (finished / "last.pt").read_bytes()
    damaged = tmp_path / "last.pt"
    for offset in range(0, 4096, 64):
        data = bytearray(original)
        data[offset:offset + 64] = b"\xff" * 64
        damaged.write_bytes(bytes(data))
        with contextlib.suppress(FabenchError):
            load_checkpoint(damaged, finished.name)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in fabench catches it."""


def test_a_kill_while_a_checkpoint_is_moved_into_place_still_resumes_exactly(tiny, tmp_path, monkeypatch):
    """Killed after the manifest accepts the next checkpoint but before it replaces the old one."""
    reference = run(RunConfig(**SETTINGS, dataset=tiny["train"], results_dir=str(tmp_path / "a")))
    accept = RunRecords._accept_checkpoint

    def accept_then_die(self, digest):
        accept(self, digest)
        if self.manifest["progress"].get("epochs_done") == 1:  # the epoch-2 checkpoint is about to land
            raise Killed

    monkeypatch.setattr(RunRecords, "_accept_checkpoint", accept_then_die)
    config = RunConfig(**SETTINGS, dataset=tiny["train"], results_dir=str(tmp_path / "b"))
    with pytest.raises(Killed):
        run(config)
    monkeypatch.setattr(RunRecords, "_accept_checkpoint", accept)
    resumed = run(config)
    assert resumed.status == reference.status and not resumed.skipped
    assert json.loads((resumed.run_dir / "manifest.json").read_text())["resumed_at"][0]["epoch"] == 1
    weights = [torch.load(r.run_dir / "last.pt", weights_only=True)["model"] for r in (reference, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --- --force on a finished run -------------------------------------------------------------------

def test_force_killed_half_way_never_leaves_a_finished_row_without_files(tiny, tmp_path, capsys):
    results = tmp_path / "results"
    code, _, err = cli_run(capsys, results, tiny["train"])
    assert code == 0, err
    (done,) = rows_of(results)
    argv = [sys.executable, "-m", "fabench", *run_args(results, tiny["train"], "--force")]
    killed = subprocess.run(argv, cwd=REPO, env={**os.environ, "FABENCH_FAULT": "sigkill@epoch=1"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (row,) = rows_of(results)
    manifest = json.loads((results / "adhoc" / row["run_id"] / "manifest.json").read_text())
    assert manifest["status"] == "running" and row["status"] == "interrupted"
    code, _, err = cli_run(capsys, results, tiny["train"])
    assert code == 0, err
    (row,) = rows_of(results)
    assert row["status"] == done["status"] and row["epochs_done"] == "2"


# --- output names and modes ----------------------------------------------------------------------

def test_plot_default_name_from_a_task_column_stays_in_the_results_folder(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    add_run(results, "arch1", "bp", "cifar10-mini", "adam", 0, "finished", 50.0, task="../r0/adhoc")
    code, out, err = cli(capsys, "plot", "--results-dir", str(results))
    assert_one_line_error(code, out, err, "--out")
    assert not list(tmp_path.glob("r0/*.png"))


def test_plot_png_follows_the_umask(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    add_run(results, "arch1", "bp", "cifar10-mini", "adam", 0, "finished", 50.0)
    previous = os.umask(0o022)
    try:
        code, _, err = cli(capsys, "plot", "--results-dir", str(results))
    finally:
        os.umask(previous)
    assert code == 0, err
    assert stat.S_IMODE((results / "fixture-curves.png").stat().st_mode) == 0o644


# --- read-only, immutable, full ------------------------------------------------------------------

@pytest.fixture
def immutable():
    """Make a file or folder refuse writes: ``chattr +i`` as root (where allowed), read-only mode otherwise."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
                pytest.skip("root without chattr +i: nothing here can refuse a write")
        else:
            path.chmod(0o555 if path.is_dir() else 0o444)
        made.append(path)

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_an_immutable_task_folder_is_one_line(tiny, tmp_path, immutable, capsys):
    (tmp_path / "results" / "adhoc").mkdir(parents=True)
    immutable(tmp_path / "results" / "adhoc")
    code, out, err = cli_run(capsys, tmp_path / "results", tiny["train"])
    assert_one_line_error(code, out, err, "adhoc")


def test_an_immutable_runs_csv_is_refused_before_training(tiny, tmp_path, immutable, capsys):
    results = tmp_path / "results"
    code, _, err = cli_run(capsys, results, tiny["train"])
    assert code == 0, err
    immutable(results / "runs.csv")
    code, out, err = cli_run(capsys, results, tiny["train"], "--seed", "1")
    assert_one_line_error(code, out, err, "runs.csv")
    assert len(list((results / "adhoc").iterdir())) == 1  # the seed-1 run did not start


def test_a_full_disk_is_one_line_and_leaves_no_empty_run_folder(tiny, tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    results = tmp_path / "results"
    results.mkdir()
    code, out, err = cli_run(capsys, results, tiny["train"])
    assert_one_line_error(code, out, err, "no space left on")
    assert list(results.iterdir()) == []
