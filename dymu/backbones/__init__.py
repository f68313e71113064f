"""Backbones as ordered lists of branchable blocks (see :class:`BlockBackbone`)."""

from .base import BlockBackbone, BlockShape
from .lenet import lenet

__all__ = ["BlockBackbone", "BlockShape", "lenet"]
