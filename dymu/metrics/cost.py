"""Compute cost: FLOPs and parameter counts of modules, and a per-block cost table.

FLOPs come from torch's own ``torch.utils.flop_counter.FlopCounterMode``, which counts the
matrix products and convolutions (``mm``, ``addmm``, ``bmm``, convolutions, attention) and counts a
multiply-add as 2 FLOPs. Elementwise operations (activations, additions), biases, pooling,
normalisation (BatchNorm) and interpolation are not counted; for conv nets they are a small share.
Other counters (fvcore, thop, ptflops) disagree with each other and with this one, so compare FLOPs
only between numbers counted here.

The per-block table lets the controller cost a tree without running it: a tree's cost is the sum of
the table entries of the nodes it uses (each shared node counted once) plus its heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["BlockCost", "count_flops", "count_params", "block_cost_table"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BlockCost:
    """Cost of one block for one sample (batch 1) at a given input shape.

    Attributes:
        index: the block's position in the list it came from.
        input_shape: the per-sample input shape the cost refers to, e.g. ``(C, H, W)``.
        output_shape: the per-sample output shape at that input.
        flops: FLOPs of one forward pass on one sample (multiply-add = 2).
        params: parameters of the block (shared parameters counted once).
    """

    index: int
    input_shape: Shape
    output_shape: Shape
    flops: int
    params: int


def count_flops(module: nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """FLOPs of ``module(*inputs, **kwargs)`` for the whole batch given (multiply-add = 2 FLOPs).

    Runs one forward pass in eval mode under ``torch.no_grad()`` (so BatchNorm uses its running
    statistics and dropout is off) and afterwards restores the train/eval mode of every submodule.
    Counts convolutions and matrix products only: see the module docstring. Conv and matmul FLOPs
    scale linearly with the batch size, so divide by it for a per-sample figure.

    Example:
        >>> conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        >>> count_flops(conv, torch.zeros(1, 3, 10, 10)) == 2 * (8 * 10 * 10) * (3 * 3 * 3)
        True
    """
    return _flops_and_output(module, *inputs, **kwargs)[0]


def _flops_and_output(module: nn.Module, *inputs: Any, **kwargs: Any) -> tuple[int, Any]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            output = module(*inputs, **kwargs)
    finally:
        for m, training in modes:
            m.training = training
    return int(counter.get_total_flops()), output


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (buffers such as BN running statistics are not counted).

    A parameter shared by several submodules is counted once. ``trainable_only`` keeps only those
    with ``requires_grad``.

    Example:
        >>> count_params(nn.Linear(4, 3))  # 4 * 3 weights + 3 biases
        15
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _example_input(block: nn.Module, shape: Shape) -> torch.Tensor:
    """A zero batch of one sample on the block's device, in its floating dtype (float32 if it has none)."""
    tensors = [*block.parameters(), *block.buffers()]
    floating = next((t for t in tensors if t.is_floating_point()), None)
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = floating.dtype if floating is not None else torch.float32
    return torch.zeros(1, *shape, device=device, dtype=dtype)


def block_cost_table(blocks: Sequence[nn.Module], input_shapes: Sequence[Sequence[int]]) -> list[BlockCost]:
    """Cost of every block at its per-sample input shape: one :class:`BlockCost` per block.

    Each block is run once on a zero batch ``[1, *input_shapes[l]]`` (in eval mode, no grad), so the
    FLOPs are per sample. For a chain of blocks, ``sum(c.flops for c in table)`` equals
    ``count_flops`` of the whole chain on one sample. With a :class:`~dymu.backbones.base.BlockBackbone`:
    ``block_cost_table(backbone.blocks, [s.input for s in backbone.block_shapes()])``.

    Args:
        blocks: the blocks, in any order (an ``nn.ModuleList`` works).
        input_shapes: one per-sample input shape per block, without the batch dimension.

    Raises:
        ValueError: the lengths differ, a shape has a non-positive size, or a block fails on its
            shape or returns something other than a tensor (the block's index and shape are named).
    """
    blocks = list(blocks)
    shapes = [tuple(int(d) for d in shape) for shape in input_shapes]
    if len(blocks) != len(shapes):
        raise ValueError(f"block_cost_table: {len(blocks)} blocks but {len(shapes)} input shapes")
    table = []
    for index, (block, shape) in enumerate(zip(blocks, shapes)):
        if any(d < 1 for d in shape):
            raise ValueError(f"block {index}: input shape {shape} has a non-positive size")
        x = _example_input(block, shape)
        try:
            flops, out = _flops_and_output(block, x)
        except RuntimeError as err:
            raise ValueError(f"block {index} ({type(block).__name__}) fails on input shape {shape}: {err}") from err
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"block {index} ({type(block).__name__}) returned {type(out).__name__}, not a tensor")
        out_shape = tuple(out.shape[1:])
        table.append(BlockCost(index, shape, out_shape, flops, count_params(block)))
    return table
