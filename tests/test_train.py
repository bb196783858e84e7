"""One training run end to end: learning, records, skip/force, kill and resume, Ctrl-C, divergence,
bad inputs, evaluation on another dataset. Real training on the embedded CIFAR sample, on the CPU."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fabench.cli import main
from fabench.data._factory import EMBEDDED_DIR
from fabench.train import run
from fabench.train.config import RunConfig
from fabench.train.curves import CURVE_COLUMNS
from fabench.train.schema import COLUMNS, DONE_STATUSES

REPO = Path(__file__).resolve().parents[1]

#: Learns visibly in a few seconds: 1000 images, 2 epochs of Adam (27-29% test top-1 for seeds 0, 1).
SMOKE = dict(arch="arch1", dataset="cifar10-mini", subset=1000, batch_size=20, epochs=2,
             optimizer="adam", lr=1e-3, weight_decay=0.0, device="cpu")
#: A short deterministic run that draws from every random stream: data order and augmentation
#: (data generator) and fa-brsf's per-step feedback magnitudes (torch's global generator).
#: Its dataset is the ``tiny_npz`` fixture (200 training, 100 test images of the CIFAR sample).
RESUMABLE = dict(rule="fa-brsf", arch="arch1", batch_size=20, epochs=2, optimizer="adam", lr=1e-3,
                 weight_decay=0.0, deterministic=True, device="cpu")


def cli(args: list[str]) -> int:
    """Run the real CLI entry point in this process; return its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def read_rows(results: Path) -> list[dict]:
    with open(results / "runs.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def cli_args(settings: dict, results: Path) -> list[str]:
    args = ["run", "--results-dir", str(results), "--no-progress"]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        else:
            args += [flag, str(value)]
    return args


def run_cli_subprocess(settings: dict, results: Path, fault: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FABENCH_FAULT": fault}
    return subprocess.run([sys.executable, "-m", "fabench", *cli_args(settings, results)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def model_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_result(a, b) -> None:
    """Bitwise-equal final weights and feedback buffers, and identical recorded metrics."""
    state_a, state_b = model_state(a.run_dir), model_state(b.run_dir)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for column in ("final_top1", "final_top5", "final_test_loss", "final_train_loss", "best_top1", "epochs_done"):
        assert a.row[column] == b.row[column], column


def write_npz(path: Path, train_every: int | None, test_every: int, test_count: int | None = None) -> Path:
    """A slice of the embedded CIFAR sample as an .npz (no training split if ``train_every`` is None)."""
    with np.load(EMBEDDED_DIR / "cifar10-mini.npz") as archive:
        arrays = {"x_test": archive["x_test"][::test_every][:test_count],
                  "y_test": archive["y_test"][::test_every][:test_count]}
        if train_every:
            arrays.update(x_train=archive["x_train"][::train_every], y_train=archive["y_train"][::train_every])
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> str:
    return str(write_npz(tmp_path_factory.mktemp("data") / "tiny.npz", train_every=25, test_every=10))


@pytest.fixture(scope="module")
def resumable(tiny_npz) -> dict:
    return {**RESUMABLE, "dataset": tiny_npz}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results = tmp_path_factory.mktemp("smoke")
    return run(RunConfig(**SMOKE, results_dir=str(results)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, resumable):
    results = tmp_path_factory.mktemp("reference")
    return run(RunConfig(**resumable, results_dir=str(results)))


# --- learning and records ------------------------------------------------------------------------

def test_smoke_run_learns(smoke):
    assert smoke.status == "finished" and not smoke.skipped
    assert float(smoke.row["final_top1"]) > 20.0  # chance is 10%
    assert float(smoke.row["final_top5"]) >= float(smoke.row["final_top1"])
    assert int(smoke.row["epochs_done"]) == 2


def test_records_follow_the_schema(smoke):
    results = smoke.run_dir.parents[1]
    rows = read_rows(results)
    assert len(rows) == 1 and rows[0]["run_id"] == smoke.run_dir.name == RunConfig(**SMOKE).run_id
    assert rows[0]["status"] == "finished" and rows[0]["arch_source"] == "fabench"
    manifest = json.loads((smoke.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["config"]["subset"] == 1000
    assert manifest["rule"]["rule"] == "bp" and manifest["versions"]["torch"]
    assert manifest["data"]["image_size"] == 24 and manifest["timings"]["finished_at"]
    with open(smoke.run_dir / "curves.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CURVE_COLUMNS
        curves = list(reader)
    test_top1 = [float(r["value"]) for r in curves if r["split"] == "test" and r["metric"] == "top1"]
    assert len(test_top1) == 2 and test_top1[-1] == float(rows[0]["final_top1"])
    checkpoint = torch.load(smoke.run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["progress"]["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng"} <= checkpoint.keys()


def test_identical_run_is_skipped_and_force_reruns(tmp_path, tiny_npz, monkeypatch):
    config = RunConfig(arch="arch1", dataset=tiny_npz, subset=64, batch_size=32, epochs=1, device="cpu",
                       results_dir=str(tmp_path))
    first = run(config)
    again = run(config)
    assert again.skipped and again.row == first.row
    rerun_clock = "2999-01-01T00:00:00+00:00"  # a clock only a run that really starts again reads
    monkeypatch.setattr("fabench.train.run_record.now", lambda: rerun_clock)
    forced = run(config, force=True)
    assert not forced.skipped and forced.status == "finished"
    assert forced.row["started_at"] == rerun_clock != first.row["started_at"]
    assert read_rows(tmp_path)[0]["started_at"] == rerun_clock
    rows = read_rows(tmp_path)
    assert [r["run_id"] for r in rows] == [config.run_id]  # replaced, never duplicated


# --- interruption and resumption -----------------------------------------------------------------

def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, resumable, uninterrupted):
    killed = run_cli_subprocess(resumable, tmp_path, "sigkill@epoch=1")
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "adhoc" / uninterrupted.run_dir.name
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    assert torch.load(run_dir / "last.pt", weights_only=True)["progress"]["epoch"] == 1
    resumed = run(RunConfig(**resumable, results_dir=str(tmp_path)))
    assert resumed.status == uninterrupted.status and resumed.status in DONE_STATUSES  # trained to the end
    assert json.loads((run_dir / "manifest.json").read_text())["resumed_at"][0]["epoch"] == 1
    assert_same_result(resumed, uninterrupted)
    assert len(read_rows(tmp_path)) == 1


def test_ctrl_c_saves_a_mid_epoch_checkpoint_and_resumes_exactly(tmp_path, resumable, uninterrupted):
    stopped = run_cli_subprocess(resumable, tmp_path, "sigint@step=4")
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr and "rerun the same command to resume" in stopped.stdout
    run_dir = tmp_path / "adhoc" / uninterrupted.run_dir.name
    progress = torch.load(run_dir / "last.pt", weights_only=True)["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) == (0, 4)
    assert read_rows(tmp_path)[0]["status"] == "interrupted"
    resumed = run(RunConfig(**resumable, results_dir=str(tmp_path)))
    assert_same_result(resumed, uninterrupted)
    assert [r["status"] for r in read_rows(tmp_path)] == [uninterrupted.status]


def test_divergence_is_recorded_as_a_result(tmp_path, tiny_npz):
    config = RunConfig(arch="arch1", dataset=tiny_npz, batch_size=10, epochs=2, optimizer="sgd", lr=1e4, device="cpu",
                       results_dir=str(tmp_path))
    result = run(config)
    assert result.status == "diverged"
    row = read_rows(tmp_path)[0]
    assert row["status"] == "diverged" and "non-finite" in row["error"] and row["final_top1"] == ""


# --- other architectures, evaluation -------------------------------------------------------------

def test_fa_usf_alexnet_runs_from_the_cli(tmp_path, tiny_npz, capsys):
    # the same command on --dataset cifar10-mini works too; its 1000 test images make it slow here
    assert cli(["run", "--rule", "fa-usf", "--arch", "alexnet", "--dataset", tiny_npz, "--epochs", "1", "--subset",
                "32", "--batch-size", "16", "--device", "cpu", "--results-dir", str(tmp_path), "--no-progress"]) == 0
    row = read_rows(tmp_path)[0]
    assert row["status"] in DONE_STATUSES and (row["rule"], row["arch"]) == ("fa-usf", "alexnet")  # 2 steps: at chance
    assert "epoch 1/1" in capsys.readouterr().out


def test_eval_on_an_eval_only_npz_matches_the_run_and_is_recorded(smoke, tmp_path, capsys):
    same_images = write_npz(tmp_path / "mini-test.npz", train_every=None, test_every=1)
    assert cli(["eval", str(smoke.run_dir), "--dataset", str(same_images), "--device", "cpu"]) == 0
    assert "mini-test.npz top1" in capsys.readouterr().out
    manifest = json.loads((smoke.run_dir / "manifest.json").read_text())
    entry = manifest["evaluations"][-1]
    # the run's own test images through the run's preprocessing give the run's own accuracy
    assert entry["top1"] == float(smoke.row["final_top1"]) and entry["n"] == 1000
    first = write_npz(tmp_path / "first100.npz", train_every=None, test_every=1, test_count=100)
    assert cli(["eval", str(smoke.run_dir), "--dataset", str(first), "--device", "cpu"]) == 0
    with open(smoke.run_dir / "curves.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "eval:first100.npz"]
    assert {r["metric"] for r in rows} == {"top1", "top5", "loss"} and all(r["epoch"] == "2" for r in rows)



# --- folder datasets (ImageNet layout) through DataLoader workers ---------------------------------

def make_image_folder(root: Path, classes=("cat", "dog"), train=8, val=4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, (30 + k, 28, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{k}.png")
    return root


def test_folder_dataset_run_resumes_mid_epoch_exactly(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "imagenet")
    settings = dict(arch="arch1", dataset="imagenet", data_dir=str(folder), image_size=24, batch_size=4,
                    epochs=2, optimizer="adam", lr=1e-3, workers=0, deterministic=True, device="cpu")
    reference = run(RunConfig(**settings, results_dir=str(tmp_path / "a")))
    # random pixels, nothing to learn: the run may end "unstable"; it must train to the end
    assert reference.status in DONE_STATUSES and reference.row["epochs_done"] == 2
    monkeypatch.setenv("FABENCH_FAULT", "sigint@step=6")  # epoch 2, step 2 of 4
    stopped = run(RunConfig(**settings, results_dir=str(tmp_path / "b")))
    assert stopped.status == "interrupted"
    monkeypatch.delenv("FABENCH_FAULT")
    assert_same_result(run(RunConfig(**settings, results_dir=str(tmp_path / "b"))), reference)
