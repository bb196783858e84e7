"""Datasets: embedded samples, .npz files, subsets, torchvision/ImageFolder paths, device batches."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import fabench.data as fd
from fabench.data import DeviceLoader, InMemoryDataset, check_dataset, list_datasets, load_dataset
from fabench.data._augment import AUGMENTATIONS, crop_at, draw_epoch
from fabench.data._dataset import balanced_counts
from fabench.data.make_embedded import EMBEDDED_DIR, EMBEDDED_SHA256
from fabench.errors import FabenchError


@pytest.fixture(scope="module")
def cifar_mini():
    return load_dataset("cifar10-mini")


@pytest.fixture(scope="module")
def mnist_mini():
    return load_dataset("mnist-mini")


def tiny_dataset(
    n=37, side=8, chans=3, augment="none", image_size=0, labels=None
) -> InMemoryDataset:
    """Random images; by default label i for image i, so batches reveal which images they hold."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, chans, side, side), generator=gen, dtype=torch.uint8)
    y = torch.arange(n) if labels is None else labels
    mean, std = fd.channel_stats(x)
    return InMemoryDataset(
        "tiny",
        x,
        y,
        x[:5].clone(),
        y[:5].clone(),
        int(y.max()) + 1,
        chans,
        mean,
        std,
        augment=augment,
        image_size=image_size,
    )


def write_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    return str(path)


# ---------------------------------------------------------------- names and embedded data


def test_names_and_unknown_dataset():
    names = list_datasets()
    assert {
        "mnist",
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "imagenet",
        "cifar10-mini",
        "mnist-mini",
    } <= set(names)
    assert check_dataset("cifar10-mini") == "cifar10-mini"
    with pytest.raises(FabenchError) as caught:
        check_dataset("cifar-10")
    assert str(caught.value).startswith(
        "unknown dataset 'cifar-10'; valid choices (closest first): cifar10,"
    )
    with pytest.raises(FabenchError, match="does not exist"):
        check_dataset("nowhere/missing.npz")


def test_embedded_files_are_the_recorded_ones():
    total = 0
    for name, digest in EMBEDDED_SHA256.items():
        path = EMBEDDED_DIR / f"{name}.npz"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        total += path.stat().st_size
    assert total <= 20e6


def test_cifar10_mini(cifar_mini):
    ds = cifar_mini
    assert ds.x_train.shape == (5000, 3, 32, 32) and ds.x_test.shape == (1000, 3, 32, 32)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.num_classes == 10 and ds.in_chans == 3 and ds.image_size == 32
    assert torch.bincount(ds.y_train).tolist() == [500] * 10
    assert torch.bincount(ds.y_test).tolist() == [100] * 10
    assert ds.jpeg_sample and ds.augment == "cifar" and ds.classes[0] == "airplane"
    # close to the usual CIFAR-10 statistics (0.491, 0.482, 0.447) / (0.247, 0.243, 0.262)
    assert np.allclose(ds.mean, (0.491, 0.482, 0.447), atol=0.01)
    assert np.allclose(ds.std, (0.247, 0.243, 0.262), atol=0.01)


