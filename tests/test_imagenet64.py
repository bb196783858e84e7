"""Downsampled ImageNet read from small files written here in the official npz format."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from fabench.data import load_dataset
from fabench.data._downsampled import TRAIN_FILES, read_downsampled
from fabench.errors import FabenchError


def write_official(folder, side=8, per_file=6, val=8, classes=(1, 2, 3), seed=0, suffix=".npz", nested=False):
    """The ten training files and val_data as image-net.org ships them: rows of 3*s*s uint8 in
    channel-major order, labels 1-based, a 'mean' image beside them in the training files."""
    rng = np.random.default_rng(seed)
    root = folder / "Imagenet_train_part1_npz" if nested else folder
    root.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_FILES:
        data = rng.integers(0, 256, (per_file, 3 * side * side), dtype=np.uint8)
        labels = [classes[i % len(classes)] for i in range(per_file)]
        np.savez(root / f"{name}{suffix}", data=data, labels=labels, mean=data.mean(0))
    data = rng.integers(0, 256, (val, 3 * side * side), dtype=np.uint8)
    np.savez(root / f"val_data{suffix}", data=data, labels=[classes[i % len(classes)] for i in range(val)])
    return root


def test_rows_are_channel_major_and_labels_zero_based(tmp_path):
    root = write_official(tmp_path / "imagenet16", side=16)
    with np.load(root / "val_data.npz") as archive:
        row, label = archive["data"][1], int(archive["labels"][1])
    splits = read_downsampled(tmp_path, 16)
    assert splits.x_train.shape == (60, 3, 16, 16) and splits.x_train.dtype == torch.uint8
    assert splits.x_test.shape == (8, 3, 16, 16) and splits.num_classes == 1000
    image = splits.x_test[1]
    assert image[0, 0, :16].tolist() == row[:16].tolist()  # red, first row
    assert image[1, 0, 0] == row[256] and image[2, 15, 15] == row[-1]  # green starts at s*s, blue ends
    assert int(splits.y_test[1]) == label - 1
    assert sorted(splits.y_train.unique().tolist()) == [0, 1, 2]


def test_files_without_suffix_one_folder_down(tmp_path):
    write_official(tmp_path, side=16, suffix="", nested=True)
    ds = load_dataset("imagenet16", data_dir=tmp_path)
    assert ds.n_train == 60 and ds.n_test == 8 and ds.num_classes == 1000 and ds.augment == "cifar"


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("remove-batch", "lacks train_data_batch_3"),
        ("wrong-side", "data is uint8 (6, 192)"),
        ("zero-label", "labels run 0..2"),
        ("no-labels", "not data and labels"),
        ("not-npz", "cannot read"),
        ("float-data", "data is float64"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path, damage, match):
    root = write_official(tmp_path / "imagenet16", side=16)
    third = root / "train_data_batch_3.npz"
    rng = np.random.default_rng(1)
    if damage == "remove-batch":
        third.unlink()
    elif damage == "wrong-side":  # 8 px rows among 16 px files
        np.savez(third, data=rng.integers(0, 256, (6, 192), dtype=np.uint8), labels=[1] * 6)
    elif damage == "zero-label":
        np.savez(third, data=rng.integers(0, 256, (6, 768), dtype=np.uint8), labels=[0, 1, 2, 0, 1, 2])
    elif damage == "no-labels":
        np.savez(third, data=rng.integers(0, 256, (6, 768), dtype=np.uint8))
    elif damage == "not-npz":
        third.write_bytes(b"\x80\x04 a pickle, not a zip")
    elif damage == "float-data":
        np.savez(third, data=np.zeros((6, 768)), labels=[1] * 6)
    with pytest.raises(FabenchError, match=re.escape(match)) as caught:
        load_dataset("imagenet16", data_dir=tmp_path)
    assert "\n" not in str(caught.value)


def test_missing_everything_names_the_folder(tmp_path):
    with pytest.raises(FabenchError, match=r"imagenet64 not found in .*imagenet64.*train_data_batch_1\.\.10"):
        load_dataset("imagenet64", data_dir=tmp_path)


def test_cli_trains_on_official_files(tmp_path):
    """`fabench run --dataset imagenet16 --data-dir DIR` runs to the end on files in the official format."""
    write_official(tmp_path / "data" / "imagenet16", side=16, per_file=8, val=8, classes=(1, 2, 3, 4))
    done = subprocess.run(
        [sys.executable, "-m", "fabench", "run", "--dataset", "imagenet16", "--data-dir", str(tmp_path / "data"),
         "--arch", "lenet", "--rule", "fa", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
         "--results-dir", str(tmp_path / "results"), "--no-progress"],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    manifests = list((tmp_path / "results").rglob("manifest.json"))
    assert len(manifests) == 1
    dataset = json.loads(manifests[0].read_text())["data"]
    assert dataset["name"] == "imagenet16" and dataset["n_train"] == 80 and dataset["num_classes"] == 1000


def test_cli_missing_files_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fabench", "run", "--dataset", "imagenet32", "--data-dir", str(tmp_path),
         "--arch", "lenet", "--epochs", "1", "--device", "cpu", "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(lines) == 1 and "imagenet32 not found" in lines[0]
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.pt"))


def test_grid_dry_run_lists_cells_with_gpu_hours(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fabench", "grid", "paper-imagenet64", "--dry-run",
                           "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:] if line.startswith("todo\t")]
    assert len(rows) == 18 and "A100_h" in header
    hours = {row["cell"].split("/")[1]: float(row["A100_h"]) for row in rows}
    assert all(value > 0 for value in hours.values())
    assert hours["dense-fa"] > 2 * hours["bp"]  # its dense feedback products outweigh the convolutions
    assert hours["fa"] == hours["bp"]  # a W-shaped B costs what W^T does


@pytest.mark.parametrize("rule", ["bp", "dfa", "dense-fa"])
def test_estimate_from_fake_tensors_counts_what_a_real_build_does(rule):
    """The dry run's estimate builds the model from fake tensors; its work equals a real build's."""
    from fabench.bench.gpu_hours import REFERENCE_GPU, step_seconds
    from fabench.bench.work_model import roofline_seconds, step_work
    from fabench.train.config import RunConfig
    from fabench.train.session import build_model

    config = RunConfig(rule=rule, arch="lenet", dataset="mnist-mini", batch_size=8, epochs=1).resolved()
    shape = type("Shape", (), {"num_classes": 10, "in_chans": 1, "image_size": 28})()
    model, handle, _ = build_model(config, shape, torch.device("cpu"))
    real = roofline_seconds(step_work(model, handle, torch.zeros(8, 1, 28, 28)), REFERENCE_GPU.rates)
    assert step_seconds(config) == pytest.approx(real, rel=1e-9)
