"""Backbones as ordered lists of branchable blocks (see :class:`BlockBackbone`).

Classification: :func:`lenet`, :func:`resnet9` (+ :func:`resnet9_head`), :func:`resnet18`,
:func:`resnet34`, :func:`mobilenet_v2` (+ :func:`linear_head`). Dense prediction (DeepLabv3+):
:func:`deeplab_mobilenet_v2`, :func:`deeplab_resnet34` (+ :func:`deeplab_head`).
"""

from ..registry import register_backbone
from .base import BlockBackbone, BlockShape
from .deeplab import deeplab_head
from .deeplab import deeplab_mobilenet_v2 as _deeplab_mobilenet_v2
from .deeplab import deeplab_resnet34 as _deeplab_resnet34
from .lenet import lenet as _lenet
from .mobilenet import mobilenet_v2 as _mobilenet_v2
from .resnet import linear_head
from .resnet import resnet18 as _resnet18
from .resnet import resnet34 as _resnet34
from .resnet9 import resnet9 as _resnet9
from .resnet9 import resnet9_head

# Registered factories stamp each backbone with its recipe, so checkpoints can rebuild it by name.
lenet = register_backbone("lenet", _lenet)
resnet9 = register_backbone("resnet9", _resnet9)
resnet18 = register_backbone("resnet18", _resnet18)
resnet34 = register_backbone("resnet34", _resnet34)
mobilenet_v2 = register_backbone("mobilenet_v2", _mobilenet_v2)
deeplab_mobilenet_v2 = register_backbone("deeplab_mobilenet_v2", _deeplab_mobilenet_v2)
deeplab_resnet34 = register_backbone("deeplab_resnet34", _deeplab_resnet34)

__all__ = [
    "BlockBackbone",
    "BlockShape",
    "deeplab_head",
    "deeplab_mobilenet_v2",
    "deeplab_resnet34",
    "lenet",
    "linear_head",
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet9",
    "resnet9_head",
]
