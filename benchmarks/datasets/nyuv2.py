"""NYUv2, 3 tasks (13-class semantic segmentation, depth, surface normals), from the preprocessed .npy copy.

Expected layout (the 288x384 preprocessed copy distributed with MTAN and reused by LibMTL and most
multi-task papers; ``N`` runs over integers, the same set in all four folders)::

    root/train/image/N.npy    [H, W, 3] float in [0, 1] (uint8 0..255, or floats above 1, read as 0..255)
    root/train/label/N.npy    [H, W] class ids 0..12 stored as float or int; -1 (this copy) or 255 = unlabelled
    root/train/depth/N.npy    [H, W, 1] or [H, W] depth in metres; 0 = no measurement
    root/train/normal/N.npy   [H, W, 3] unit normals in [-1, 1]; all-zero = no normal
    root/val/...              the same four folders: the official 654-image test split (795 in train)

The 13 classes (``NYUV2_CLASS_NAMES``) are the usual reduction of the NYUv2 labels (bed, books, ...,
window). Non-finite or negative depths and non-finite normals count as invalid (0). A label value
outside 0..12 (other than -1 and 255) raises a ``ValueError`` naming the file, which catches the
40-class labels and most 1-based copies; other NYUv2 variants (.mat files, 0 = unlabelled with classes
1..13) must be converted to this layout first.

Splits. The copy's ``val`` folder is the test set of the literature, so it is exposed as ``test``;
model selection uses ``val``, a seeded ``val_fraction`` (10%) of the ``train`` folder, and ``train``
is the rest (``trainval`` = the whole ``train`` folder, for the final run).

Targets per sample: ``semseg [H, W]`` int64 (255 = ignore), ``depth [1, H, W]`` float32 (0 = invalid),
``normal [3, H, W]`` float32 (zero vector = invalid); the image ``[3, H, W]`` is normalised with the
ImageNet statistics (the ResNet-34 backbone starts from ImageNet weights). Training augmentation
(``train``/``trainval`` by default): a random zoom ``s ~ U(1, 1.5)`` (crop ``1/s`` of the image at a
random place, resize back; depth divided by ``s``) and a horizontal flip that also negates the x
component of the normals, all applied identically to the image and the three targets.
"""

from __future__ import annotations

import re

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dymu.metrics.task_metrics import DepthErrors, MeanIoU, NormalAngleError, PixelAccuracy
from dymu.tasks import HeadFactory, Task

from .transforms import (
    IGNORE_INDEX,
    AtTargetSize,
    JointAugment,
    holdout_split,
    masked_cross_entropy,
    masked_l1_loss,
    normal_cosine_loss,
    normalize_image,
)

__all__ = [
    "NYUV2_CLASS_NAMES",
    "NUM_CLASSES",
    "TASK_NAMES",
    "KINDS",
    "CONFIG",
    "NYUv2",
    "read_nyuv2_sample",
    "load_nyuv2",
    "nyuv2_tasks",
]

NYUV2_CLASS_NAMES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
)  # fmt: skip
NUM_CLASSES = len(NYUV2_CLASS_NAMES)
TASK_NAMES = ("semseg", "depth", "normal")
KINDS = {"image": "image", "semseg": "label", "depth": "depth", "normal": "normal"}
"""Sample entry -> augmentation kind (see :mod:`benchmarks.datasets.transforms`)."""

_FOLDERS = ("image", "label", "depth", "normal")
_FILE_NAME = re.compile(r"^(\d+)\.npy$")
_LAYOUT = (
    "expected the preprocessed NYUv2 layout root/{train,val}/{image,label,depth,normal}/N.npy "
    "with the same indices N in all four folders"
)

CONFIG: dict[str, Any] = {
    "benchmark": "nyuv2",
    "tasks": list(TASK_NAMES),
    "input_size": (288, 384),
    "backbone": "DeepLabv3+ with ResNet-34 (ImageNet-pretrained), one decoder per task",
    "data": {"val_fraction": 0.1, "seed": 0, "scale_range": (1.0, 1.5), "flip_prob": 0.5},
    # Stage 0: one single-task network per task.
    "stage0": {
        "optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "epochs": 200, "batch_size": 8,
        "lr_gamma": 0.5, "lr_step_epochs": 100,
    },
    "stage1": {"optimizer": "adam", "lr": 1e-3, "steps": 30_000, "lr_gamma": 0.3, "lr_step": 14_000, "batch_size": 8},
    "stage2": {"optimizer": "adam", "lr": 1e-3, "steps": 30_000, "lr_gamma": 0.3, "lr_step": 14_000, "batch_size": 8},
    "eval_batch_size": 8,
    "sources": {
        "paper": ["backbone", "tasks", "stage1/stage2 optimizer/lr/steps/lr schedule"],
        "choice": [
            "input_size (that of the common preprocessed copy)",
            "stage0 (not stated; the common NYUv2 recipe of MTAN/LibMTL: Adam 1e-4, halved at epoch 100 of 200)",
            "batch sizes", "val_fraction/seed", "augmentation (MTAN-style random zoom 1..1.5 + flip)",
        ],
    },
}  # fmt: skip
"""Training settings a GPU run uses for this benchmark (``sources`` says which come from the paper)."""


