"""The folder pipeline: uint8 crops in the workers with torchvision's augmentation, float on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fabench.data import load_dataset
from fabench.data._folder_batches import DeviceDecoder, FolderBatches, JpegPlan, collate_plans
from fabench.data._folder_crops import EvalCrop, TrainCrop, open_lazily
from fabench.data._imagenet import IMAGENET_MEAN, IMAGENET_STD


def photo(path, size=(500, 375), seed=0):
    """A smooth, photo-like JPEG (gradients and a blob plus mild noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
    base = np.stack([120 + 100 * np.sin(5 * x + seed), 120 + 90 * np.cos(4 * y), 100 + 80 * np.sin(3 * (x + y))], -1)
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def torchvision_train(size):
    from torchvision import transforms

    return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()])


@pytest.mark.parametrize("seed", range(6))
def test_train_crop_without_draft_is_torchvision_within_a_level(tmp_path, seed):
    """Same draws, same region, same filter: torchvision's pixels within one grey level."""
    path = photo(tmp_path / "a.jpg", seed=seed)
    torch.manual_seed(seed)
    expected = np.asarray(torchvision_train(64)(Image.open(path).convert("RGB"))).astype(int)
    torch.manual_seed(seed)
    got = TrainCrop(64, draft=False)(open_lazily(str(path)))
    assert got.dtype == torch.uint8 and got.shape == (64, 64, 3)
    assert np.abs(got.numpy().astype(int) - expected).max() <= 1


@pytest.mark.parametrize("seed", range(6))
def test_train_crop_with_draft_takes_the_same_region(tmp_path, seed):
    """Decoding at reduced scale resamples the same crop in two steps: close to torchvision's pixels."""
    path = photo(tmp_path / "a.jpg", seed=seed)
    torch.manual_seed(seed)
    exact = TrainCrop(48, draft=False)(open_lazily(str(path))).float()
    torch.manual_seed(seed)
    drafted = TrainCrop(48, draft=True)(open_lazily(str(path))).float()
    assert (drafted - exact).abs().mean() < 4  # grey levels of 255; another region differs by tens


def test_draft_decodes_fewer_pixels(tmp_path):
    """A 48 px crop of a 500x375 JPEG is decoded at 1/2 scale or less."""
    path = photo(tmp_path / "a.jpg")
    image = open_lazily(str(path))
    from fabench.data._folder_crops import _decode_reduced

    decoded, fx, fy = _decode_reduced(image, 375 / 48)
    assert decoded.size[0] <= 250 and fx >= 2 and fy >= 2


def test_eval_crop_without_draft_is_torchvision_exactly(tmp_path):
    from torchvision import transforms

    path = photo(tmp_path / "a.jpg", size=(333, 500))
    expected = transforms.Compose([transforms.Resize(73), transforms.CenterCrop(64)])(Image.open(path).convert("RGB"))
    got = EvalCrop(64, draft=False)(open_lazily(str(path)))
    assert np.array_equal(got.numpy(), np.asarray(expected))


def test_device_normalisation_matches_to_tensor_normalize():
    from torchvision import transforms

    images = torch.randint(0, 256, (3, 20, 20, 3), dtype=torch.uint8)
    expected = torch.stack([transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(transforms.ToTensor()(i.numpy()))
                            for i in images])
    plain = FolderBatches([], "cpu", IMAGENET_MEAN, IMAGENET_STD).normalise(images)
    last = FolderBatches([], "cpu", IMAGENET_MEAN, IMAGENET_STD, channels_last=True).normalise(images)
    assert torch.allclose(plain, expected, atol=1e-5) and plain.is_contiguous()
    assert torch.equal(last, plain) and last.is_contiguous(memory_format=torch.channels_last)


def make_jpeg_folder(root, classes=("cat", "dog"), per_class=4):
    for index, name in enumerate(classes):
        for split in ("train", "val"):
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                photo(root / split / name / f"{k}.jpg", size=(90 + 7 * k, 70), seed=index * 10 + k)
    return root


