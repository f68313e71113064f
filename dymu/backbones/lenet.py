"""A small LeNet-style backbone for 36x36 inputs (MultiMNIST-style benchmarks), cut into 4 blocks."""

from __future__ import annotations

from torch import nn

from .base import BlockBackbone

__all__ = ["lenet"]


def _width(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


def _conv_bn_relu(cin: int, cout: int, kernel: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def lenet(in_channels: int = 1, width_mult: float = 1.0, input_size: tuple[int, int] = (36, 36)) -> BlockBackbone:
    """LeNet-style backbone: 4 conv-BN-ReLU blocks, two of them pooling.

    Cost at 36x36, width 1: 23,664 parameters and 7.0 MFLOPs per image (``FlopCounterMode``, a
    multiply-add counted as 2 FLOPs).

    Shapes at the default 36x36 input and ``width_mult=1``: ``[B, 1, 36, 36]`` ->
    ``[B, 16, 18, 18]`` -> ``[B, 32, 9, 9]`` -> ``[B, 32, 9, 9]`` -> ``[B, 32, 9, 9]``.
    The output keeps its spatial layout so heads can tell where in the image a feature is and dense
    heads can upsample it.
    """
    c1, c2, c3 = _width(16, width_mult), _width(32, width_mult), _width(32, width_mult)
    blocks = [
        _conv_bn_relu(in_channels, c1, 5, pool=True),
        _conv_bn_relu(c1, c2, 3, pool=True),
        _conv_bn_relu(c2, c3, 3, pool=False),
        _conv_bn_relu(c3, c3, 3, pool=False),
    ]
    return BlockBackbone(blocks, in_channels=in_channels, input_size=input_size, width_mult=width_mult, name="lenet")
