"""The weight hypernetwork ``hbar(r, c, tree)``: a request and its tree to BatchNorm and head adaptations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .embedding import PreferenceEmbedding, mlp

__all__ = ["WeightHypernet", "tree_code"]


def tree_code(assignment: Sequence[Sequence[int]], n_tasks: int) -> Tensor:
    """Encode a tree for the hypernet: ``[L * N * N]``, the one-hot node of every (layer, task).

    ``assignment[l][k]`` is task ``k``'s node at layer ``l``; two trees get the same code only when
    they are the same tree.

    >>> tree_code([[0, 0], [0, 1]], 2).tolist()
    [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    """
    index = torch.as_tensor(assignment, dtype=torch.long)
    return torch.nn.functional.one_hot(index, n_tasks).float().flatten()


class WeightHypernet(nn.Module):
    """Maps ``(r [B, N], c [B])`` and a tree code ``[B, L*N*N]`` to BatchNorm deltas for every node and
    input adaptations for every head.

    Args:
        n_tasks: N.
        node_channels: ``node_channels[l]`` lists the channel counts of the BatchNorm layers inside
            block ``l`` (the same for every stream); see :class:`dymu.adaptation.BatchNormLayout`.
        embed_dim, hidden, depth: the MLP (paper: 32, 100, 3 hidden layers).
        head_channels: channels of the features a head reads (0: heads are not adapted).
        n_layers_tree: layers of the tree code (0: the hypernet does not see the tree, as in the paper).

    :meth:`forward` returns, per layer ``l``, deltas ``[B, N, D_l]`` packed per node as
    ``[dgamma_1, dbeta_1, dgamma_2, dbeta_2, ...]`` (``D_l = 2 * sum(node_channels[l])``), and head
    adaptations ``[B, N, 2 * head_channels]`` packed ``[dscale, dshift]``; :meth:`split` unpacks a
    node's slice. [choice] The tree enters additively into the preference embedding through a linear
    map, so the same request gets different adaptations on different trees (a merged fallback tree
    is not the tree the request's deltas were learned on). All output layers start at zero, so
    training starts from the anchor.
    """

    def __init__(
        self,
        n_tasks: int,
        node_channels: Sequence[Sequence[int]],
        embed_dim: int = 32,
        hidden: int = 100,
        depth: int = 3,
        head_channels: int = 0,
        n_layers_tree: int = 0,
    ):
        super().__init__()
        self.n_tasks = n_tasks
        self.node_channels = [list(map(int, chans)) for chans in node_channels]
        self.node_sizes = [2 * sum(chans) for chans in self.node_channels]
        self.head_channels = int(head_channels)
        self.n_layers_tree = int(n_layers_tree)
        self.embedding = PreferenceEmbedding(n_tasks, embed_dim)
        self.tree_embedding = (
            nn.Linear(n_layers_tree * n_tasks * n_tasks, embed_dim, bias=False) if n_layers_tree else None
        )
        self.body = mlp(embed_dim, hidden, depth)
        self.heads = nn.ModuleList(nn.Linear(hidden, size * n_tasks) for size in self.node_sizes)
        self.head_adaptor = nn.Linear(hidden, 2 * self.head_channels * n_tasks) if self.head_channels else None
        with torch.no_grad():
            for out in [*self.heads, *([self.head_adaptor] if self.head_adaptor is not None else [])]:
                out.weight.zero_()
                out.bias.zero_()

    @property
    def n_layers(self) -> int:
        return len(self.node_channels)

    def _hidden(self, r: Tensor, c: Tensor, code: Tensor | None) -> Tensor:
        embedded = self.embedding(r, c)
        if self.tree_embedding is not None:
            if code is None:
                raise ValueError("this weight hypernet is conditioned on the tree: pass its tree_code")
            embedded = embedded + self.tree_embedding(code.to(embedded))
        return self.body(embedded)

    def forward(self, r: Tensor, c: Tensor, code: Tensor | None = None) -> tuple[list[Tensor], Tensor | None]:
        """Node deltas (per layer ``[B, N, D_l]``) and head adaptations (``[B, N, 2 * C]`` or None)."""
        hidden = self._hidden(r, c, code)
        nodes = [head(hidden).view(-1, self.n_tasks, size) for head, size in zip(self.heads, self.node_sizes)]
        heads = None
        if self.head_adaptor is not None:
            heads = self.head_adaptor(hidden).view(-1, self.n_tasks, 2 * self.head_channels)
        return nodes, heads

    def split(self, layer: int, node_deltas: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Unpack one node's deltas ``[..., D_l]`` into ``[(dgamma [..., C_1], dbeta [..., C_1]), ...]``."""
        if node_deltas.shape[-1] != self.node_sizes[layer]:
            raise ValueError(f"layer {layer} packs {self.node_sizes[layer]} deltas per node, got {node_deltas.shape[-1]}")
        out, offset = [], 0
        for channels in self.node_channels[layer]:
            dgamma = node_deltas[..., offset : offset + channels]
            dbeta = node_deltas[..., offset + channels : offset + 2 * channels]
            out.append((dgamma, dbeta))
            offset += 2 * channels
        return out
