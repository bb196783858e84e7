"""Downsampled ImageNet read from small files written here in the official npz format."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fabench.data import DeviceLoader, _dataset, _placement, load_dataset
from fabench.data._downsampled import TRAIN_FILES, files_fingerprint, read_downsampled
from fabench.data._fingerprint import tree_fingerprint
from fabench.data._placement import is_mapped
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


# --- streaming: a split converted once to .npy and served from its memory map -------------------

def _load(tmp_path, mode, monkeypatch, **kwargs):
    monkeypatch.setenv("FABENCH_DATA_STREAM", mode)
    return load_dataset("imagenet16", data_dir=tmp_path, **kwargs)


def _epochs(loader, batch_size, epochs=2, drop_last=False):
    generator = torch.Generator().manual_seed(7)
    return [list(loader.train_batches(batch_size, generator, drop_last=drop_last)) for _ in range(epochs)]


def _same(first, second):
    return len(first) == len(second) and all(
        torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(first, second, strict=True))


@pytest.mark.parametrize(("batch_size", "drop_last"), [(16, False), (23, True), (70, False)])
def test_streamed_batches_equal_held_batches(tmp_path, monkeypatch, batch_size, drop_last):
    """The same seed gives the same shuffled, cropped, flipped batches, and the same test batches,
    from the memory map as from memory."""
    write_official(tmp_path / "imagenet16", side=16, per_file=7, val=29, classes=(1, 2, 3, 4, 5))
    held = _load(tmp_path, "never", monkeypatch)
    streamed = _load(tmp_path, "always", monkeypatch)
    assert not is_mapped(held.x_train) and is_mapped(streamed.x_train) and is_mapped(streamed.x_test)
    assert (streamed.mean, streamed.std) == (held.mean, held.std) and streamed.augment == "cifar"
    held_loader, streamed_loader = DeviceLoader(held), DeviceLoader(streamed)
    assert streamed_loader.streamed(streamed_loader.x_train) and not held_loader.streamed(held_loader.x_train)
    held_epochs, streamed_epochs = _epochs(held_loader, batch_size, drop_last=drop_last), \
        _epochs(streamed_loader, batch_size, drop_last=drop_last)
    assert not _same(held_epochs[0], held_epochs[1])  # the epochs differ, so order matters below
    assert all(_same(a, b) for a, b in zip(held_epochs, streamed_epochs, strict=True))
    assert _same(list(held_loader.test_batches(batch_size)), list(streamed_loader.test_batches(batch_size)))


def test_subset_of_a_streamed_split_is_copied_into_memory(tmp_path, monkeypatch):
    write_official(tmp_path / "imagenet16", side=16, per_file=7, classes=(1, 2, 3, 4, 5))
    held = _load(tmp_path, "never", monkeypatch, subset=30, val_split=10)
    streamed = _load(tmp_path, "always", monkeypatch, subset=30, val_split=10)
    assert not is_mapped(streamed.x_train) and torch.equal(held.x_train, streamed.x_train)
    assert torch.equal(held.x_val, streamed.x_val) and torch.equal(held.y_train, streamed.y_train)


def test_channel_stats_do_not_depend_on_the_chunk(monkeypatch):
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    whole = _dataset.channel_stats(images)
    monkeypatch.setattr(_dataset, "_STATS_CHUNK_BYTES", 3 * 8 * 8 * 7)  # 7 images at a time
    assert _dataset.channel_stats(images) == whole


def _cache(tmp_path):
    return tmp_path / "imagenet16" / ".fabench-cache"


def test_cache_is_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    root = write_official(tmp_path / "imagenet16", side=16)
    first = _load(tmp_path, "always", monkeypatch)
    stamp = json.loads((_cache(tmp_path) / "train.json").read_text())
    third = root / "train_data_batch_3.npz"
    np.savez(third, data=np.full((6, 768), 255, dtype=np.uint8), labels=[3] * 6)
    os.utime(third, ns=(1, third.stat().st_mtime_ns + 10**9))  # a new modification time, whatever the clock
    second = _load(tmp_path, "always", monkeypatch)
    assert json.loads((_cache(tmp_path) / "train.json").read_text()) != stamp
    assert is_mapped(second.x_train) and torch.equal(second.x_train, read_downsampled(tmp_path, 16).x_train)
    assert (second.x_train[12:18] == 255).all() and not torch.equal(first.x_train[12:18], second.x_train[12:18])
    assert torch.equal(second.y_train[12:18], torch.full((6,), 2))


def test_interrupted_conversion_is_not_trusted(tmp_path, monkeypatch):
    """A conversion that stopped leaves no stamp: its files, whole-looking or not, are converted again."""
    root = write_official(tmp_path / "imagenet16", side=16)
    fifth = root / "train_data_batch_5.npz"
    good = fifth.read_bytes()
    np.savez(fifth, data=np.zeros((6, 192), dtype=np.uint8), labels=[1] * 6)  # the conversion stops here
    with pytest.raises(FabenchError, match=r"train_data_batch_5\.npz: data is uint8 \(6, 192\)"):
        _load(tmp_path, "always", monkeypatch)
    assert sorted(path.name for path in _cache(tmp_path).iterdir()) == ["train.lock"]
    fifth.write_bytes(good)
    cache = _cache(tmp_path)  # what a killed conversion leaves: the files under their final and temporary names
    header = b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (60, 3, 16, 16), }"
    (cache / "train-images.npy").write_bytes(header.ljust(128, b" ")[:127] + b"\n" + bytes(60 * 768))
    np.save(cache / "train-labels.npy", np.zeros(60, dtype=np.int64))
    (cache / "train-images.npy.tmp").write_bytes(b"half")
    streamed = _load(tmp_path, "always", monkeypatch)
    held = read_downsampled(tmp_path, 16)
    assert torch.equal(streamed.x_train, held.x_train) and torch.equal(streamed.y_train, held.y_train)
    assert not (cache / "train-images.npy.tmp").exists()


def test_damaged_cache_is_one_line_error(tmp_path, monkeypatch):
    write_official(tmp_path / "imagenet16", side=16)
    _load(tmp_path, "always", monkeypatch)
    images = _cache(tmp_path) / "train-images.npy"
    with open(images, "r+b") as handle:
        handle.truncate(images.stat().st_size - 768)
    with pytest.raises(FabenchError, match=r"train-images\.npy is .* \(truncated or replaced\); delete .*train\.json"
                       ) as caught:
        _load(tmp_path, "always", monkeypatch)
    assert "\n" not in str(caught.value)


def test_unwritable_cache_folder_is_one_line_error(tmp_path, monkeypatch):
    write_official(tmp_path / "imagenet16", side=16)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FABENCH_CACHE_DIR", str(tmp_path / "a-file"))
    with pytest.raises(FabenchError, match=r"cannot write the data cache in .*a-file/imagenet16 .*set FABENCH_CACHE_DIR"
                       ) as caught:
        _load(tmp_path, "always", monkeypatch)
    assert "\n" not in str(caught.value)
    monkeypatch.setenv("FABENCH_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert is_mapped(_load(tmp_path, "always", monkeypatch).x_train)
    assert (tmp_path / "elsewhere" / "imagenet16" / "train.json").is_file() and not _cache(tmp_path).exists()


def test_converting_changes_no_run_id(tmp_path, monkeypatch):
    """The cache folder beside the files is left out of their fingerprint (otherwise the same as
    every other folder fingerprint)."""
    root = write_official(tmp_path / "imagenet16", side=16)
    before = files_fingerprint(tmp_path, 16)
    assert before == tree_fingerprint(str(root.resolve()))
    _load(tmp_path, "always", monkeypatch)
    tree_fingerprint.cache_clear()
    assert _cache(tmp_path).is_dir() and files_fingerprint(tmp_path, 16) == before


def test_a_cache_folder_named_inside_the_data_folder_changes_no_run_id(tmp_path, monkeypatch):
    """FABENCH_CACHE_DIR pointing into the data folder is left out of the fingerprint too."""
    root = write_official(tmp_path / "imagenet16", side=16)
    before = files_fingerprint(tmp_path, 16)
    monkeypatch.setenv("FABENCH_CACHE_DIR", str(root / "converted"))
    _load(tmp_path, "always", monkeypatch)
    tree_fingerprint.cache_clear()
    assert (root / "converted" / "imagenet16").is_dir() and files_fingerprint(tmp_path, 16) == before


def test_auto_streams_what_does_not_fit(tmp_path, monkeypatch):
    write_official(tmp_path / "imagenet16", side=16)  # reading needs 51 KB for training, 12 KB for validation
    monkeypatch.setattr(_placement, "host_memory", lambda: (_placement.GIB * 4 + 20_000, 8 * _placement.GIB))
    dataset = _load(tmp_path, "auto", monkeypatch)  # 4 GiB of headroom and 20 KB more are available
    assert is_mapped(dataset.x_train) and not is_mapped(dataset.x_test)
    monkeypatch.setattr(_placement, "host_memory", lambda: (40 * _placement.GIB, 64 * _placement.GIB))
    assert not is_mapped(_load(tmp_path, "auto", monkeypatch).x_train)
    with pytest.raises(FabenchError, match="FABENCH_DATA_STREAM=sometimes is not one of auto, always, never"):
        _load(tmp_path, "sometimes", monkeypatch)


def test_split_too_large_for_the_device_stays_on_the_host(monkeypatch, capsys):
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    monkeypatch.setenv("FABENCH_DATA_STREAM", "auto")
    monkeypatch.setattr(_placement, "fits_device", lambda nbytes, device: (False, 10**9))
    assert _placement.place(images, torch.device("cuda", 0), "x training split") is images
    assert "x training split (0.0 GB) streamed to cuda:0 batch by batch: 1.0 GB free" in capsys.readouterr().err


def _curves(run_dir):
    rows = (line.split(",") for line in (run_dir / "curves.csv").read_text().splitlines()[1:])
    return [(row[3], row[4], row[5], row[6]) for row in rows if row[3] in ("train", "test") and row[4] in ("loss", "top1")]


def test_cli_streams_when_forced(tmp_path):
    """`FABENCH_DATA_STREAM=always fabench run --dataset imagenet64` converts, streams, and trains
    exactly as the run that holds the data in memory."""
    write_official(tmp_path / "data" / "imagenet64", side=64, per_file=8, val=8, classes=(1, 2, 3, 4))
    runs = {}
    for mode in ("never", "always"):
        done = subprocess.run(
            [str(Path(sys.executable).with_name("fabench")), "run", "--dataset", "imagenet64", "--data-dir",
             str(tmp_path / "data"), "--arch", "lenet", "--rule", "fa", "--epochs", "2", "--batch-size", "16",
             "--device", "cpu", "--results-dir", str(tmp_path / mode), "--no-progress"],
            capture_output=True, text=True, timeout=300,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "FABENCH_DATA_STREAM": mode},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs[mode] = done
    assert "memory-mapped" not in runs["never"].stderr
    assert "imagenet64 train split (0.0 GB) memory-mapped from" in runs["always"].stderr
    assert (tmp_path / "data" / "imagenet64" / ".fabench-cache" / "train-images.npy").stat().st_size == 128 + 80 * 12288
    (never,), (always,) = ([path.parent for path in (tmp_path / mode).rglob("manifest.json")] for mode in runs)
    assert never.name == always.name  # the same run id: streaming does not change results
    assert _curves(never) == _curves(always) and len(_curves(never)) == 8