def test_mnist_mini(mnist_mini):
    ds = mnist_mini
    assert ds.x_train.shape == (10000, 1, 28, 28) and ds.x_test.shape == (2000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [1000] * 10
    assert not ds.jpeg_sample and ds.augment == "mnist"
    assert abs(ds.mean[0] - 0.1307) < 0.005 and abs(ds.std[0] - 0.3081) < 0.005


def test_24px_cifar_gets_crop24():
    assert load_dataset("cifar10-mini", image_size=24).augment == "crop24"
    assert load_dataset("cifar10-mini", image_size=24, augment="cifar").augment == "cifar"
    with pytest.raises(FabenchError, match="unknown augmentation"):
        load_dataset("mnist-mini", augment="jitter")


def test_channel_stats_are_exact():
    x = torch.randint(0, 256, (50, 3, 7, 7), dtype=torch.uint8)
    mean, std = fd.channel_stats(x)
    values = x.double().div(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(mean, values.mean(1).numpy(), atol=1e-6)
    assert np.allclose(std, values.std(1, unbiased=False).numpy(), atol=1e-6)


# ---------------------------------------------------------------- subsets


def test_subset_is_balanced_and_deterministic():
    a = load_dataset("mnist-mini", subset=1000, seed=3)
    b = load_dataset("mnist-mini", subset=1000, seed=3)
    c = load_dataset("mnist-mini", subset=1000, seed=4)
    assert torch.bincount(a.y_train).tolist() == [100] * 10
    assert torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.n_test == 2000  # the test split is never subsetted
    full = load_dataset("mnist-mini")
    assert a.mean == full.mean  # a subset normalises like the full split
    odd = load_dataset("mnist-mini", subset=15)
    assert sorted(torch.bincount(odd.y_train, minlength=10).tolist()) == [1] * 5 + [2] * 5


def test_subset_limits():
    with pytest.raises(FabenchError, match="larger than the training split"):
        load_dataset("mnist-mini", subset=10001)
    with pytest.raises(FabenchError, match="at least 1"):
        load_dataset("mnist-mini", subset=0)


def test_balanced_counts_share_out_small_classes():
    assert balanced_counts([10, 10, 10], 7) == [2, 2, 3]
    assert balanced_counts([1, 10, 10], 9) == [1, 4, 4]
    assert sum(balanced_counts([3, 50, 7, 20], 60)) == 60


# ---------------------------------------------------------------- .npz files


def test_npz_nhwc_and_nhw(tmp_path):
    rgb = write_npz(
        tmp_path / "rgb.npz",
        x_train=np.random.randint(0, 256, (20, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(20) % 4,
        x_test=np.random.randint(0, 256, (8, 16, 16, 3), dtype=np.uint8),
        y_test=np.arange(8) % 4,
        classes=np.array(["a", "b", "c", "d", "e"]),
    )
    ds = load_dataset(rgb)
    assert ds.x_train.shape == (20, 3, 16, 16) and ds.in_chans == 3
    assert ds.num_classes == 5 and ds.classes == ("a", "b", "c", "d", "e")
    assert ds.augment == "cifar" and not ds.jpeg_sample and ds.name == rgb
    grey = write_npz(
        tmp_path / "grey.npz",
        x_train=np.zeros((6, 10, 10), dtype=np.uint8),
        y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=np.zeros((3, 10, 10), dtype=np.uint8),
        y_test=np.array([2, 1, 0], dtype=np.int32),
    )
    ds = load_dataset(grey)
    assert ds.x_train.shape == (6, 1, 10, 10) and ds.num_classes == 3 and ds.augment == "none"
    assert ds.y_test.dtype == torch.int64


def test_eval_only_npz(tmp_path):
    path = write_npz(
        tmp_path / "eval.npz",
        x_test=np.full((9, 8, 8, 3), 7, dtype=np.uint8),
        y_test=np.arange(9) % 3,
    )
    ds = load_dataset(path)
    assert ds.eval_only and ds.n_train == 0 and ds.n_test == 9
    loader = DeviceLoader(ds)
    assert sum(len(y) for _, y in loader.test_batches(4)) == 9
    with pytest.raises(FabenchError, match="evaluation-only"):
        loader.train_batches(4, torch.Generator())
    with pytest.raises(FabenchError, match="no training split"):
        load_dataset(path, subset=3)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a zip file at all", "cannot read"),
        (None, "cannot read"),  # a truncated archive
    ],
)
def test_corrupt_npz_is_one_line_error(tmp_path, cifar_mini, content, match):
    path = tmp_path / "bad.npz"
    if content is None:
        good = write_npz(
            tmp_path / "good.npz", x_test=np.zeros((100, 8, 8), np.uint8), y_test=np.zeros(100, int)
        )
        content = Path(good).read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(FabenchError, match=match) as caught:
        load_dataset(str(path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"x_train": np.zeros((2, 4, 4, 3), np.uint8), "y_train": np.zeros(2, int)},
            "missing x_test",
        ),
        (
            {"x_test": np.zeros((2, 4, 4, 3), np.float32), "y_test": np.zeros(2, int)},
            "must be uint8",
        ),
        ({"x_test": np.zeros((2, 3, 8, 8), np.uint8), "y_test": np.zeros(2, int)}, "has shape"),
        ({"x_test": np.zeros((2, 4, 4), np.uint8), "y_test": np.zeros(3, int)}, "integer labels"),
        ({"x_test": np.zeros((2, 4, 4), np.uint8), "y_test": np.array([0, -1])}, "negative"),
        (
            {"x_test": np.zeros((2, 4, 4), np.uint8), "y_test": np.array([0.0, 1.0])},
            "integer labels",
        ),
        ({"x_test": np.zeros((2, 4, 6), np.uint8), "y_test": np.zeros(2, int)}, "square"),
        (
            {
                "x_test": np.zeros((2, 4, 4), np.uint8),
                "y_test": np.array([0, 2]),
                "classes": np.array(["a", "b"]),
            },
            "only 2 classes",
        ),
        (
            {
                "x_test": np.zeros((2, 4, 4), np.uint8),
                "y_test": np.zeros(2, int),
                "x_train": np.zeros((2, 5, 5), np.uint8),
                "y_train": np.zeros(2, int),
            },
            "train images are",
        ),
        (
            {
                "x_test": np.zeros((2, 4, 4), np.uint8),
                "y_test": np.zeros(2, int),
                "x_train": np.zeros((2, 4, 4), np.uint8),
            },
            "come together",
        ),
    ],
)
def test_invalid_npz_contents(tmp_path, arrays, match):
    path = write_npz(tmp_path / "x.npz", **arrays)
    with pytest.raises(FabenchError, match=match):
        load_dataset(path)