def _scan(split_dir: Path) -> list[dict[str, Path]]:
    """The four files of every index in one folder of the copy, sorted by index; checks completeness."""
    if not split_dir.is_dir():
        raise ValueError(f"missing folder {split_dir}; {_LAYOUT}")
    present: dict[str, dict[int, Path]] = {}
    for folder in _FOLDERS:
        path = split_dir / folder
        if not path.is_dir():
            raise ValueError(f"missing folder {path}; {_LAYOUT}")
        present[folder] = {}
        for entry in path.iterdir():
            match = _FILE_NAME.match(entry.name)
            if match:
                present[folder][int(match.group(1))] = entry
    indices = sorted(set().union(*(set(p) for p in present.values())))
    if not indices:
        raise ValueError(f"no N.npy file under {split_dir}; {_LAYOUT}")
    missing = [split_dir / folder / f"{i}.npy" for i in indices for folder in _FOLDERS if i not in present[folder]]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"missing file {shown}{more}; {_LAYOUT}")
    return [{folder: present[folder][i] for folder in _FOLDERS} for i in indices]


def _load_array(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # truncated, pickled or foreign files fail in many ways
        raise ValueError(f"{path} is not a readable .npy array ({type(exc).__name__}: {exc})") from exc


def _expected_shape(folder: str, shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    """Check one array's shape for its folder and return its ``(H, W)``."""
    ok = {
        "image": len(shape) == 3 and shape[2] == 3,
        "label": len(shape) == 2 or (len(shape) == 3 and shape[2] == 1),
        "depth": len(shape) == 2 or (len(shape) == 3 and shape[2] == 1),
        "normal": len(shape) == 3 and shape[2] == 3,
    }[folder]
    if not ok:
        wanted = {"image": "[H, W, 3]", "label": "[H, W]", "depth": "[H, W, 1] or [H, W]", "normal": "[H, W, 3]"}[folder]
        raise ValueError(f"{path}: a {folder} array must be {wanted}, got shape {shape}")
    return int(shape[0]), int(shape[1])


def _check_sample_files(files: Mapping[str, Path]) -> tuple[int, int]:
    """Read only the headers of one sample's four files; they must agree on ``(H, W)``."""
    size = None
    for folder in _FOLDERS:
        array = _load_array(files[folder], mmap=True)
        hw = _expected_shape(folder, tuple(array.shape), files[folder])
        if size is None:
            size = hw
        elif hw != size:
            raise ValueError(f"{files[folder]} is {hw[0]}x{hw[1]} but {files['image']} is {size[0]}x{size[1]}")
    assert size is not None
    return size


def read_nyuv2_sample(files: Mapping[str, Path]) -> dict[str, Tensor]:
    """Read and convert one sample: ``{"image": [3, H, W] normalised, "semseg": [H, W] int64 (255 ignore),
    "depth": [1, H, W], "normal": [3, H, W]}``. ``files`` maps image/label/depth/normal to paths."""
    arrays = {folder: _load_array(files[folder]) for folder in _FOLDERS}
    size = None
    for folder, array in arrays.items():
        hw = _expected_shape(folder, array.shape, files[folder])
        if size is None:
            size = hw
        elif hw != size:
            raise ValueError(f"{files[folder]} is {hw[0]}x{hw[1]} but {files['image']} is {size[0]}x{size[1]}")

    image = arrays["image"]
    if not np.issubdtype(image.dtype, np.number):
        raise ValueError(f"{files['image']}: image must be numeric, got {image.dtype}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise ValueError(f"{files['image']}: image has non-finite values")
    if arrays["image"].dtype == np.uint8 or image.max() > 1.0 + 1e-3:
        image = image / 255.0
    image_t = normalize_image(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))

    label = arrays["label"].reshape(size).astype(np.float64)
    unlabelled = (label == -1) | (label == 255)
    values = label[~unlabelled]
    if not np.isfinite(values).all() or (values != np.round(values)).any() or (values < 0).any() or (values >= NUM_CLASSES).any():
        bad = values[~(np.isfinite(values) & (values == np.round(values)) & (values >= 0) & (values < NUM_CLASSES))][0]
        raise ValueError(
            f"{files['label']}: found label value {bad}; expected class ids 0..{NUM_CLASSES - 1} with -1 or 255 "
            "for unlabelled (a 40-class or 1-based variant must be converted first)"
        )
    semseg = np.where(unlabelled, IGNORE_INDEX, label).astype(np.int64)

    depth = arrays["depth"].reshape(size).astype(np.float32)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)

    normal = arrays["normal"].astype(np.float32)
    normal = np.where(np.isfinite(normal), normal, 0.0)
    if np.abs(normal).max(initial=0.0) > 1.01:
        raise ValueError(f"{files['normal']}: normals must lie in [-1, 1], found {np.abs(normal).max():.3g} (a 0..255 encoding?)")

    return {
        "image": image_t,
        "semseg": torch.from_numpy(semseg),
        "depth": torch.from_numpy(depth)[None],
        "normal": torch.from_numpy(np.ascontiguousarray(normal.transpose(2, 0, 1))),
    }


class NYUv2(Dataset):
    """NYUv2 samples as ``(image [3, H, W], {"semseg": [H, W], "depth": [1, H, W], "normal": [3, H, W]})``.

    Args:
        files: per sample, the paths of its image/label/depth/normal arrays.
        augment: a :class:`JointAugment` over :data:`KINDS`, or ``None``.
        source: a description for ``repr``.
    """

    def __init__(self, files: Sequence[Mapping[str, Path]], augment: JointAugment | None = None, source: str = ""):
        if len(files) == 0:
            raise ValueError(f"the NYUv2 split {source!r} is empty")
        self.files = [dict(f) for f in files]
        self.augment = augment
        self.source = source
        self.task_names = TASK_NAMES

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        sample = read_nyuv2_sample(self.files[index])
        if self.augment is not None:
            sample = self.augment(sample)
        image = sample.pop("image")
        return image, {name: sample[name] for name in self.task_names}

    def __repr__(self) -> str:
        return f"NYUv2({self.source!r}, n={len(self)}, augment={self.augment})"


def load_nyuv2(
    root: str | Path,
    split: str,
    *,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    scale_range: tuple[float, float] = (1.0, 1.5),
    validate: bool = True,
) -> NYUv2:
    """Load one split of the preprocessed NYUv2 copy.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``train`` (the ``train`` folder minus validation), ``val`` (a seeded ``val_fraction`` of
            the ``train`` folder), ``trainval`` (the whole ``train`` folder) or ``test`` (the ``val``
            folder, the official test images).
        augment: random zoom in ``scale_range`` + flip; default on for ``train`` and ``trainval``.
        validate: read every file's header now (shapes, completeness, one common size), so a broken
            copy fails here, naming the file, rather than in the middle of an epoch.

    Raises ``ValueError`` naming the file when a file is missing, truncated or of the wrong shape.
    """
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"split must be 'train', 'val', 'trainval' or 'test', got {split!r}")
    root = Path(root)
    files = _scan(root / ("val" if split == "test" else "train"))
    if validate:
        first = _check_sample_files(files[0])
        for sample_files in files[1:]:
            size = _check_sample_files(sample_files)
            if size != first:
                raise ValueError(
                    f"{sample_files['image']} is {size[0]}x{size[1]} but {files[0]['image']} is {first[0]}x{first[1]}; "
                    "all samples must share one size"
                )
    if split in ("train", "val"):
        kept, held_out = holdout_split(len(files), val_fraction, seed)
        files = [files[i] for i in (kept if split == "train" else held_out)]
    if augment is None:
        augment = split in ("train", "trainval")
    transform = JointAugment(KINDS, output_size=None, scale_range=scale_range, flip_prob=0.5) if augment else None
    return NYUv2(files, augment=transform, source=f"{root} [{split}]")


