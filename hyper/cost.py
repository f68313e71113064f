"""The compute budget as an input of the edge hypernet, and the expected cost of its trees.

Shapes: ``probs [L, N, N]`` are parent-choice probabilities of one request (decision ``l``, row ``j``:
child ``j``'s distribution over the nodes below it, see :class:`hyper.edge.EdgeHypernet`);
``block_flops [L]`` the cost of one block (the same in every stream), ``head_flops`` the heads' total.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .regulariser import usage_probability

__all__ = ["budget_pressure", "expected_cost_fraction"]


def budget_pressure(budget: float | Tensor, min_budget: float) -> float | Tensor:
    """Map a budget in ``[min_budget, 1]`` to the hypernet's resource input ``s`` in ``[0, 1]``.

    ``s = (1 - budget) / (1 - min_budget)``: 0 when the whole anchor fits, 1 at the cheapest tree, so
    ``s`` reads like the paper's resource preference ``c`` (larger: cheaper) and one hypernet input
    serves both modes.

    >>> budget_pressure(1.0, 0.2), budget_pressure(0.2, 0.2), round(budget_pressure(0.6, 0.2), 3)
    (0.0, 1.0, 0.5)
    """
    if not 0 <= min_budget < 1:
        raise ValueError(f"min_budget must lie in [0, 1), got {min_budget}")
    s = (1.0 - budget) / (1.0 - min_budget)
    if isinstance(s, Tensor):
        return s.clamp(0.0, 1.0)
    return min(max(float(s), 0.0), 1.0)


def expected_cost_fraction(probs: Tensor, block_flops: Tensor, head_flops: float, anchor_flops: float) -> Tensor:
    """Expected FLOPs of a tree sampled from ``probs``, as a fraction of the anchor's (heads included).

    A node costs its block's FLOPs when it lies on some task's path; its usage probability comes from
    :func:`hyper.usage_probability` (children choosing independently), so the result is differentiable
    in ``probs``. With one-hot ``probs`` it is exactly the tree's cost.

    >>> probs = torch.eye(3).expand(2, 3, 3)  # every node reads its own stream: the full anchor
    >>> float(expected_cost_fraction(probs, torch.tensor([5.0, 5.0]), 0.0, 30.0))
    1.0
    """
    usage = usage_probability(probs)  # [L, N]
    flops = (usage.sum(dim=1) * block_flops.to(usage)).sum() + head_flops
    return flops / anchor_flops
