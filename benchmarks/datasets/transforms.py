"""Machinery shared by the benchmark datasets: joint augmentation, masked losses, the validation split.

Joint augmentation. A dense sample is a dict of tensors whose last two dimensions are the image grid;
every entry has a *kind* that says how it is resampled, padded and flipped:

=========  ==========================  ===========  ==========  =====================================
kind       tensor                      resampling   padding     flip
=========  ==========================  ===========  ==========  =====================================
image      ``[3, H, W]`` float          bilinear     0           mirrored
label      ``[H, W]`` int64 class ids   nearest      ignore 255  mirrored
binary     ``[1, H, W]`` float 0/1      nearest      ignore 255  mirrored
depth      ``[1, H, W]`` float, 0 =     nearest,     0           mirrored
           invalid                      / zoom
normal     ``[3, H, W]`` float, all-0   nearest      0           mirrored, x component (channel 0)
           = invalid                                             negated
=========  ==========================  ===========  ==========  =====================================

Targets are resampled with nearest neighbours so that ignore values, invalid zeros and unit normals
never blend with their neighbours. Images are padded with 0 after normalisation (the mean colour).
Zooming in by a factor ``s`` brings the scene ``s`` times closer, so depth is divided by ``s``.

Losses. :func:`masked_cross_entropy`, :func:`masked_l1_loss`, :func:`normal_cosine_loss` and
:func:`binary_loss` average over the valid elements of the batch only and return an exact zero that
still carries a gradient when nothing is valid (a batch without any person for human parts, a CIFAR
batch without any image of a task), so a training step never sees NaN. Dense predictions whose grid
is smaller than the target's are upsampled bilinearly first; :class:`AtTargetSize` does the same for
metrics.

Validation split. :func:`holdout_split` carves a seeded validation subset out of a training set, so
model selection never looks at the test split (the ``val`` folders of the NYUv2 and PASCAL-Context
copies everybody uses are the test sets of the literature).
"""

from __future__ import annotations

import math

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
    "normalize_image",
    "hflip",
    "resize_sample",
    "crop_sample",
    "fit_and_pad",
    "JointAugment",
    "match_size",
    "masked_cross_entropy",
    "masked_l1_loss",
    "normal_cosine_loss",
    "binary_loss",
    "AtTargetSize",
    "holdout_split",
]

IGNORE_INDEX = 255
"""Ignore value of the dense class maps (``label`` and ``binary`` kinds) of both dense benchmarks."""

# The dense benchmarks' backbones (ResNet-34, MobileNetV2) start from ImageNet weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

KINDS = ("image", "label", "binary", "depth", "normal")
_FILL = {"image": 0.0, "label": IGNORE_INDEX, "binary": float(IGNORE_INDEX), "depth": 0.0, "normal": 0.0}

Sample = dict[str, Tensor]


