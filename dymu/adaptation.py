"""How the weight hypernet's output changes a tree: one BatchNorm layout, one delta function.

The weight hypernet predicts, per node, deltas of the BatchNorm affine parameters and, per head, a
per-channel scale and shift of the features the head reads. Training applies them functionally
(gradients reach the hypernet) and :func:`dymu.derived.derive_model` writes them into the copied
blocks; both go through :func:`adapted_parameters` and :func:`adapt_head_input`, so the two cannot
disagree.

[choice] Only nodes that sharing touches are adapted (:func:`adapted_nodes`): a node that serves only
its own stream's task along a path inside its own stream computes exactly what the anchor trained it
for. The unshared tree is therefore exactly the anchor, whatever the hypernet outputs, and a larger
budget cannot be made worse by adaptations meant for smaller ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Adaptation", "BatchNormLayout", "AdaptedHead", "adapted_parameters", "adapt_head_input", "adapted_nodes", "write_adaptations"]

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(block: nn.Module) -> list[tuple[str, BatchNorm]]:
    """The affine BatchNorm layers of a block, in registration order, with their qualified names."""
    return [(name, m) for name, m in block.named_modules() if isinstance(m, BatchNorm) and m.affine]


@dataclass(frozen=True)
class BatchNormLayout:
    """The affine BatchNorm layers of every block of a backbone (the same in every stream).

    Attributes:
        names: ``names[l]``: qualified names of block ``l``'s BatchNorm layers, in order.
        channels: ``channels[l]``: their channel counts.
    """

    names: tuple[tuple[str, ...], ...]
    channels: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, blocks: Sequence[nn.Module]) -> BatchNormLayout:
        layers = [batchnorm_layers(block) for block in blocks]
        return cls(
            tuple(tuple(name for name, _ in layer) for layer in layers),
            tuple(tuple(int(m.num_features) for _, m in layer) for layer in layers),
        )

    @property
    def n_layers(self) -> int:
        return len(self.names)

    def packed_size(self, layer: int) -> int:
        """Deltas per node of ``layer``: ``[dgamma_1, dbeta_1, dgamma_2, ...]``."""
        return 2 * sum(self.channels[layer])


def adapted_parameters(
    block: nn.Module, layout: BatchNormLayout, layer: int, deltas: Sequence[tuple[Tensor, Tensor]]
) -> dict[str, Tensor]:
    """``{name: gamma + dgamma or beta + dbeta}`` for every BatchNorm of block ``layer``.

    ``deltas``: one ``(dgamma [C], dbeta [C])`` pair per BatchNorm layer of the layout.

    Raises:
        ValueError: when the number of pairs or a channel count differs from the layout.
    """
    names = layout.names[layer]
    if len(deltas) != len(names):
        raise ValueError(f"block {layer} has {len(names)} BatchNorm layers {list(names)}, got {len(deltas)} delta pairs")
    modules = dict(block.named_modules())
    params: dict[str, Tensor] = {}
    for name, channels, (dgamma, dbeta) in zip(names, layout.channels[layer], deltas):
        if dgamma.shape[-1] != channels or dbeta.shape[-1] != channels:
            raise ValueError(f"block {layer} BatchNorm {name!r} has {channels} channels, got deltas of {dgamma.shape[-1]}")
        bn = modules[name]
        prefix = f"{name}." if name else ""
        params[prefix + "weight"] = bn.weight + dgamma
        params[prefix + "bias"] = bn.bias + dbeta
    return params


def adapt_head_input(x: Tensor, packed: Tensor) -> Tensor:
    """``x * (1 + dscale) + dshift`` per channel: ``x [B, C, ...]``, ``packed [2 * C]``.

    >>> adapt_head_input(torch.ones(1, 2, 3), torch.tensor([1.0, 0.0, 0.5, 0.0]))[0, :, 0].tolist()
    [2.5, 1.0]
    """
    channels = x.shape[1]
    if packed.shape[-1] != 2 * channels:
        raise ValueError(f"a head adaptation for {channels} channels packs {2 * channels} values, got {packed.shape[-1]}")
    shape = (1, channels) + (1,) * (x.dim() - 2)
    return x * (1 + packed[:channels].view(shape)) + packed[channels:].view(shape)


class AdaptedHead(nn.Module):
    """A task head that reads adapted features: ``head(adapt_head_input(x, packed), *skips)``."""

    def __init__(self, head: nn.Module, packed: Tensor):
        super().__init__()
        self.head = head
        self.register_buffer("packed", packed.detach().clone())

    def forward(self, x: Tensor, *skips: Tensor) -> Tensor:
        return self.head(adapt_head_input(x, self.packed), *skips)


def adapted_nodes(assignment: Sequence[Sequence[int]], scope: str = "shared") -> tuple[list[list[bool]], list[bool]]:
    """Which nodes and heads of a tree the weight hypernet adapts.

    ``assignment[l][k]``: task ``k``'s node at layer ``l``. Returns ``nodes[l][i]`` (block ``l`` of
    stream ``i``) and ``heads[k]``. ``scope="shared"``: a node is adapted when it serves a task other
    than its stream's, reads a parent in another stream, or reads an adapted parent; a head when its
    last node is another stream's or adapted. Nodes whose path and tasks stay inside their own
    stream keep the anchor's weights. ``scope="all"``: every used node and every head (the paper).

    >>> adapted_nodes([[0, 0, 2], [0, 1, 2]])  # task 1 shares stream 0's first block
    ([[True, False, False], [True, True, False]], [True, True, False])
    >>> adapted_nodes([[0, 1], [0, 1]])  # the unshared tree: nothing is adapted
    ([[False, False], [False, False]], [False, False])
    """
    if scope not in ("shared", "all"):
        raise ValueError(f"scope must be 'shared' or 'all', got {scope!r}")
    n_layers, n_tasks = len(assignment), len(assignment[0])
    if scope == "all":
        used = [[i in set(row) for i in range(n_tasks)] for row in assignment]
        return used, [True] * n_tasks
    nodes = [[False] * n_tasks for _ in range(n_layers)]
    for layer in range(n_layers):
        for k in range(n_tasks):
            node = assignment[layer][k]
            touched = node != k
            if layer > 0:
                parent = assignment[layer - 1][k]
                touched = touched or parent != node or nodes[layer - 1][parent]
            if touched:
                nodes[layer][node] = True
    last = assignment[-1]
    heads = [last[k] != k or nodes[-1][last[k]] for k in range(n_tasks)]
    return nodes, heads


class Adaptation:
    """The weight hypernet's output for one request and tree, as lookups by node and by head.

    Args:
        weight: the weight hypernet (for unpacking).
        node_deltas: per layer ``[1, N, D_l]`` or ``[N, D_l]`` packed deltas; None: no adaptation.
        head_deltas: ``[1, N, 2 * C]`` or ``[N, 2 * C]``, or None.
        assignment: the tree; ``scope`` as in :func:`adapted_nodes`.
    """

    def __init__(self, weight, node_deltas, head_deltas, assignment: Sequence[Sequence[int]], scope: str = "shared"):
        self.weight = weight
        self.node_deltas = None if node_deltas is None else [d[0] if d.dim() == 3 else d for d in node_deltas]
        self.head_deltas = None if head_deltas is None else (head_deltas[0] if head_deltas.dim() == 3 else head_deltas)
        self.node_mask, self.head_mask = adapted_nodes(assignment, scope)

    def node(self, layer: int, node: int) -> list[tuple[Tensor, Tensor]] | None:
        """``[(dgamma [C], dbeta [C]), ...]`` for node ``(layer, node)``, or None for the anchor's own."""
        if self.node_deltas is None or not self.node_mask[layer][node]:
            return None
        return self.weight.split(layer, self.node_deltas[layer][node])

    def head(self, task: int) -> Tensor | None:
        """Task ``task``'s head adaptation ``[2 * C]``, or None."""
        if self.head_deltas is None or not self.head_mask[task]:
            return None
        return self.head_deltas[task]


@torch.no_grad()
def write_adaptations(block: nn.Module, layout: BatchNormLayout, layer: int, deltas) -> None:
    """Write ``adapted_parameters`` into ``block``'s own BatchNorm parameters (a copy, at build time)."""
    for name, value in adapted_parameters(block, layout, layer, deltas).items():
        block.get_parameter(name).copy_(value)
