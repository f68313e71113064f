"""Per-task metrics: plain functions averaged over samples, and stateful ones that accumulate.

Every stateful metric follows :class:`dymu.tasks.StatefulMetric`: ``reset()``, ``update(pred,
target)``, ``compute() -> float``. Shapes: classification ``pred [B, K]`` logits, ``target [B]``;
segmentation ``pred [B, K, H, W]`` logits, ``target [B, H, W]`` class ids (``ignore_index`` skipped);
regression ``pred`` and ``target`` the same shape ``[B, C, H, W]``, an optional ``mask`` of valid pixels
derived from the target (``target != invalid``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "accuracy",
    "mean_absolute_error",
    "Accuracy",
    "MeanIoU",
    "PixelAccuracy",
    "DepthErrors",
    "NormalAngleError",
    "SaliencyMaxF",
]


@torch.no_grad()
def accuracy(pred: Tensor, target: Tensor) -> float:
    """Top-1 accuracy of logits ``[B, K]`` (or ``[B, K, H, W]``) against class ids ``[B]`` (or ``[B, H, W]``)."""
    return (pred.argmax(1) == target).float().mean().item()


@torch.no_grad()
def mean_absolute_error(pred: Tensor, target: Tensor) -> float:
    """Mean absolute error over all elements of same-shape tensors."""
    return (pred - target).abs().mean().item()


class MeanIoU:
    """Mean intersection over union of ``num_classes`` classes, from a confusion matrix over all batches.

    Classes absent from both prediction and target in every batch are left out of the mean.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 2:
            raise ValueError(f"MeanIoU needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        labels = pred.argmax(1) if pred.dim() == target.dim() + 1 else pred
        valid = target != self.ignore_index
        t = target[valid].long().cpu()
        p = labels[valid].long().cpu()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"MeanIoU: target class ids must lie in [0, {self.num_classes - 1}] or be {self.ignore_index}")
        index = t * self.num_classes + p
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def per_class(self) -> Tensor:
        """IoU of every class ``[num_classes]``; NaN for classes never seen nor predicted."""
        inter = self.confusion.diag().double()
        union = self.confusion.sum(0).double() + self.confusion.sum(1).double() - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))

    def compute(self) -> float:
        iou = self.per_class()
        seen = ~torch.isnan(iou)
        if not seen.any():
            raise ValueError("MeanIoU: no valid pixel was seen")
        return iou[seen].mean().item()


class Accuracy:
    """Accuracy over the valid targets (``target != ignore_index``), accumulated over batches.

    ``pred`` holds logits ``[B, K, ...]`` or labels of the target's shape; for segmentation this is
    the pixel accuracy, for a task whose samples are mixed with other tasks' (targets
    ``ignore_index`` elsewhere) it counts only the task's own samples.
    """

    def __init__(self, ignore_index: int | None = 255):
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        labels = pred.argmax(1) if pred.dim() == target.dim() + 1 else pred
        valid = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        self.correct += int((labels[valid] == target[valid]).sum())
        self.total += int(valid.sum())

    def compute(self) -> float:
        if self.total == 0:
            raise ValueError(f"{type(self).__name__}: no valid sample was seen")
        return self.correct / self.total


class PixelAccuracy(Accuracy):
    """Fraction of valid pixels whose predicted class equals the target (an :class:`Accuracy`)."""


class DepthErrors:
    """Depth errors over valid pixels (``target > 0``): ``kind="abs"`` mean |d - d*|, ``"rel"`` mean |d - d*| / d*."""

    def __init__(self, kind: str = "abs"):
        if kind not in ("abs", "rel"):
            raise ValueError(f"DepthErrors kind must be 'abs' or 'rel', got {kind!r}")
        self.kind = kind
        self.reset()

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = target > 0
        diff = (pred - target).abs()[valid]
        if self.kind == "rel":
            diff = diff / target[valid]
        self.total += float(diff.sum())
        self.count += int(valid.sum())

    def compute(self) -> float:
        if self.count == 0:
            raise ValueError("DepthErrors: no valid pixel (target > 0) was seen")
        return self.total / self.count


class NormalAngleError:
    """Mean (or median) angle in degrees between predicted and target normals ``[B, 3, H, W]``.

    Pixels whose target normal has zero length are invalid and skipped. The median keeps every valid
    angle, so use it on evaluation sets that fit in memory.
    """

    def __init__(self, statistic: str = "mean"):
        if statistic not in ("mean", "median"):
            raise ValueError(f"NormalAngleError statistic must be 'mean' or 'median', got {statistic!r}")
        self.statistic = statistic
        self.reset()

    def reset(self) -> None:
        self.angles: list[Tensor] = []
        self.total = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = target.norm(dim=1) > 0
        p = torch.nn.functional.normalize(pred, dim=1)
        t = torch.nn.functional.normalize(target, dim=1)
        cos = (p * t).sum(1).clamp(-1, 1)
        angle = torch.rad2deg(torch.acos(cos))[valid]
        self.total += float(angle.sum())
        self.count += int(angle.numel())
        if self.statistic == "median":
            self.angles.append(angle.flatten().cpu())

    def compute(self) -> float:
        if self.count == 0:
            raise ValueError("NormalAngleError: no valid pixel was seen")
        if self.statistic == "median":
            return torch.cat(self.angles).median().item()
        return self.total / self.count


class SaliencyMaxF:
    """Maximal F-measure (beta^2 = 0.3) of saliency probabilities over ``thresholds`` evenly spaced cut-offs.

    ``pred`` holds logits ``[B, 1, H, W]`` (sigmoid applied here) or two-class logits ``[B, 2, H, W]``;
    ``target`` binary ``[B, H, W]`` or ``[B, 1, H, W]``, pixels equal to ``ignore_index`` skipped.
    """

    def __init__(self, thresholds: int = 20, beta2: float = 0.3, ignore_index: int = 255):
        self.cutoffs = torch.linspace(0.0, 1.0, thresholds + 2)[1:-1]
        self.beta2 = beta2
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.tp = torch.zeros(len(self.cutoffs), dtype=torch.float64)
        self.fp = torch.zeros_like(self.tp)
        self.fn = torch.zeros_like(self.tp)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        prob = pred.softmax(1)[:, 1] if pred.shape[1] == 2 else torch.sigmoid(pred[:, 0])
        target = target.reshape(prob.shape)
        valid = target != self.ignore_index
        prob, truth = prob[valid].float().cpu(), (target[valid] > 0).cpu()
        for i, cut in enumerate(self.cutoffs):
            positive = prob >= cut
            self.tp[i] += float((positive & truth).sum())
            self.fp[i] += float((positive & ~truth).sum())
            self.fn[i] += float((~positive & truth).sum())

    def compute(self) -> float:
        precision = self.tp / (self.tp + self.fp).clamp_min(1)
        recall = self.tp / (self.tp + self.fn).clamp_min(1)
        f = (1 + self.beta2) * precision * recall / (self.beta2 * precision + recall).clamp_min(1e-12)
        return f.max().item()
