"""The weight hypernetwork ``hbar(r, c)``: preferences and budget to per-channel BatchNorm deltas."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .embedding import PreferenceEmbedding, mlp

__all__ = ["WeightHypernet"]


class WeightHypernet(nn.Module):
    """Maps ``(r [B, N], c [B])`` to BatchNorm deltas for every node ``(l, i)`` of the anchor.

    Args:
        n_tasks: N.
        node_channels: ``node_channels[l]`` lists the channel counts of the BatchNorm layers inside
            block ``l`` (the same for every stream).
        embed_dim, hidden, depth: the MLP (paper: 32, 100, 3 hidden layers).

    ``forward(r, c)`` returns, per layer ``l``, deltas ``[B, N, D_l]`` packed per node as
    ``[dgamma_1, dbeta_1, dgamma_2, dbeta_2, ...]`` (``D_l = 2 * sum(node_channels[l])``);
    :meth:`split` unpacks one node's slice into per-BatchNorm ``(dgamma, dbeta)`` pairs. One linear head
    per node; heads are zero-initialised so training starts from the anchor's own BatchNorm.
    """

    def __init__(
        self,
        n_tasks: int,
        node_channels: Sequence[Sequence[int]],
        embed_dim: int = 32,
        hidden: int = 100,
        depth: int = 3,
    ):
        super().__init__()
        self.n_tasks = n_tasks
        self.node_channels = [list(map(int, chans)) for chans in node_channels]
        self.node_sizes = [2 * sum(chans) for chans in self.node_channels]
        self.embedding = PreferenceEmbedding(n_tasks, embed_dim)
        self.body = mlp(embed_dim, hidden, depth)
        self.heads = nn.ModuleList(
            nn.Linear(hidden, size * n_tasks) for size in self.node_sizes
        )
        with torch.no_grad():
            for head in self.heads:
                head.weight.zero_()
                head.bias.zero_()

    @property
    def n_layers(self) -> int:
        return len(self.node_channels)

    def forward(self, r: Tensor, c: Tensor, layers: Sequence[int] | None = None) -> list[Tensor]:
        """Per layer ``l``, deltas ``[B, N, D_l]`` (``layers`` restricts which heads run; others are None)."""
        hidden = self.body(self.embedding(r, c))
        wanted = range(self.n_layers) if layers is None else set(layers)
        return [
            self.heads[l](hidden).view(-1, self.n_tasks, self.node_sizes[l]) if l in wanted else None
            for l in range(self.n_layers)
        ]

    def split(self, layer: int, node_deltas: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Unpack one node's deltas ``[..., D_l]`` into ``[(dgamma [..., C_1], dbeta [..., C_1]), ...]``."""
        out, offset = [], 0
        for channels in self.node_channels[layer]:
            dgamma = node_deltas[..., offset : offset + channels]
            dbeta = node_deltas[..., offset + channels : offset + 2 * channels]
            out.append((dgamma, dbeta))
            offset += 2 * channels
        return out
