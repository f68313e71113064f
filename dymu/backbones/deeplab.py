"""DeepLabv3+-style dense-prediction anchors: a dilated backbone whose last block is an ASPP, and one decoder per task.

- :func:`deeplab_mobilenet_v2`: the BMTAS variant used on PASCAL-Context: MobileNetV2 without its last
  conv, output stride 16, its 17 inverted-residual blocks + a reduced ASPP = 18 branchable blocks.
- :func:`deeplab_resnet34`: ResNet-34 (ImageNet stem), output stride 16 (or 8), its 17 blocks + an
  ASPP = 18 branchable blocks; used on NYU-v2.
- :func:`deeplab_head`: the per-task DeepLabv3+ decoder, ``head(final, low) -> [B, K, H, W]``.

Both backbones set ``skip_layers`` to the block whose output is the stride-4 low-level feature the
decoder reads. Inputs whose sides are multiples of the output stride give exact sizes everywhere;
for other sizes pass ``output_size`` to :func:`deeplab_head`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BlockBackbone
from .mobilenet import make_divisible, mobilenet_v2_blocks
from .resnet import HeadFactory, feature_channels, init_conv_bn, resnet_blocks, scaled_width

__all__ = ["ASPP", "ReducedASPP", "DeepLabDecoder", "deeplab_mobilenet_v2", "deeplab_resnet34", "deeplab_head"]

Shape = tuple[int, ...]

_OUTPUT_STRIDES = (8, 16, 32)
_ASPP_CHANNELS = 256
# DeepLabv3's atrous rates at output stride 16; they scale inversely with the output stride.
_ASPP_RATES_AT_16 = (6, 12, 18)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _ImagePooling(nn.Module):
    """Image-level context: global average pool, 1x1 conv (with bias), ReLU, broadcast back to ``H x W``.

    No BatchNorm here: on a 1x1 map it would fail for a batch of one in training mode.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.relu(self.conv(x.mean(dim=(2, 3), keepdim=True)))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ReducedASPP(nn.Module):
    """The reduced ASPP of MobileNetV2's "Mobile DeepLabv3": ASPP without its 3x3 atrous branches.

    A 1x1 conv-BN-ReLU branch and an image-pooling branch, concatenated and projected by a 1x1
    conv-BN-ReLU: ``[B, in_channels, h, w] -> [B, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int = _ASPP_CHANNELS):
        super().__init__()
        self.local = _conv_bn_relu(in_channels, out_channels)
        self.image = _ImagePooling(in_channels, out_channels)
        self.project = _conv_bn_relu(2 * out_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([self.local(x), self.image(x)], dim=1))


class ASPP(nn.Module):
    """DeepLabv3's atrous spatial pyramid pooling: ``[B, in_channels, h, w] -> [B, out_channels, h, w]``.

    Five parallel branches (a 1x1 conv-BN-ReLU, one 3x3 conv-BN-ReLU per atrous rate, image pooling),
    concatenated and projected by a 1x1 conv-BN-ReLU. No dropout: blocks stay deterministic in training
    mode apart from BatchNorm's batch statistics.
    """

    def __init__(self, in_channels: int, out_channels: int = _ASPP_CHANNELS, rates: Sequence[int] = _ASPP_RATES_AT_16):
        super().__init__()
        branches: list[nn.Module] = [_conv_bn_relu(in_channels, out_channels)]
        branches += [_conv_bn_relu(in_channels, out_channels, 3, dilation=int(r)) for r in rates]
        branches.append(_ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = _conv_bn_relu(len(branches) * out_channels, out_channels)
        self.rates = tuple(int(r) for r in rates)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))

    def extra_repr(self) -> str:
        return f"rates={self.rates}"


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in _OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {_OUTPUT_STRIDES}, got {output_stride}")


def deeplab_mobilenet_v2(
    in_channels: int = 3,
    width_mult: float = 1.0,
    input_size: tuple[int, int] = (512, 512),
    output_stride: int = 16,
) -> BlockBackbone:
    """DeepLabv3+ MobileNetV2 backbone (the BMTAS variant): 17 inverted-residual blocks + a reduced ASPP.

    Args:
        in_channels: channels of the input images.
        width_mult: MobileNetV2's width multiplier (channel rounding of :func:`make_divisible`); the
            ASPP width 256 scales with it too.
        input_size: ``(H, W)`` the backbone is built for.
        output_stride: 16 (default, as BMTAS) dilates the 160- and 320-channel stages instead of
            striding; 8 also dilates the 64- and 96-channel stages; 32 is the plain MobileNetV2.

    Shapes at 512x512, width 1, output stride 16: block 2 (``skip_layers=(2,)``) outputs the stride-4
    low-level feature ``[B, 24, 128, 128]``; block 16 ``[B, 320, 32, 32]``; the ASPP block 17
    ``[B, 256, 32, 32]``.
    """
    _check_output_stride(output_stride)
    blocks = mobilenet_v2_blocks(in_channels, width_mult, last_conv=False, output_stride=output_stride)
    aspp = ReducedASPP(blocks[-1].out_channels, make_divisible(_ASPP_CHANNELS * width_mult))
    init_conv_bn(aspp)
    blocks.append(aspp)
    return BlockBackbone(
        blocks,
        in_channels=in_channels,
        input_size=input_size,
        width_mult=width_mult,
        name="deeplab_mobilenet_v2",
        skip_layers=(2,),
    )


def deeplab_resnet34(
    in_channels: int = 3,
    width_mult: float = 1.0,
    input_size: tuple[int, int] = (288, 384),
    output_stride: int = 16,
) -> BlockBackbone:
    """DeepLabv3+ ResNet-34 backbone: the stem, the 16 BasicBlocks, an ASPP.

    Args:
        in_channels: channels of the input images.
        width_mult: scales the stage widths (64, 128, 256, 512) and the ASPP width 256.
        input_size: ``(H, W)`` the backbone is built for (NYU-v2: 288x384).
        output_stride: 16 (default) keeps layer4 at stride 16, its blocks after the first dilated by 2,
            ASPP rates (6, 12, 18); 8 also keeps layer3 at stride 8 (dilation 2, layer4 dilation 4),
            rates (12, 24, 36), about 4x the compute of layers 3-4; 32 is the plain ResNet-34.

    Shapes at 288x384, width 1, output stride 16: block 3, the end of layer1 (``skip_layers=(3,)``),
    outputs the stride-4 low-level feature ``[B, 64, 72, 96]``; block 16 ``[B, 512, 18, 24]``; the ASPP
    block 17 ``[B, 256, 18, 24]``.
    """
    _check_output_stride(output_stride)
    blocks = resnet_blocks((3, 4, 6, 3), in_channels, width_mult, "imagenet", output_stride=output_stride)
    rates = tuple(r * 16 // output_stride for r in _ASPP_RATES_AT_16)
    aspp = ASPP(scaled_width(512, width_mult), scaled_width(_ASPP_CHANNELS, width_mult), rates)
    init_conv_bn(aspp)
    blocks.append(aspp)
    return BlockBackbone(
        blocks,
        in_channels=in_channels,
        input_size=input_size,
        width_mult=width_mult,
        name="deeplab_resnet34",
        skip_layers=(3,),
    )


class DeepLabDecoder(nn.Module):
    """DeepLabv3+ decoder: ``forward(final [B, C, h, w], low [B, Cl, H/4, W/4]) -> [B, num_outputs, H, W]``.

    The low-level feature is reduced (1x1 conv-BN-ReLU to ``low_channels``), the final feature upsampled
    bilinearly to its size and concatenated with it; ``num_convs`` 3x3 conv-BN-ReLU layers (depthwise
    separable ones with ``separable=True``) refine the result, a 1x1 conv (with bias) predicts
    ``num_outputs`` maps, and a bilinear upsampling brings them to ``output_size`` (default: 4x the
    low-level size, the input size when the input sides are multiples of 4).
    """

    def __init__(
        self,
        in_channels: int,
        low_in_channels: int,
        num_outputs: int,
        *,
        low_channels: int = 48,
        channels: int = 256,
        num_convs: int = 2,
        separable: bool = False,
        output_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.reduce_low = _conv_bn_relu(low_in_channels, low_channels)
        refine: list[nn.Module] = []
        width = in_channels + low_channels
        for _ in range(num_convs):
            if separable:
                refine += [
                    nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    *_conv_bn_relu(width, channels),
                ]
            else:
                refine += [*_conv_bn_relu(width, channels, 3)]
            width = channels
        self.refine = nn.Sequential(*refine)
        self.predict = nn.Conv2d(width, num_outputs, 1)
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        init_conv_bn(self.reduce_low)
        init_conv_bn(self.refine)

    def forward(self, final: Tensor, low: Tensor) -> Tensor:
        low = self.reduce_low(low)
        final = F.interpolate(final, size=low.shape[-2:], mode="bilinear", align_corners=False)
        out = self.predict(self.refine(torch.cat([final, low], dim=1)))
        size = self.output_size or (4 * low.shape[-2], 4 * low.shape[-1])
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def deeplab_head(
    num_outputs: int,
    *,
    low_channels: int = 48,
    channels: int = 256,
    num_convs: int = 2,
    separable: bool = False,
    output_size: tuple[int, int] | None = None,
) -> HeadFactory:
    """Head factory of a per-task DeepLabv3+ decoder (see :class:`DeepLabDecoder`).

    Returns ``factory(out_shape, skip_shapes=[low_shape]) -> DeepLabDecoder``: the backbone must have
    exactly one skip layer (the stride-4 feature), as :func:`deeplab_mobilenet_v2` and
    :func:`deeplab_resnet34` do. ``num_outputs``: classes for segmentation, 1 for depth or saliency,
    3 for surface normals. ``separable=True`` makes the two 3x3 convs depthwise separable (about 8x
    cheaper; suits the MobileNetV2 anchor at 512x512).
    """
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    if low_channels < 1 or channels < 1:
        raise ValueError(f"low_channels and channels must be >= 1, got {low_channels} and {channels}")
    if num_convs < 0:
        raise ValueError(f"num_convs must be >= 0, got {num_convs}")

    def factory(out_shape: Shape, skip_shapes: Sequence[Shape] = ()) -> nn.Module:
        in_channels = feature_channels(out_shape, "deeplab_head")
        if len(skip_shapes) != 1:
            raise ValueError(
                "deeplab_head reads one low-level feature: build it on a backbone with exactly one skip layer "
                f"(got skip shapes {list(skip_shapes)})"
            )
        low_in_channels = feature_channels(skip_shapes[0], "deeplab_head (low-level feature)")
        return DeepLabDecoder(
            in_channels,
            low_in_channels,
            num_outputs,
            low_channels=low_channels,
            channels=channels,
            num_convs=num_convs,
            separable=separable,
            output_size=output_size,
        )

    return factory
