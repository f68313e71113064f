"""Task specs (:class:`dymu.Task`) of the composite benchmarks, with heads sized from the backbone's output.

Heads receive the backbone output shape ``(C, H, W)`` (``(32, 9, 9)`` for ``dymu.backbones.lenet()``):

* :class:`ClassificationHead`: ``Flatten -> Linear(C*H*W, hidden) -> ReLU -> Linear(hidden, K)``. It keeps
  the spatial layout, which these tasks need: "the class of the top-left item" depends on where a feature is.
* :class:`DenseHead`: ``Conv1x1(C, hidden*s^2) -> PixelShuffle(s) -> ReLU -> Conv3x3(hidden, out)``, with
  ``s = ceil(36 / H)`` (and a bilinear resize when ``H*s`` is not 36): cheap on CPU, about 1.2 MFLOPs per image
  at the defaults.

Losses and metrics: class tasks use cross-entropy and accuracy (``"acc"``, primary, higher is better);
``segment`` cross-entropy averaged over pixels, mean IoU over its 3 classes (``"miou"``, primary) and pixel
accuracy (``"pixel_acc"``); ``clean`` mean squared error and mean absolute error (``"mae"``, primary, lower is
better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from ..metrics import MeanIoU, PixelAccuracy, accuracy, mean_absolute_error
from ..tasks import Task

__all__ = [
    "ClassificationHead",
    "DenseHead",
    "classification_task",
    "multifashion_tasks",
    "fashion_digits_tasks",
]

Shape = tuple[int, ...]


def _spatial(out_shape: Shape, what: str) -> tuple[int, int, int]:
    if len(out_shape) != 3 or min(out_shape) < 1:
        raise ValueError(f"{what} needs a backbone output shape (C, H, W), got {tuple(out_shape)}")
    c, h, w = (int(v) for v in out_shape)
    return c, h, w


@dataclass(frozen=True)
class ClassificationHead:
    """Head factory for a ``num_classes``-way task: ``[B, C, H, W]`` -> logits ``[B, num_classes]``."""

    num_classes: int
    hidden: int = 64

    def __call__(self, out_shape: Shape, skip_shapes: Sequence[Shape] = ()) -> nn.Module:
        c, h, w = _spatial(out_shape, "ClassificationHead")
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, self.num_classes),
        )


@dataclass(frozen=True)
class DenseHead:
    """Head factory for a per-pixel task: ``[B, C, H, W]`` -> ``[B, out_channels, *output_size]``."""

    out_channels: int
    output_size: tuple[int, int] = (36, 36)
    hidden: int = 8

    def __call__(self, out_shape: Shape, skip_shapes: Sequence[Shape] = ()) -> nn.Module:
        c, h, w = _spatial(out_shape, "DenseHead")
        out_h, out_w = self.output_size
        scale = max(1, math.ceil(out_h / h), math.ceil(out_w / w))
        layers: list[nn.Module] = [nn.Conv2d(c, self.hidden * scale * scale, 1), nn.PixelShuffle(scale)]
        if (h * scale, w * scale) != (out_h, out_w):
            layers.append(nn.Upsample(size=(out_h, out_w), mode="bilinear", align_corners=False))
        layers += [nn.ReLU(inplace=True), nn.Conv2d(self.hidden, self.out_channels, 3, padding=1)]
        return nn.Sequential(*layers)


def classification_task(name: str, num_classes: int, hidden: int = 64) -> Task:
    """A ``num_classes``-way task: cross-entropy loss, accuracy ``"acc"`` as the primary metric."""
    return Task(
        name,
        head=ClassificationHead(num_classes, hidden),
        loss=F.cross_entropy,
        metrics={"acc": accuracy},
        primary="acc",
        higher_is_better=True,
        n_classes=num_classes,
    )


def _segment_task(hidden: int) -> Task:
    return Task(
        "segment",
        head=DenseHead(3, hidden=hidden),
        loss=F.cross_entropy,
        metrics={"miou": MeanIoU(3), "pixel_acc": PixelAccuracy()},
        primary="miou",
        higher_is_better=True,
        n_classes=3,
    )


def _clean_task(hidden: int) -> Task:
    return Task(
        "clean",
        head=DenseHead(1, hidden=hidden),
        loss=F.mse_loss,
        metrics={"mae": mean_absolute_error},
        primary="mae",
        higher_is_better=False,
        target_dtype="float",
    )


def _select(available: dict[str, object], names: Sequence[str] | None, benchmark: str) -> list[str]:
    if names is None:
        return list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"{benchmark} has no task(s) {unknown}; its tasks are {list(available)}")
    if len(set(names)) != len(names):
        raise ValueError(f"task names repeat: {list(names)}")
    return list(names)


def multifashion_tasks(names: Sequence[str] | None = None, hidden: int = 64) -> list[Task]:
    """Tasks ``top_left`` and ``bottom_right`` (10 Fashion-MNIST classes each), or the subset ``names``."""
    available = {"top_left": 10, "bottom_right": 10}
    return [classification_task(n, available[n], hidden) for n in _select(available, names, "multifashion")]


def fashion_digits_tasks(names: Sequence[str] | None = None, hidden: int = 64, dense_hidden: int = 8) -> list[Task]:
    """Tasks ``fashion`` (10), ``fashion_group`` (3), ``digit`` (10), ``parity`` (2), ``segment`` (3 classes per
    pixel) and ``clean`` (the item alone, ``[1, 36, 36]``), or the subset ``names`` in the order given."""
    makers = {
        "fashion": lambda: classification_task("fashion", 10, hidden),
        "fashion_group": lambda: classification_task("fashion_group", 3, hidden),
        "digit": lambda: classification_task("digit", 10, hidden),
        "parity": lambda: classification_task("parity", 2, hidden),
        "segment": lambda: _segment_task(dense_hidden),
        "clean": lambda: _clean_task(dense_hidden),
    }
    return [makers[n]() for n in _select(makers, names, "fashion_digits")]
