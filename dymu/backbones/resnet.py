"""ResNet-18 and ResNet-34 cut into branchable blocks: the stem, then one block per BasicBlock.

Also the classification head shared by the ImageNet-style backbones (:func:`linear_head`).

Parameter counts at width 1 with ``linear_head(1000)`` (ImageNet stem): ResNet-18 11,689,512,
ResNet-34 21,797,672, the same as the reference architectures of He et al. (2016).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .base import BlockBackbone

__all__ = ["BasicBlock", "GlobalPoolClassifier", "linear_head", "resnet18", "resnet34"]

Shape = tuple[int, ...]
HeadFactory = Callable[..., nn.Module]

_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)
_STEMS = ("imagenet", "cifar")


def scaled_width(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to the nearest integer, at least 1."""
    return max(1, int(round(channels * width_mult)))


def init_conv_bn(module: nn.Module) -> None:
    """He (fan-out) initialisation of every conv, BatchNorm as the identity; suits ReLU nets trained from scratch."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def stage_layout(stage_strides: Sequence[int], stem_stride: int, output_stride: int) -> list[tuple[int, int, int]]:
    """Per stage ``(stride, first_block_dilation, later_blocks_dilation)`` for a target output stride.

    Once the accumulated stride would pass ``output_stride``, a stage keeps the resolution (stride 1)
    and dilates instead: its first block still uses the previous dilation (it replaces the strided
    block), the blocks after it the multiplied one. ``output_stride`` at or above the natural stride
    changes nothing.
    """
    layout = []
    current, dilation = stem_stride, 1
    for stride in stage_strides:
        if stride > 1 and current * stride > output_stride:
            layout.append((1, dilation, dilation * stride))
            dilation *= stride
        else:
            current *= stride
            layout.append((stride, dilation, dilation))
    return layout


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (identity, or 1x1 conv-BN when the shape changes), then ReLU.

    ``[B, in_channels, H, W] -> [B, out_channels, ceil(H / stride), ceil(W / stride)]``.
    ``dilation`` applies to both 3x3 convs (their padding equals it, so dilation keeps the size).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # In-place ReLUs only touch tensors made here: a parent's output may feed several children.
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet_stem(in_channels: int, out_channels: int, stem: str) -> nn.Sequential:
    """``"imagenet"``: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (stride 4). ``"cifar"``: 3x3/1 conv, BN, ReLU (stride 1)."""
    if stem == "imagenet":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    if stem == "cifar":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
    raise ValueError(f"unknown ResNet stem {stem!r}; expected one of {_STEMS}")


def resnet_blocks(
    stage_depths: Sequence[int],
    in_channels: int,
    width_mult: float,
    stem: str = "imagenet",
    output_stride: int = 32,
) -> list[nn.Module]:
    """The stem followed by every BasicBlock of the four stages, as a flat list of modules.

    ``output_stride`` (8, 16 or 32; ImageNet stem) dilates the last stages instead of striding them.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if stem not in _STEMS:
        raise ValueError(f"unknown ResNet stem {stem!r}; expected one of {_STEMS}")
    widths = [scaled_width(c, width_mult) for c in _STAGE_WIDTHS]
    blocks: list[nn.Module] = [resnet_stem(in_channels, widths[0], stem)]
    layout = stage_layout(_STAGE_STRIDES, 4 if stem == "imagenet" else 1, output_stride)
    channels = widths[0]
    for depth, width, (stride, first_dilation, dilation) in zip(stage_depths, widths, layout):
        blocks.append(BasicBlock(channels, width, stride=stride, dilation=first_dilation))
        blocks.extend(BasicBlock(width, width, dilation=dilation) for _ in range(depth - 1))
        channels = width
    for block in blocks:
        init_conv_bn(block)
    return blocks