def test_workers_ship_uint8_and_batches_arrive_normalised(tmp_path):
    ds = load_dataset("imagenet", data_dir=make_jpeg_folder(tmp_path), image_size=32)
    batches = ds.train_loader(4, workers=1, generator=torch.Generator().manual_seed(0), channels_last=True)
    raw, _ = next(iter(batches.loader))
    assert raw.dtype == torch.uint8 and raw.shape == (4, 32, 32, 3)
    x, y = next(iter(batches))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and y.shape == (4,)
    assert x.is_contiguous(memory_format=torch.channels_last)
    x, y = next(iter(ds.val_loader(8, workers=0)))
    assert x.shape == (8, 3, 32, 32) and y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_device_decoding_draws_the_same_crops(tmp_path):
    """decode="gpu" on the CPU: the same crops and flips as the worker pipeline, resampled by torch."""
    path = photo(tmp_path / "a.jpg")
    plans, crops = [], []
    for seed in range(4):
        torch.manual_seed(seed)
        plans.append((JpegPlan(train=True)(open_lazily(str(path))), seed))
        torch.manual_seed(seed)
        crops.append(TrainCrop(40, draft=False)(open_lazily(str(path))))
    batch, labels = collate_plans(plans)
    decoded = DeviceDecoder(40)(batch, torch.device("cpu"))
    assert decoded.dtype == torch.uint8 and decoded.shape == (4, 40, 40, 3) and labels.tolist() == [0, 1, 2, 3]
    for mine, reference in zip(decoded, crops, strict=True):
        assert (mine.float() - reference.float()).abs().mean() < 4


def test_device_decoding_runs_a_loader(tmp_path):
    ds = load_dataset("imagenet", data_dir=make_jpeg_folder(tmp_path), image_size=32, decode="gpu")
    x, y = next(iter(ds.train_loader(4, workers=0, generator=torch.Generator().manual_seed(0))))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    x, y = next(iter(ds.val_loader(8, workers=0)))
    assert x.shape == (8, 3, 32, 32)


def test_region_without_draft_is_torchvision_crop_exactly(tmp_path):
    """Workers that leave resizing to the device cut out exactly the crop torchvision would resize."""
    from torchvision.transforms import RandomResizedCrop

    from fabench.data._folder_crops import TrainRegion

    path = photo(tmp_path / "a.jpg")
    for seed in range(4):
        torch.manual_seed(seed)
        top, left, height, width = RandomResizedCrop.get_params(Image.open(path), [0.08, 1.0], [3 / 4, 4 / 3])
        flip = bool(torch.rand(1) < 0.5)
        torch.manual_seed(seed)
        region, flipped = TrainRegion(64, draft=False)(open_lazily(str(path)))
        expected = np.asarray(Image.open(path).convert("RGB").crop((left, top, left + width, top + height)))
        assert np.array_equal(region.numpy(), expected) and flipped == flip


def test_device_resize_matches_the_worker_crop(tmp_path):
    """Resizing the packed regions on the device gives the worker pipeline's crops, up to rounding."""
    from fabench.data._folder_batches import DeviceResizer, collate_regions
    from fabench.data._folder_crops import TrainRegion

    path = photo(tmp_path / "a.jpg")
    samples, crops = [], []
    for seed in range(6):
        torch.manual_seed(seed)
        samples.append((TrainRegion(56, draft=False)(open_lazily(str(path))), seed))
        torch.manual_seed(seed)
        crops.append(TrainCrop(56, draft=False)(open_lazily(str(path))))
    batch, labels = collate_regions(samples)
    resized = DeviceResizer(56)(batch, torch.device("cpu"))
    assert resized.shape == (6, 56, 56, 3) and labels.tolist() == list(range(6))
    for mine, reference in zip(resized, crops, strict=True):
        assert (mine - reference.float()).abs().mean() < 1.5  # PIL and torch antialiased bilinear


