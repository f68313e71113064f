"""The "cifar10-fast" ResNet-9-style net (D. Page, "How to train your ResNet", 2018) as 4 branchable blocks.

Every conv is 3x3, stride 1, no bias, followed by BN and ReLU. Blocks:

- ``prep``: conv 64;
- ``layer1``: conv 128, 2x2 max-pool, residual of two convs 128;
- ``layer2``: conv 256, 2x2 max-pool;
- ``layer3``: conv 512, 2x2 max-pool, residual of two convs 512.

The global max pool and the classifier belong to the task heads (:func:`resnet9_head`).
At width 1 the blocks hold 6,568,000 parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import BlockBackbone
from .resnet import GlobalPoolClassifier, HeadFactory, feature_channels, init_conv_bn, scaled_width

__all__ = ["resnet9", "resnet9_head"]

Shape = tuple[int, ...]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """``x + body(x)``, with ``body`` two conv-BN-ReLU layers keeping the shape."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn_relu(channels, channels), _conv_bn_relu(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def resnet9(in_channels: int = 3, width_mult: float = 1.0, input_size: tuple[int, int] = (32, 32)) -> BlockBackbone:
    """The cifar10-fast net's body as 4 blocks ``[prep, layer1, layer2, layer3]``.

    Args:
        in_channels: channels of the input images.
        width_mult: scales the widths 64, 128, 256, 512 (rounded to integers).
        input_size: ``(H, W)``; the three max-pools divide it by 8.

    Shapes at 32x32, width 1: ``[B, 3, 32, 32] -> [B, 64, 32, 32] -> [B, 128, 16, 16] -> [B, 256, 8, 8]
    -> [B, 512, 4, 4]``.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    c0, c1, c2, c3 = (scaled_width(c, width_mult) for c in (64, 128, 256, 512))
    blocks = [
        _conv_bn_relu(in_channels, c0),
        nn.Sequential(_conv_bn_relu(c0, c1), nn.MaxPool2d(2), _Residual(c1)),
        nn.Sequential(_conv_bn_relu(c1, c2), nn.MaxPool2d(2)),
        nn.Sequential(_conv_bn_relu(c2, c3), nn.MaxPool2d(2), _Residual(c3)),
    ]
    for block in blocks:
        init_conv_bn(block)
    return BlockBackbone(blocks, in_channels=in_channels, input_size=input_size, width_mult=width_mult, name="resnet9")


def resnet9_head(num_classes: int, logit_scale: float = 0.125) -> HeadFactory:
    """Head factory of the cifar10-fast net: global max pool, flatten, linear (no bias), times ``logit_scale``.

    Returns ``factory(out_shape, skip_shapes=()) -> nn.Module`` mapping ``[B, C, H, W]`` to
    ``[B, num_classes]``. The default keeps the reference net's 0.125 logit scale: with He-initialised
    features the unscaled logits start large, and shrinking them keeps the initial softmax soft;
    pass ``logit_scale=1.0`` for a plain linear classifier.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")

    def factory(out_shape: Shape, skip_shapes: Sequence[Shape] = ()) -> nn.Module:
        channels = feature_channels(out_shape, "resnet9_head")
        return GlobalPoolClassifier(channels, num_classes, pool="max", bias=False, logit_scale=logit_scale)

    return factory