def _resnet(
    name: str, depths: Sequence[int], in_channels: int, width_mult: float, stem: str, input_size: tuple[int, int] | None
) -> BlockBackbone:
    if input_size is None:
        input_size = (224, 224) if stem == "imagenet" else (32, 32)
    blocks = resnet_blocks(depths, in_channels, width_mult, stem)
    arch = name if stem == "imagenet" else f"{name}_cifar"
    return BlockBackbone(blocks, in_channels=in_channels, input_size=input_size, width_mult=width_mult, name=arch)


def resnet18(
    in_channels: int = 3, width_mult: float = 1.0, stem: str = "imagenet", input_size: tuple[int, int] | None = None
) -> BlockBackbone:
    """ResNet-18 as 9 branchable blocks: the stem, then the 8 BasicBlocks (2 per stage).

    Args:
        in_channels: channels of the input images.
        width_mult: scales every stage width (64, 128, 256, 512), rounded to integers.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool, output stride 32) or ``"cifar"``
            (3x3/1 conv, no pool, output stride 8).
        input_size: ``(H, W)``; default 224x224 for the ImageNet stem, 32x32 for the CIFAR stem.

    Shapes at width 1: ``[B, 3, 224, 224] -> ... -> [B, 512, 7, 7]`` (ImageNet stem);
    ``[B, 3, 32, 32] -> ... -> [B, 512, 4, 4]`` (CIFAR stem). The stem outputs 64 channels at 1/4
    (ImageNet) or full (CIFAR) resolution; each later stage halves the resolution.
    """
    return _resnet("resnet18", (2, 2, 2, 2), in_channels, width_mult, stem, input_size)


def resnet34(
    in_channels: int = 3, width_mult: float = 1.0, stem: str = "imagenet", input_size: tuple[int, int] | None = None
) -> BlockBackbone:
    """ResNet-34 as 17 branchable blocks: the stem, then the 16 BasicBlocks (3, 4, 6, 3 per stage).

    Arguments and shapes as :func:`resnet18`.
    """
    return _resnet("resnet34", (3, 4, 6, 3), in_channels, width_mult, stem, input_size)


class GlobalPoolClassifier(nn.Module):
    """Global pooling, flatten, (dropout), linear, times ``logit_scale``: ``[B, C, H, W] -> [B, num_classes]``.

    Extra positional inputs (the skip features of a backbone with skip layers) are accepted and
    ignored, so the head also works on a DeepLab backbone.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        pool: str = "avg",
        dropout: float = 0.0,
        bias: bool = True,
        logit_scale: float = 1.0,
    ):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_channels, num_classes, bias=bias)
        self.logit_scale = float(logit_scale)

    def forward(self, x: Tensor, *skips: Tensor) -> Tensor:
        logits = self.linear(self.dropout(torch.flatten(self.pool(x), 1)))
        return logits if self.logit_scale == 1.0 else logits * self.logit_scale

    def extra_repr(self) -> str:
        return f"logit_scale={self.logit_scale}"


def feature_channels(out_shape: Sequence[int], who: str) -> int:
    """The channel count of a per-sample ``(C, H, W)`` feature shape; a clear error for anything else."""
    shape = tuple(out_shape)
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"{who} needs a (C, H, W) feature shape, got {shape}")
    return int(shape[0])


def linear_head(num_classes: int, dropout: float = 0.0) -> HeadFactory:
    """Head factory for the ImageNet-style nets: global average pool, flatten, dropout, linear.

    Returns ``factory(out_shape, skip_shapes=()) -> nn.Module`` mapping ``[B, C, H, W]`` to
    ``[B, num_classes]`` logits. MobileNetV2's reference classifier is ``linear_head(1000, dropout=0.2)``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")

    def factory(out_shape: Shape, skip_shapes: Sequence[Shape] = ()) -> nn.Module:
        channels = feature_channels(out_shape, "linear_head")
        return GlobalPoolClassifier(channels, num_classes, pool="avg", dropout=dropout)

    return factory