def test_resize_on_device_through_the_loader(tmp_path):
    ds = load_dataset("imagenet", data_dir=make_jpeg_folder(tmp_path), image_size=32)
    batches = ds.batches("train", batch_size=4, workers=1, resize_on_device=True, shuffle=True,
                         generator=torch.Generator().manual_seed(0), channels_last=True)
    (flat, shapes, flips), _ = next(iter(batches.loader))
    assert flat.dtype == torch.uint8 and shapes.shape == (4, 2) and flips.dtype == torch.bool
    x, y = next(iter(batches))
    assert x.shape == (4, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last) and y.shape == (4,)
    assert float(x.min()) > -3 and float(x.max()) < 3  # normalised, not 0-255


def test_a_rank_of_two_gets_its_half_of_each_folder_batch(tmp_path):
    """RunData.shard builds the folder pipeline with its rank's sampler: normalised half batches."""
    from fabench.train.batches import RunData

    ds = load_dataset("imagenet", data_dir=make_jpeg_folder(tmp_path), image_size=32)
    whole = RunData(ds, torch.device("cpu"), generator=torch.Generator().manual_seed(0), batch_size=4, workers=0)
    rank = whole.shard(1, 2)
    batches = list(rank.train_epoch())
    assert len(batches) == 2 and all(x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 for x, _ in batches)
    tested = list(rank.test())
    assert [x.shape[0] for x, _ in tested] == [4] and tested[0][1].tolist() == [1, 1, 1, 1]


def test_decoding_stops_below_the_crop_with_a_full_decodes_rows(tmp_path):
    from fabench.data._folder_crops import _decode_reduced

    path = photo(tmp_path / "a.jpg")
    part, fx, fy = _decode_reduced(open_lazily(str(path)), 1.0, rows=150)
    full = np.asarray(Image.open(path).convert("RGB"))
    assert part.size == (500, 151) and (fx, fy) == (1.0, 1.0)
    assert np.array_equal(np.asarray(part), full[:151])
    reduced, fx, fy = _decode_reduced(open_lazily(str(path)), 2.5, rows=200)  # half scale: 188 rows, 200/fy -> 101
    assert reduced.size == (250, 102) and fx == 2.0 and fy == pytest.approx(375 / 188)


def test_a_truncated_jpeg_is_still_an_error(tmp_path):
    """Stopping early is not a licence to read a broken file: rows past its end still raise."""
    from fabench.data._folder_crops import _decode_reduced

    path = photo(tmp_path / "a.jpg")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OSError, match="truncated"):
        _decode_reduced(open_lazily(str(path)), 1.0, rows=370)


def test_bench_pipeline_command(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fabench", "bench", "pipeline", "--images", "3", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("\t")[0]: line.split("\t") for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"reference", "cpu-run", "gpu-run", "gpu-decode"} and rows["reference"][3] == "1.00"
    assert all(float(row[1]) > 0 for row in rows.values())
    missing = subprocess.run([sys.executable, "-m", "fabench", "bench", "pipeline", "--folder", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=300)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and "is not a folder" in lines[0]


def test_run_settings_choose_the_decoder_and_size_the_workers(tmp_path):
    from fabench.data import default_workers
    from fabench.train.config import RunConfig
    from fabench.train.session import load_data

    folder = make_jpeg_folder(tmp_path)
    config = RunConfig(dataset="imagenet", data_dir=str(folder), image_size=32)
    assert load_data(config).decode == "cpu"
    assert load_data(RunConfig(dataset="imagenet", data_dir=str(folder), image_size=32, jpeg_decoder="gpu")).decode == "gpu"
    assert config.workers is None and default_workers() >= 1
    assert RunConfig(jpeg_decoder="gpu").identity() != RunConfig().identity()
