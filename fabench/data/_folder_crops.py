"""What a DataLoader worker does to one folder image: decode, crop, flip, to uint8 (no float).

The crops are torchvision's, drawn the same way from the same generator (so a run's
augmentation does not change): training ``RandomResizedCrop(size)`` (area 8-100 %, aspect
3/4-4/3, bilinear antialiased resize) then a horizontal flip with probability 1/2; evaluation
a resize of the shorter side to ``size·256/224`` then the centre ``size×size``. What differs
is the cost:

* the image is decoded only after its crop is known: a JPEG only down to the crop's last row
  (the decoder stops there; the rows are those of a full decode), and at 1/2, 1/4 or 1/8 scale
  in the DCT domain (PIL's draft mode, libjpeg's scaled decoding) whenever the crop still has
  at least ``size`` pixels each way at that scale (the region is then cut at whole pixels of
  the reduced image); ``draft=False`` decodes every row at full size;
* the training resize is torch's uint8 antialiased bilinear kernel, the filter PIL uses at 2-3x
  its speed (pixels within one grey level of PIL's);
* the result stays uint8, height × width × channels (a quarter of float32's bytes through the
  worker queue and the host-to-device copy); :class:`~fabench.data._folder_batches.FolderBatches`
  turns each batch into normalised float on the device, where it is a single multiply-add.

Images are opened lazily (:func:`open_lazily` as the ImageFolder loader): reading the header
gives the size the crop is drawn from, and decoding waits for :meth:`PIL.Image.Image.draft`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

#: RandomResizedCrop's defaults (torchvision).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def open_lazily(path: str) -> Image.Image:
    """The image with its header read and its pixels not yet decoded (an ImageFolder loader)."""
    return Image.open(path)


def _decode_reduced(image: Image.Image, reduction: float, rows: float | None = None) -> tuple[Image.Image, float, float]:
    """Decode ``image`` at the largest JPEG scale that shrinks it by at most ``reduction``, and of a
    JPEG only the rows above ``rows`` (original coordinates; None: all); return it as RGB with
    the factors from original to decoded coordinates (1, 1 when not reduced)."""
    width, height = image.size
    if image.format == "JPEG" and reduction >= 2:
        image.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
    fx, fy = width / image.size[0], height / image.size[1]
    if image.format == "JPEG" and rows is not None:
        _decode_rows(image, min(image.size[1], math.ceil(rows / fy) + 1))
    return (image if image.mode == "RGB" else image.convert("RGB")), fx, fy


def _decode_rows(image: Image.Image, rows: int) -> None:
    """Decode only the top ``rows`` rows of a JPEG: the decoder stops there, and libjpeg then
    reports the scan unfinished, which is expected. The rows are those of a full decode."""
    if rows >= image.size[1] or len(image.tile) != 1:
        image.load()
        return
    tile = image.tile[0]
    x0, y0, x1, _ = tile[1]
    image.tile = [tile._replace(extents=(x0, y0, x1, y0 + rows))]
    image._size = (image.size[0], rows)
    try:
        image.load()
    except OSError as err:  # the unfinished scan; anything else (a truncated file) is raised
        if "broken data stream" not in str(err):
            raise


def to_uint8_hwc(image: Image.Image) -> torch.Tensor:
    """An RGB image as a uint8 ``[H, W, 3]`` tensor (one copy, no float)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))


def resize_uint8(region: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[h, w, 3]`` -> uint8 ``[size, size, 3]``, bilinear and antialiased: PIL's filter,
    computed by torch's uint8 kernel (2-3x PIL's speed; PIL's pixels within one grey level)."""
    images = region.permute(2, 0, 1)[None]  # a channels_last view: no copy
    out = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=True)
    return out[0].permute(1, 2, 0).contiguous()


def _draw_crop(image: Image.Image) -> tuple[int, int, int, int, bool]:
    """RandomResizedCrop's region and RandomHorizontalFlip's coin, in torchvision's order."""
    from torchvision.transforms import RandomResizedCrop

    top, left, height, width = RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
    return top, left, height, width, bool(torch.rand(1) < 0.5)


def _cut(image: Image.Image, top: int, left: int, height: int, width: int, size: int, draft: bool) -> torch.Tensor:
    """The region, decoded (at reduced scale if it keeps ``size`` pixels each way, and no further
    down than its last row), as uint8 [h, w, 3]."""
    reduction = min(width, height) / size if draft else 1.0
    image, fx, fy = _decode_reduced(image, reduction, rows=top + height if draft else None)
    box = (round(left / fx), round(top / fy), round((left + width) / fx), round((top + height) / fy))
    return to_uint8_hwc(image.crop(box))


class TrainCrop:
    """RandomResizedCrop(size) and a random horizontal flip, decoded as little as the crop allows."""

    def __init__(self, size: int, *, draft: bool = True) -> None:
        self.size, self.draft = size, draft

    def __call__(self, image: Image.Image) -> torch.Tensor:
        top, left, height, width, flip = _draw_crop(image)
        out = resize_uint8(_cut(image, top, left, height, width, self.size, self.draft), self.size)
        return out.flip(1) if flip else out


class TrainRegion:
    """The worker's half of :class:`TrainCrop` when the device resizes: the same draws, the crop's
    region decoded (at reduced scale when it is still at least ``size`` pixels each way) and
    cut out, unresized; returns ``(uint8 [h, w, 3], flip)``."""

    def __init__(self, size: int, *, draft: bool = True) -> None:
        self.size, self.draft = size, draft

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, bool]:
        top, left, height, width, flip = _draw_crop(image)
        return _cut(image, top, left, height, width, self.size, self.draft), flip


class EvalCrop:
    """Resize the shorter side to ``size·256/224``, take the centre ``size×size`` (torchvision's
    Resize + CenterCrop), decoding a JPEG at reduced scale when the resize shrinks it 2× or more."""

    def __init__(self, size: int, *, draft: bool = True) -> None:
        self.size, self.draft = size, draft
        self.resize_to = round(size * 256 / 224)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms import functional

        reduction = min(image.size) / self.resize_to if self.draft else 1.0
        image, _, _ = _decode_reduced(image, reduction)
        image = functional.center_crop(functional.resize(image, self.resize_to), [self.size, self.size])
        return to_uint8_hwc(image)
