"""The backbone contract: an ordered list of branchable blocks.

Any ``nn.Module`` that can be cut into a sequence of blocks, each mapping the previous block's output
to its own, works as a dymu backbone: wrap the blocks in :class:`BlockBackbone`. The controller never
looks inside a block; it only chains blocks, so the hypernetworks need no per-architecture wiring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["BlockBackbone", "BlockShape"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BlockShape:
    """Input and output shape of one block for one sample, e.g. ``(C, H, W)``."""

    input: Shape
    output: Shape


class BlockBackbone(nn.Module):
    """A backbone made of an ordered list of branchable blocks.

    Args:
        blocks: the blocks in order; block ``l`` maps ``[B, *shape_{l}]`` to ``[B, *shape_{l+1}]``.
            The first block includes any stem.
        in_channels: channels of the input images.
        input_size: ``(H, W)`` of the inputs the backbone is built for (shapes and FLOPs refer to it).
        width_mult: the width multiplier the blocks were built with.
        name: a short architecture name, stored in checkpoints.
        skip_layers: indices of blocks whose outputs the task heads also read (a DeepLabv3+ decoder
            reads a low-level feature); heads are then called ``head(last, *skips)``.

    ``forward(x)`` maps ``[B, in_channels, H, W]`` to the last block's output ``[B, C, H', W']``.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        *,
        in_channels: int,
        input_size: tuple[int, int],
        width_mult: float = 1.0,
        name: str = "custom",
        skip_layers: Sequence[int] = (),
    ):
        super().__init__()
        if len(blocks) == 0:
            raise ValueError("a backbone needs at least one block")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        self.blocks = nn.ModuleList(blocks)
        self.in_channels = int(in_channels)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.width_mult = float(width_mult)
        self.arch = name
        skip_layers = tuple(int(s) for s in skip_layers)
        for s in skip_layers:
            if not 0 <= s < len(blocks) - 1:
                raise ValueError(f"skip layer {s} must index a block before the last (0..{len(blocks) - 2})")
        self.skip_layers = skip_layers
        self._shape_cache: dict[tuple[int, int], list[BlockShape]] = {}

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def features(self, x: Tensor) -> list[Tensor]:
        """Every block's output, in order: ``L`` tensors ``[B, *shape_l]``."""
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def block_shapes(self, input_size: tuple[int, int] | None = None) -> list[BlockShape]:
        """Per-sample input and output shape of every block at ``input_size`` (default: the built one)."""
        size = tuple(input_size or self.input_size)
        if size not in self._shape_cache:
            param = next(self.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad():
                    x = torch.zeros(2, self.in_channels, *size, device=device)
                    shapes = []
                    for block in self.blocks:
                        y = block(x)
                        shapes.append(BlockShape(tuple(x.shape[1:]), tuple(y.shape[1:])))
                        x = y
            finally:
                self.train(was_training)
            self._shape_cache[size] = shapes
        return list(self._shape_cache[size])

    @property
    def out_shape(self) -> Shape:
        """Per-sample output shape ``(C, H, W)`` at the built input size."""
        return self.block_shapes()[-1].output

    @property
    def skip_shapes(self) -> list[Shape]:
        shapes = self.block_shapes()
        return [shapes[s].output for s in self.skip_layers]

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, blocks={self.n_blocks}, in_channels={self.in_channels}, input_size={self.input_size}, width_mult={self.width_mult}"
