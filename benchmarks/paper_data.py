"""The paper pipelines' data and anchors: the splits read from a dataset folder, their loaders, and the
backbone a run starts from (optionally with converted pretrained weights).

>>> import torch
>>> subset = list(limited(list(range(10)), 3, seed=0))
>>> subset == list(limited(list(range(10)), 3, seed=0)), len(subset), subset == sorted(subset)
(True, 3, True)
>>> data_input_size([(torch.zeros(3, 32, 48), {})])
(32, 48)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from dymu.backbones import BlockBackbone

from .datasets import BENCHMARKS
from .paper_tasks import PAPER_BACKBONES

__all__ = ["DatasetError", "limited", "load_splits", "data_input_size", "loader", "paper_backbone"]


class DatasetError(ValueError):
    """A benchmark's data cannot be read (missing or malformed file); the message names the file and layout."""


def limited(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most ``limit`` items of ``dataset``: a seeded random subset, in the dataset's order.

    Raises:
        ValueError: ``limit < 1``.
    """
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    # A seeded random subset rather than the first items: split files are often sorted by class.
    chosen = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:limit])
    return Subset(dataset, chosen.tolist())


def load_splits(name: str, root: str | Path, input_size: tuple[int, int] | None, limit: int | None, seed: int) -> dict[str, Dataset]:
    """The ``train``, ``val``, ``test`` and ``affinity`` (training images without augmentation) splits.

    Raises:
        DatasetError: a missing or malformed file (the message names it and the expected layout).
    """
    spec = BENCHMARKS[name]
    options: dict[str, Any] = {}
    data = spec.config.get("data", {})
    if "val_fraction" in data:
        options["val_fraction"] = data["val_fraction"]
        options["seed"] = data.get("seed", 0)
    if name.startswith("pascal_context"):
        options["output_size"] = tuple(input_size or spec.config["input_size"])
    root = Path(root)
    try:
        splits = {
            "train": spec.load(root, "train", **options),
            "val": spec.load(root, "val", **options),
            "test": spec.load(root, "test", **options),
            "affinity": spec.load(root, "train", augment=False, **options),
        }
    except ValueError as exc:  # the loaders name the file and the expected layout
        raise DatasetError(f"{name}: {exc}") from exc
    # The affinity images come from the same subset as the training images.
    offsets = {"train": 0, "affinity": 0, "val": 1, "test": 2}
    return {key: limited(ds, limit, seed + offsets[key]) for key, ds in splits.items()}


def data_input_size(dataset: Dataset) -> tuple[int, int]:
    """``(H, W)`` of the dataset's first image ``[C, H, W]``."""
    image = dataset[0][0]
    return int(image.shape[-2]), int(image.shape[-1])


def loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int, device: torch.device, seed: int) -> DataLoader:
    """A seeded loader: shuffled, dropping the last short batch, for training; in order otherwise."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        # BatchNorm cannot train on a batch of one; a short last batch also skews the step.
        drop_last=train and len(dataset) >= batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=generator,
    )


def paper_backbone(name: str, width_mult: float, input_size: tuple[int, int], weights: str | Path | None) -> BlockBackbone:
    """The anchor's template backbone of benchmark ``name``, with ``weights`` (a ``state_dict`` file) loaded.

    Raises:
        ValueError: weights whose tensors do not fit the backbone, or whose keys match none of its own.
    """
    backbone = PAPER_BACKBONES[name](width_mult=width_mult, input_size=tuple(input_size))
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        own = backbone.state_dict()
        bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"{weights}: {len(bad)} tensors do not fit the {name} backbone, e.g. {bad[:3]}")
        result = backbone.load_state_dict(state, strict=False)
        if len(result.missing_keys) == len(own):
            raise ValueError(f"{weights}: no key matches the backbone's (expected keys like {next(iter(own))!r})")
    return backbone