# ---------------------------------------------------------------- torchvision and ImageFolder


def write_idx(path, array: np.ndarray) -> None:
    """Write MNIST's IDX format: magic (ubyte, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_files_are_read(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.num_classes == 10 and ds.augment == "mnist"


def test_missing_torchvision_files_explain_where(tmp_path, monkeypatch):
    monkeypatch.setenv("FABENCH_OFFLINE", "1")
    with pytest.raises(FabenchError) as caught:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "cifar-10-python.tar.gz" in message
    assert "\n" not in message


def make_image_folder(root, classes=("cat", "dog"), per_class=3):
    from PIL import Image

    for split in ("train", "val"):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (40 + k, 36), (80 * index, 20 * k, 100)).save(folder / f"{k}.png")


def test_imagenet_folder_dataset(tmp_path):
    make_image_folder(tmp_path)
    ds = load_dataset("imagenet", data_dir=tmp_path, image_size=32, subset=4)
    assert isinstance(ds, fd.FolderDataset)
    assert (
        ds.num_classes == 2 and ds.classes == ("cat", "dog") and ds.n_train == 4 and ds.n_test == 6
    )
    x, y = next(iter(ds.train_loader(4, workers=0, generator=torch.Generator().manual_seed(0))))
    assert x.shape == (4, 3, 32, 32) and sorted(y.tolist()) == [0, 0, 1, 1]
    x, y = next(iter(ds.val_loader(6, workers=0)))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(FabenchError, match="imagenet not found"):
        load_dataset("imagenet", data_dir=tmp_path / "train")


# ---------------------------------------------------------------- device batches


def test_every_index_once_per_epoch():
    loader = DeviceLoader(tiny_dataset(n=37))
    batches = list(loader.train_batches(8, torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [8, 8, 8, 8, 5] and loader.num_train_batches(8) == 5
    assert torch.equal(torch.cat([y for _, y in batches]).sort().values, torch.arange(37))
    dropped = list(loader.train_batches(8, torch.Generator().manual_seed(0), drop_last=True))
    assert len(dropped) == loader.num_train_batches(8, drop_last=True) == 4
    assert len(torch.cat([y for _, y in dropped]).unique()) == 32
    big = list(loader.train_batches(100, torch.Generator()))
    assert len(big) == 1 and len(big[0][1]) == 37


def test_labels_follow_their_images():
    ds = tiny_dataset(n=20, augment="none")
    x_seen, y_seen = next(DeviceLoader(ds).train_batches(20, torch.Generator().manual_seed(2)))
    expected = DeviceLoader(ds)._finish(ds.x_train[y_seen])
    assert torch.equal(x_seen, expected)


@pytest.mark.parametrize("augment", ["cifar", "crop24", "none"])
def test_augmentation_is_deterministic_and_resumable(augment):
    ds = tiny_dataset(n=40, side=32, augment=augment, image_size=24 if augment == "crop24" else 0)
    loader = DeviceLoader(ds)

    def epoch(generator):
        return [(x.clone(), y.clone()) for x, y in loader.train_batches(16, generator)]

    first = torch.Generator().manual_seed(5)
    epoch(first)
    saved = first.get_state()
    second_epoch = epoch(first)
    resumed = torch.Generator()
    resumed.set_state(saved)
    again = epoch(resumed)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(second_epoch, again, strict=True)
    )
    other = epoch(torch.Generator().manual_seed(6))
    assert not torch.equal(other[0][1], second_epoch[0][1])


def test_cifar_policy_matches_a_per_image_reference():
    ds = tiny_dataset(n=24, side=32, augment="cifar")
    ds.mean, ds.std = (0.0,) * 3, (1.0,) * 3
    x, y = next(DeviceLoader(ds).train_batches(24, torch.Generator().manual_seed(0)))
    draws = draw_epoch(24, AUGMENTATIONS["cifar"], 32, torch.Generator().manual_seed(0))
    assert torch.equal(y, draws.order)
    padded = F.pad(ds.x_train[draws.order], (4, 4, 4, 4))
    for i, (row, col) in enumerate(draws.offsets.tolist()):
        expected = padded[i, :, row : row + 32, col : col + 32]
        if draws.flips[i]:
            expected = expected.flip(-1)
        assert torch.allclose(x[i], expected.float() / 255)
    assert 0 < draws.flips.sum() < 24 and len(set(map(tuple, draws.offsets.tolist()))) > 10


def test_crop_at_matches_slicing():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    corners = torch.tensor([[0, 2], [1, 0]])
    crops = crop_at(images, 3, corners)
    assert torch.equal(crops[0], images[0, :, 0:3, 2:5]) and torch.equal(
        crops[1], images[1, :, 1:4, 0:3]
    )


def test_crop24_test_split_is_the_centre(cifar_mini):
    ds = load_dataset("cifar10-mini", image_size=24)
    loader = DeviceLoader(ds)
    x, _ = next(loader.test_batches(10))
    assert x.shape == (10, 3, 24, 24)
    assert torch.equal(x, loader._finish(ds.x_test[:10, :, 4:28, 4:28]))
    xt, _ = next(loader.train_batches(10, torch.Generator()))
    assert xt.shape == (10, 3, 24, 24)


def test_mnist_padded_to_32_and_cifar_resized_to_64(mnist_mini):
    ds = load_dataset("mnist-mini", image_size=32, subset=20)
    x, _ = next(DeviceLoader(ds).test_batches(5))
    assert x.shape == (5, 1, 32, 32)
    zero = -ds.mean[0] / ds.std[0]
    assert torch.allclose(x[:, :, :2], torch.tensor(zero)) and torch.allclose(
        x[:, :, :, -2:], torch.tensor(zero)
    )
    big = load_dataset("cifar10-mini", image_size=64, subset=10)
    x, _ = next(fd.train_batches(big, 10, torch.Generator()))
    assert x.shape == (10, 3, 64, 64) and x.dtype == torch.float32


def test_batches_are_normalised():
    ds = tiny_dataset(n=200, side=8, labels=torch.zeros(200, dtype=torch.int64))
    x = torch.cat([x for x, _ in DeviceLoader(ds).train_batches(64, torch.Generator())])
    per_channel = x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-3)


# ---------------------------------------------------------------- CLI


def test_ls_commands():
    from fabench.cli import app, ls_data  # noqa: F401

    runner = CliRunner()
    result = runner.invoke(app, ["ls", "datasets"])
    assert (
        result.exit_code == 0 and "cifar10-mini\t" in result.output and "PATH.npz" in result.output
    )
    result = runner.invoke(app, ["ls", "archs", "fabench:*"])
    assert result.exit_code == 0 and "arch1\t" in result.output and "resnet110\t" in result.output
    result = runner.invoke(app, ["ls", "archs", "tv:alex*"])
    assert result.output.startswith("tv:alexnet\t")
