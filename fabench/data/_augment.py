"""Augmentation policies and the whole-batch image operations the device loader applies.

All operations take a batch ``[B, C, H, W]`` on whatever device it lives on and do the same
thing to every image except where per-image random draws (crop offsets, flip bits) are passed
in. They never draw random numbers themselves: :func:`draw_epoch` draws an epoch's worth from
the caller's generator, which keeps runs deterministic and resumable.

Policies (``InMemoryDataset.augment``):

* ``cifar``: zero-pad 4 pixels, take a random crop of the original size, flip horizontally
  with probability 1/2. Test images are unchanged.
* ``crop24``: random 24×24 crop (no padding) and flip for training; the centre 24×24 crop for
  testing. This is Architecture 1's preprocessing (cuda-convnet's CIFAR recipe).
* ``mnist`` / ``none``: no augmentation.

After the policy every batch is brought to the dataset's ``image_size`` by :func:`fit_to_size`
and normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fabench.errors import FabenchError, unknown_choice

#: Size changes up to this many pixels are made by zero padding or centre cropping (pixels kept
#: as they are, e.g. MNIST 28 → 32 for LeNet-5); larger ones by bilinear resizing.
MAX_PAD_OR_CROP = 8


@dataclass(frozen=True)
class AugmentPolicy:
    name: str
    description: str
    pad: int = 0  # zero padding on each side before the random crop
    crop: int | None = None  # crop side (random at train, centre at test); None = input side
    flip: bool = False


AUGMENTATIONS = {
    policy.name: policy
    for policy in (
        AugmentPolicy(
            "cifar", "random crop with 4-pixel zero padding + horizontal flip", pad=4, flip=True
        ),
        AugmentPolicy(
            "crop24", "train: random 24x24 crop + flip; test: centre 24x24 crop", crop=24, flip=True
        ),
        AugmentPolicy("mnist", "no augmentation (MNIST-style data)"),
        AugmentPolicy("none", "no augmentation"),
    )
}


def get_policy(name: str) -> AugmentPolicy:
    if name not in AUGMENTATIONS:
        raise unknown_choice("augmentation", name, AUGMENTATIONS)
    return AUGMENTATIONS[name]


def crop_side(policy: AugmentPolicy, native: int) -> int:
    """Side of the images after the policy's crop; checks the crop fits."""
    side = policy.crop or native
    if side > native + 2 * policy.pad:
        raise FabenchError(
            f"augmentation '{policy.name}' crops {side}x{side} from {native}x{native} images"
        )
    return side


@dataclass
class EpochDraws:
    """All random choices of one training epoch, on the CPU."""

    order: Tensor  # a permutation of the training indices
    offsets: Tensor | None  # [N, 2] crop corner (row, col) per position in the epoch
    flips: Tensor | None  # [N] bool


def draw_epoch(
    n: int, policy: AugmentPolicy, native: int, generator: torch.Generator
) -> EpochDraws:
    """Draw, in this order, the epoch's permutation, crop offsets and flip bits."""
    if generator.device.type != "cpu":
        raise ValueError(
            "the data generator must be a CPU torch.Generator (its state is saved with runs)"
        )
    order = torch.randperm(n, generator=generator)
    room = native + 2 * policy.pad - crop_side(policy, native)
    offsets = torch.randint(0, room + 1, (n, 2), generator=generator) if room > 0 else None
    flips = torch.rand(n, generator=generator) < 0.5 if policy.flip else None
    return EpochDraws(order, offsets, flips)


def crop_at(images: Tensor, side: int, corners: Tensor) -> Tensor:
    """Crop ``side``×``side`` windows whose top-left corners are ``corners`` ([B, 2]), per image."""
    span = torch.arange(side, device=images.device)
    rows = (corners[:, 0:1] + span)[:, :, None]  # [B, side, 1]
    cols = (corners[:, 1:2] + span)[:, None, :]  # [B, 1, side]
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    # advanced indices around a slice put the index dims first: [B, side, side, C]
    return images[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def flip_where(images: Tensor, flips: Tensor) -> Tensor:
    """Mirror the images whose flag is set."""
    return torch.where(flips[:, None, None, None], images.flip(-1), images)


def center_crop(images: Tensor, side: int) -> Tensor:
    top = (images.shape[-2] - side) // 2
    left = (images.shape[-1] - side) // 2
    return images[:, :, top : top + side, left : left + side]


def pad_to(images: Tensor, side: int) -> Tensor:
    """Zero-pad square images to ``side``, centred (the extra pixel, if odd, goes right/bottom)."""
    gap = side - images.shape[-1]
    before = gap // 2
    return F.pad(images, (before, gap - before, before, gap - before))


def fit_to_size(images: Tensor, side: int) -> Tensor:
    """Bring square images to ``side``: pad/centre-crop small differences, resize large ones."""
    gap = side - images.shape[-1]
    if gap == 0:
        return images
    if 0 < gap <= MAX_PAD_OR_CROP:
        return pad_to(images, side)
    if -MAX_PAD_OR_CROP <= gap < 0:
        return center_crop(images, side)
    resized = F.interpolate(
        images.float(), size=(side, side), mode="bilinear", align_corners=False, antialias=gap < 0
    )
    return resized.clamp_(0, 255)


def augment_train(
    images: Tensor, policy: AugmentPolicy, offsets: Tensor | None, flips: Tensor | None
) -> Tensor:
    """Apply ``policy``'s training transform to a uint8 batch with the given random draws."""
    side = crop_side(policy, images.shape[-1])
    if policy.pad:
        images = F.pad(images, (policy.pad,) * 4)
    if offsets is not None:
        images = crop_at(images, side, offsets)
    if flips is not None:
        images = flip_where(images, flips)
    return images


def augment_test(images: Tensor, policy: AugmentPolicy) -> Tensor:
    """Apply ``policy``'s deterministic test transform (a centre crop for ``crop24``)."""
    if policy.crop and policy.crop != images.shape[-1]:
        images = center_crop(images, crop_side(policy, images.shape[-1]))
    return images
