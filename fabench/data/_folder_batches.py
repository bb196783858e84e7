"""Batches of a folder dataset on the run's device: uint8 from the workers, float only there.

:class:`FolderBatches` wraps a DataLoader whose workers yield uint8 ``[B, H, W, 3]`` batches (in
pinned memory when a GPU is present), copies each to the device without blocking, and there
turns it into normalised float32 ``[B, 3, H, W]``: one multiply-add, in channels_last layout
for free (a ``[B, H, W, C]`` tensor seen as ``[B, C, H, W]`` *is* channels_last), or contiguous
NCHW when that is asked for.

On a GPU the training crops are resized there too: the workers decode and cut out each
crop's region at its own size (:class:`~fabench.data._folder_crops.TrainRegion`; resizing was
half a worker's time), :func:`collate_regions` packs a batch's regions into one buffer (one
copy to the device), and :class:`DeviceResizer` resizes each (bilinear, antialiased, the
filter PIL uses) and flips it there.

``decode="gpu"``: the workers only read each JPEG's bytes and draw its crop (the same draws
as :mod:`fabench.data._folder_crops`), and the device decodes the batch with
``torchvision.io.decode_jpeg`` and crops, resizes (bilinear, antialiased) and flips each image
there; the crops are the same regions, resampled by torch rather than PIL. JPEG files only.
"""

from __future__ import annotations

import torch
from PIL import Image

from fabench.data._folder_crops import CROP_RATIO, CROP_SCALE
from fabench.setting_values import JPEG_DECODERS

DECODERS = JPEG_DECODERS


class FolderBatches:
    """Iterable of ``(x, y)`` on ``device``: normalised float images and int64 labels."""

    def __init__(self, loader, device, mean, std, *, channels_last: bool = False, decoder=None) -> None:
        self.loader = loader
        self.device = torch.device(device or "cpu")
        self.channels_last = channels_last
        self.decoder = decoder
        shape = (1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32, device=self.device).view(shape)
        self._scale = 1.0 / (255.0 * std)  # (x / 255 - mean) / std as one multiply-add
        self._shift = -torch.tensor(mean, dtype=torch.float32, device=self.device).view(shape) / std

    def __len__(self) -> int:
        return len(self.loader)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` pixels 0-255 (uint8 or float, any device) -> normalised float
        ``[B, C, H, W]`` on the device."""
        images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        images = images.float().mul_(self._scale).add_(self._shift)
        return images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def __iter__(self):
        for images, labels in self.loader:
            if self.decoder is not None:
                images = self.decoder(images, self.device)
            yield self.normalise(images), labels.to(self.device, non_blocking=True)


# --- resizing on the device -------------------------------------------------------------

def collate_regions(samples):
    """``[((region [h, w, 3], flip), label), ...]`` -> ``((flat uint8, shapes [B, 2], flips [B]), labels [B])``."""
    regions = [s[0][0] for s in samples]
    flat = torch.cat([region.reshape(-1) for region in regions])
    shapes = torch.tensor([region.shape[:2] for region in regions], dtype=torch.int64)
    flips = torch.tensor([s[0][1] for s in samples], dtype=torch.bool)
    return (flat, shapes, flips), torch.tensor([s[1] for s in samples])


def resize_on(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 or float ``[3, h, w]`` -> float ``[3, *size]`` (bilinear, antialiased), values 0-255."""
    return torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear",
                                           align_corners=False, antialias=True)[0]


class DeviceResizer:
    """Resize and flip a batch of packed crop regions on the device: float ``[B, size, size, 3]``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, batch, device: torch.device) -> torch.Tensor:
        flat, shapes, flips = batch
        flat = flat.to(device, non_blocking=True)
        out = torch.empty((len(shapes), self.size, self.size, 3), dtype=torch.float32, device=device)
        start = 0
        for index, (height, width) in enumerate(shapes.tolist()):
            region = flat[start:start + height * width * 3].view(height, width, 3).permute(2, 0, 1)
            out[index] = resize_on(region, (self.size, self.size)).permute(1, 2, 0)
            start += height * width * 3
        return torch.where(flips.to(device, non_blocking=True)[:, None, None, None], out.flip(2), out)


# --- decoding on the device --------------------------------------------------------------

class JpegPlan:
    """Worker side of ``decode="gpu"``: the file's bytes and its crop, drawn as TrainCrop draws it
    (``train``), or no crop (evaluation: the device resizes and centre-crops)."""

    def __init__(self, train: bool) -> None:
        self.train = train

    def __call__(self, image: Image.Image):
        from torchvision.transforms import RandomResizedCrop

        plan = torch.full((5,), -1, dtype=torch.int64)
        if self.train:
            top, left, height, width = RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
            plan = torch.tensor([top, left, height, width, int(torch.rand(1) < 0.5)])
        with open(image.filename, "rb") as handle:
            data = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
        image.close()
        return data, plan


def collate_plans(samples):
    """``[((bytes, plan), label), ...]`` -> ``((list of bytes, plans [B, 5]), labels [B])``."""
    return ([s[0][0] for s in samples], torch.stack([s[0][1] for s in samples])), torch.tensor([s[1] for s in samples])


class DeviceDecoder:
    """Decode a batch's JPEGs on the device and crop them to ``size`` as the plans say;
    returns uint8 ``[B, size, size, 3]`` for :meth:`FolderBatches.normalise`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.resize_to = round(size * 256 / 224)

    def __call__(self, batch, device: torch.device) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        data, plans = batch
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return torch.stack([self._crop(image, plan) for image, plan in zip(decoded, plans.tolist(), strict=True)])

    def _resize(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return resize_on(image, size).round_().clamp_(0, 255).to(torch.uint8)

    def _crop(self, image: torch.Tensor, plan: list[int]) -> torch.Tensor:
        top, left, height, width, flip = plan
        if top >= 0:
            image = self._resize(image[:, top:top + height, left:left + width], (self.size, self.size))
            image = image.flip(-1) if flip else image
        else:  # torchvision's Resize(shorter side) then CenterCrop
            h, w = image.shape[-2:]
            short = self.resize_to
            new = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
            image = self._resize(image, new)
            top, left = round((new[0] - self.size) / 2.0), round((new[1] - self.size) / 2.0)
            image = image[:, top:top + self.size, left:left + self.size]
        return image.permute(1, 2, 0)