def nyuv2_tasks(head: Callable[[int], HeadFactory]) -> list[Task]:
    """The three NYUv2 tasks; ``head(num_outputs)`` returns a task's head factory.

    - ``semseg``: ``head(13)``, cross-entropy over labelled pixels; metrics ``mIoU`` (primary) and
      ``pixel_acc``, higher is better.
    - ``depth``: ``head(1)``, L1 over pixels with a depth measurement; metrics ``abs_err`` (primary)
      and ``rel_err``, lower is better.
    - ``normal``: ``head(3)``, ``1 - cos`` over pixels with a normal; metrics ``mean_angle`` (primary)
      and ``median_angle`` in degrees, lower is better.

    Predictions may be on a coarser grid than the targets: losses and metrics upsample them bilinearly.
    Targets are declared (semseg ``n_classes=13``, ``ignore_index=255``; depth and normal
    ``target_dtype="float"``), so :func:`dymu.checks.check_batch` validates them.
    """
    return [
        Task(
            "semseg",
            head=head(NUM_CLASSES),
            loss=masked_cross_entropy,
            metrics={
                "mIoU": AtTargetSize(MeanIoU(NUM_CLASSES, ignore_index=IGNORE_INDEX)),
                "pixel_acc": AtTargetSize(PixelAccuracy(ignore_index=IGNORE_INDEX)),
            },
            primary="mIoU",
            higher_is_better=True,
            n_classes=NUM_CLASSES,
            ignore_index=IGNORE_INDEX,
        ),
        Task(
            "depth",
            head=head(1),
            loss=masked_l1_loss,
            metrics={"abs_err": AtTargetSize(DepthErrors("abs")), "rel_err": AtTargetSize(DepthErrors("rel"))},
            primary="abs_err",
            higher_is_better=False,
            target_dtype="float",
        ),
        Task(
            "normal",
            head=head(3),
            loss=normal_cosine_loss,
            metrics={
                "mean_angle": AtTargetSize(NormalAngleError("mean")),
                "median_angle": AtTargetSize(NormalAngleError("median")),
            },
            primary="mean_angle",
            higher_is_better=False,
            target_dtype="float",
        ),
    ]