def normalize_image(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """``[3, H, W]`` float in [0, 1] -> ``(image - mean) / std`` per channel, float32."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (image.float() - m) / s


def _check_kinds(sample: Mapping[str, Tensor], kinds: Mapping[str, str]) -> tuple[int, int]:
    size = None
    for name, tensor in sample.items():
        kind = kinds.get(name)
        if kind not in KINDS:
            raise ValueError(f"sample entry {name!r} has kind {kind!r}; known kinds: {KINDS}")
        if (kind == "label") != (tensor.dim() == 2) or tensor.dim() not in (2, 3):
            expected = "[H, W]" if kind == "label" else "[C, H, W]"
            raise ValueError(f"sample entry {name!r} of kind {kind!r} must be {expected}, got shape {tuple(tensor.shape)}")
        hw = (int(tensor.shape[-2]), int(tensor.shape[-1]))
        if size is None:
            size = hw
        elif hw != size:
            raise ValueError(f"sample entries disagree on the image grid: {name!r} is {hw}, others {size}")
    if size is None:
        raise ValueError("empty sample")
    return size


def hflip(sample: Mapping[str, Tensor], kinds: Mapping[str, str]) -> Sample:
    """Mirror every entry left-right; normals also get their x component negated."""
    _check_kinds(sample, kinds)
    out = {}
    for name, tensor in sample.items():
        flipped = tensor.flip(-1)
        if kinds[name] == "normal":
            flipped = flipped.clone()
            flipped[0] = -flipped[0]
        out[name] = flipped
    return out


def _resize(tensor: Tensor, kind: str, size: tuple[int, int]) -> Tensor:
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    if kind == "image":
        shrinking = size[0] < tensor.shape[-2] or size[1] < tensor.shape[-1]
        return F.interpolate(tensor[None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrinking)[0]
    if kind == "label":
        # Class ids up to 255 are exact in float32.
        return F.interpolate(tensor[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(tensor.dtype)
    return F.interpolate(tensor[None].float(), size=size, mode="nearest-exact")[0]


def resize_sample(sample: Mapping[str, Tensor], kinds: Mapping[str, str], size: tuple[int, int]) -> Sample:
    """Resample every entry to ``size = (H', W')``; depth is divided by the zoom factor ``H' / H``."""
    h, w = _check_kinds(sample, kinds)
    zoom = size[0] / h
    out = {}
    for name, tensor in sample.items():
        resized = _resize(tensor, kinds[name], size)
        if kinds[name] == "depth" and zoom != 1.0:
            resized = resized / zoom
        out[name] = resized
    return out


def _crop_pad(tensor: Tensor, fill: float, top: int, left: int, height: int, width: int) -> Tensor:
    h, w = tensor.shape[-2:]
    if top == 0 and left == 0 and (height, width) == (h, w):
        return tensor
    out = torch.full((*tensor.shape[:-2], height, width), fill, dtype=tensor.dtype)
    y0, y1 = max(top, 0), min(top + height, h)
    x0, x1 = max(left, 0), min(left + width, w)
    if y1 > y0 and x1 > x0:
        out[..., y0 - top : y1 - top, x0 - left : x1 - left] = tensor[..., y0:y1, x0:x1]
    return out


def crop_sample(sample: Mapping[str, Tensor], kinds: Mapping[str, str], top: int, left: int, height: int, width: int) -> Sample:
    """Cut the window ``[top, top + height) x [left, left + width)``; parts outside the grid are padded
    (image 0, class maps 255, depth and normals 0 = invalid). ``top``/``left`` may be negative."""
    _check_kinds(sample, kinds)
    if height < 1 or width < 1:
        raise ValueError(f"crop size must be positive, got {height}x{width}")
    return {name: _crop_pad(t, _FILL[kinds[name]], top, left, height, width) for name, t in sample.items()}


def fit_and_pad(sample: Mapping[str, Tensor], kinds: Mapping[str, str], size: tuple[int, int]) -> Sample:
    """Evaluation-time geometry: shrink (keeping the aspect ratio) only if the sample is larger than
    ``size``, then pad bottom and right to ``size``. Padded target pixels are ignored by every loss and
    metric, so scores on images that fit are computed at their native resolution."""
    h, w = _check_kinds(sample, kinds)
    if h > size[0] or w > size[1]:
        scale = min(size[0] / h, size[1] / w)
        sample = resize_sample(sample, kinds, (max(1, math.floor(h * scale)), max(1, math.floor(w * scale))))
    return crop_sample(sample, kinds, 0, 0, size[0], size[1])


def _zoom_window(
    sample: Mapping[str, Tensor],
    kinds: Mapping[str, str],
    grid: tuple[int, int],
    window: tuple[int, int, int, int],
    out_size: tuple[int, int],
) -> Sample:
    """``crop_sample`` to ``window = (top, left, height, width)`` then ``resize_sample`` to ``out_size``,
    resampling only the part of the window that overlaps the sample (a zoomed-out window is mostly
    padding)."""
    (h, w), (top, left, win_h, win_w), (out_h, out_w) = grid, window, out_size
    zoom_y, zoom_x = out_h / win_h, out_w / win_w
    y0, y1 = max(top, 0), min(top + win_h, h)
    x0, x1 = max(left, 0), min(left + win_w, w)
    dy0, dy1 = round((y0 - top) * zoom_y), min(out_h, round((y1 - top) * zoom_y))
    dx0, dx1 = round((x0 - left) * zoom_x), min(out_w, round((x1 - left) * zoom_x))
    out = {}
    for name, tensor in sample.items():
        kind = kinds[name]
        dtype = torch.float32 if kind != "label" else tensor.dtype
        canvas = torch.full((*tensor.shape[:-2], out_h, out_w), _FILL[kind], dtype=dtype)
        if dy1 > dy0 and dx1 > dx0:
            region = _resize(tensor[..., y0:y1, x0:x1], kind, (dy1 - dy0, dx1 - dx0))
            if kind == "depth":
                region = region / zoom_y
            canvas[..., dy0:dy1, dx0:dx1] = region
        out[name] = canvas
    return out


class JointAugment:
    """Random scale, crop (with padding) and horizontal flip, applied identically to all entries.

    Args:
        kinds: entry name -> kind (see the module docstring).
        output_size: ``(H, W)`` of the result; ``None`` keeps each sample's own size.
        scale_range: the zoom factor ``s ~ U(low, high)``: the result shows a window of
            ``output_size / s`` source pixels (``s > 1`` zooms in; a window larger than the sample
            is padded).
        flip_prob: probability of a horizontal flip.

    ``__call__(sample, generator=None)`` draws from ``generator`` or torch's global generator (which
    ``DataLoader`` seeds differently in every worker).
    """

    def __init__(
        self,
        kinds: Mapping[str, str],
        output_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (1.0, 1.0),
        flip_prob: float = 0.5,
    ):
        for name, kind in kinds.items():
            if kind not in KINDS:
                raise ValueError(f"entry {name!r} has kind {kind!r}; known kinds: {KINDS}")
        low, high = float(scale_range[0]), float(scale_range[1])
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        if output_size is not None and (output_size[0] < 1 or output_size[1] < 1):
            raise ValueError(f"output_size must be positive, got {output_size}")
        self.kinds = dict(kinds)
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        self.scale_range = (low, high)
        self.flip_prob = float(flip_prob)

    def __call__(self, sample: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Sample:
        h, w = _check_kinds(sample, self.kinds)
        out_h, out_w = self.output_size or (h, w)
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand((), generator=generator))
        win_h, win_w = max(1, round(out_h / scale)), max(1, round(out_w / scale))
        top = self._offset(h, win_h, generator)
        left = self._offset(w, win_w, generator)
        result = _zoom_window(sample, self.kinds, (h, w), (top, left, win_h, win_w), (out_h, out_w))
        if float(torch.rand((), generator=generator)) < self.flip_prob:
            result = hflip(result, self.kinds)
        return result

    @staticmethod
    def _offset(extent: int, window: int, generator: torch.Generator | None) -> int:
        # A window larger than the sample gets a negative offset: the sample lands at a random place in it.
        slack = abs(extent - window)
        shift = int(torch.randint(0, slack + 1, (), generator=generator))
        return shift if extent >= window else -shift

    def __repr__(self) -> str:
        return f"JointAugment(output_size={self.output_size}, scale_range={self.scale_range}, flip_prob={self.flip_prob})"


def match_size(pred: Tensor, target: Tensor) -> Tensor:
    """Upsample a dense prediction ``[B, C, h, w]`` bilinearly to the target's grid; else return it as is."""
    if pred.dim() == 4 and target.dim() >= 3 and tuple(pred.shape[-2:]) != tuple(target.shape[-2:]):
        return F.interpolate(pred, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
    return pred


def masked_cross_entropy(pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy averaged over the targets that are not ``ignore_index``.

    ``pred [B, K]`` with ``target [B]``, or ``pred [B, K, h, w]`` with ``target [B, H, W]``. Returns an
    exact zero with a gradient when every target is ignored.
    """
    pred = match_size(pred, target)
    target = target.long()
    total = F.cross_entropy(pred, target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp_min(1)


def masked_l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean ``|pred - target|`` over valid pixels (``target > 0``; depth 0 = no measurement).

    ``pred`` and ``target`` ``[B, 1, H, W]`` (``pred`` may be on a coarser grid).
    """
    pred = match_size(pred, target)
    valid = target > 0
    diff = torch.where(valid, (pred - target).abs(), torch.zeros_like(pred))
    return diff.sum() / valid.sum().clamp_min(1)


def normal_cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean ``1 - cos(pred, target)`` over pixels whose target normal is non-zero.

    ``pred`` and ``target`` ``[B, 3, H, W]``; ``pred`` is normalised here, so its length is free. It is
    the loss whose minimiser is the angle metric's (MTAN uses the same).
    """
    pred = match_size(pred, target)
    valid = target.norm(dim=1) > 0
    cos = (F.normalize(pred, dim=1, eps=1e-6) * F.normalize(target, dim=1, eps=1e-6)).sum(1)
    loss = torch.where(valid, 1.0 - cos, torch.zeros_like(cos))
    return loss.sum() / valid.sum().clamp_min(1)


def binary_loss(pred: Tensor, target: Tensor, positive_weight: float | None = None, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Binary cross-entropy of logits ``[B, 1, H, W]`` against ``{0, 1}`` targets ``[B, 1, H, W]``.

    Pixels equal to ``ignore_index`` are skipped. With ``positive_weight = w`` positives are weighted
    ``w`` and negatives ``1 - w`` (the class-balanced loss of edge detection, where positives are rare);
    the weighted sum is divided by the number of valid pixels.
    """
    pred = match_size(pred, target)
    valid = target != ignore_index
    truth = torch.where(valid, target, torch.zeros_like(target)).to(pred.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(pred, truth, reduction="none")
    if positive_weight is not None:
        if not 0.0 < positive_weight < 1.0:
            raise ValueError(f"positive_weight must lie in (0, 1), got {positive_weight}")
        per_pixel = per_pixel * torch.where(truth > 0.5, positive_weight, 1.0 - positive_weight)
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return per_pixel.sum() / valid.sum().clamp_min(1)


class AtTargetSize:
    """Wrap a stateful metric so that dense predictions are upsampled to the target grid first."""

    def __init__(self, metric):
        for method in ("reset", "update", "compute"):
            if not callable(getattr(metric, method, None)):
                raise ValueError(f"{type(metric).__name__} is not a stateful metric (no {method}())")
        self.metric = metric

    def reset(self) -> None:
        self.metric.reset()

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.metric.update(match_size(pred, target), target)

    def compute(self) -> float:
        return self.metric.compute()

    def __repr__(self) -> str:
        return f"AtTargetSize({type(self.metric).__name__})"


def _holdout_count(n: int, fraction: float) -> int:
    if fraction == 0.0 or n < 2:
        return 0
    # At least one held-out and one kept item, so tiny fixtures still have both splits.
    return min(n - 1, max(1, math.floor(fraction * n + 0.5)))


def holdout_split(n: int, val_fraction: float, seed: int, groups: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (kept, held-out) sorted index arrays.

    Each group (default: one group) gives ``round(val_fraction * size)`` items to the held-out part,
    at least one when the group has two or more items and ``val_fraction > 0``. The result depends only
    on ``n``, ``groups``, ``val_fraction`` and ``seed``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    labels = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups must have {n} entries, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    held = []
    for group in np.unique(labels):
        members = np.flatnonzero(labels == group)
        held.append(rng.permutation(members)[: _holdout_count(len(members), val_fraction)])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(n), held_out)
    return kept, held_out
