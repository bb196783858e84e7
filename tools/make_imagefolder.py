"""Write a small synthetic ImageFolder tree (``train/<class>/*.jpg``, ``val/<class>/*.jpg``).

Its purpose is to run ImageNet-shaped jobs (224 px, 1000 classes) where ImageNet itself is not
at hand, e.g. to check that ``fabench run --rule dfa --arch resnet18 --dataset imagenet`` trains
within its memory goal on a CPU machine. Each class gets a colour and a stripe orientation drawn
from its index, plus per-image noise, so the images are learnable but carry no real content.
Numbers obtained on it say nothing about ImageNet accuracy.

    python tools/make_imagefolder.py /tmp/imagefolder --classes 1000 --train 1 --val 1 --size 224
    fabench run --rule dfa --arch resnet18 --dataset imagenet --data-dir /tmp/imagefolder ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def class_image(index: int, rng: np.random.Generator, size: int) -> Image.Image:
    """One image of class ``index``: its colour, its stripe angle, and some noise of its own."""
    palette = np.random.default_rng(index)
    colour = palette.integers(40, 216, size=3)
    angle = palette.uniform(0, np.pi)
    y, x = np.mgrid[0:size, 0:size] / size
    stripes = np.sin(2 * np.pi * 6 * (x * np.cos(angle) + y * np.sin(angle)))
    pixels = colour[None, None, :] + 30 * stripes[..., None] + rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_tree(root: Path, classes: int, per_split: dict[str, int], size: int, seed: int) -> int:
    """Write every split's images; return how many were written."""
    rng = np.random.default_rng(seed)
    written = 0
    for split, count in per_split.items():
        for index in range(classes):
            folder = root / split / f"class{index:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                class_image(index, rng, size).save(folder / f"{k}.jpg", quality=85)
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="Folder to create (train/ and val/ go inside).")
    parser.add_argument("--classes", type=int, default=1000, help="Number of class folders.")
    parser.add_argument("--train", type=int, default=1, help="Training images per class.")
    parser.add_argument("--val", type=int, default=1, help="Validation images per class.")
    parser.add_argument("--size", type=int, default=224, help="Image side in pixels.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the per-image noise.")
    args = parser.parse_args()
    if min(args.classes, args.train, args.val, args.size) < 1:
        parser.error("--classes, --train, --val and --size must be at least 1")
    count = write_tree(args.root, args.classes, {"train": args.train, "val": args.val}, args.size, args.seed)
    print(f"wrote {count} images under {args.root}")


if __name__ == "__main__":
    main()
