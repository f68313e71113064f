"""MobileNetV2 (Sandler et al., 2018) cut into its 17 inverted-residual blocks.

The first 3x3/2 conv is folded into block 0 and, with ``last_conv=True``, the final 1x1 conv to
1280 channels into block 16, so every block maps the previous block's output to its own.
Parameter count at width 1 with ``last_conv=True`` and ``linear_head(1000, dropout=0.2)``:
3,504,872, the same as the reference architecture.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from .base import BlockBackbone
from .resnet import init_conv_bn

__all__ = ["InvertedResidual", "make_divisible", "mobilenet_v2"]

# (expansion t, output channels c, repeats n, stride of the first repeat s), from the paper's Table 2.
_INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``divisor`` nor more than 10% below ``value``.

    The usual channel rounding of MobileNets under a width multiplier (hardware prefers multiples of 8).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when ``expand_ratio == 1``), 3x3 depthwise, linear 1x1 projection; each with BN.

    ``[B, in_channels, H, W] -> [B, out_channels, ceil(H / stride), ceil(W / stride)]``; the input is
    added back when the shape is unchanged. ``dilation`` dilates the depthwise conv (size kept).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, dilation: int = 1):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"an inverted residual block has stride 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=dilation, dilation=dilation, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out

    def extra_repr(self) -> str:
        return f"residual={self.use_residual}"


def mobilenet_v2_blocks(
    in_channels: int, width_mult: float, last_conv: bool, output_stride: int = 32
) -> list[nn.Module]:
    """The 17 blocks of MobileNetV2 (stem in block 0, the optional last 1x1 conv in block 16).

    ``output_stride`` (8, 16 or 32) replaces the strides that would pass it by dilation: the block
    that would have strided keeps the previous dilation, the blocks after it use the multiplied one.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    channels = make_divisible(_STEM_CHANNELS * width_mult)
    stem = conv_bn_relu6(in_channels, channels, 3, stride=2)
    current_stride, dilation = 2, 1
    blocks: list[nn.Module] = []
    for expand, base_channels, repeats, first_stride in _INVERTED_RESIDUAL_SETTINGS:
        out_channels = make_divisible(base_channels * width_mult)
        for i in range(repeats):
            stride, block_dilation = (first_stride if i == 0 else 1), dilation
            if stride > 1 and current_stride * stride > output_stride:
                dilation *= stride
                stride = 1
            elif stride > 1:
                current_stride *= stride
            blocks.append(InvertedResidual(channels, out_channels, stride, expand, dilation=block_dilation))
            channels = out_channels
    blocks[0] = nn.Sequential(OrderedDict(stem=stem, block=blocks[0]))
    if last_conv:
        # Wider nets widen the last conv too; narrower ones keep 1280 (as in the paper).
        last = make_divisible(_LAST_CHANNELS * max(1.0, width_mult))
        blocks[-1] = nn.Sequential(OrderedDict(block=blocks[-1], last_conv=conv_bn_relu6(channels, last, 1)))
    for block in blocks:
        init_conv_bn(block)
    return blocks


def mobilenet_v2(
    in_channels: int = 3, width_mult: float = 1.0, input_size: tuple[int, int] = (224, 224), last_conv: bool = True
) -> BlockBackbone:
    """MobileNetV2 as 17 branchable blocks (output stride 32).

    Args:
        in_channels: channels of the input images.
        width_mult: scales every width, rounded by :func:`make_divisible`; the last conv never shrinks below 1280.
        input_size: ``(H, W)`` the backbone is built for.
        last_conv: fold the final 1x1 conv-BN-ReLU6 to 1280 channels into the last block.

    Block output channels at width 1: 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160,
    160, 320 (1280 with ``last_conv``); blocks 0, 1, 3, 6 and 13 halve the resolution, so
    ``[B, 3, 224, 224] -> [B, 1280, 7, 7]``.
    """
    blocks = mobilenet_v2_blocks(in_channels, width_mult, last_conv)
    name = "mobilenet_v2" if last_conv else "mobilenet_v2_no_last_conv"
    return BlockBackbone(blocks, in_channels=in_channels, input_size=input_size, width_mult=width_mult, name=name)
