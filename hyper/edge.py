"""The edge hypernetwork ``h(r, c)``: preferences and budget to branching logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .embedding import PreferenceEmbedding, mlp

__all__ = ["EdgeHypernet", "most_likely_parents"]


class EdgeHypernet(nn.Module):
    """Maps ``(r [B, N], c [B])`` to branching logits ``[B, L, N, N]``.

    Decision ``l < L - 1`` holds, in row ``j``, the logits of node ``(l + 1, j)`` over its parents
    ``(l, 0..N-1)``; decision ``L - 1`` holds, in row ``k``, the logits of task ``k``'s head over the
    nodes of the last block. Preference embedding of dimension ``embed_dim``, an MLP with ``depth``
    hidden layers of width ``hidden`` (paper: 32, 2, 100), then one linear head of size ``N x N`` per
    decision.

    [choice] The heads start with zero weights and a bias of ``init_own_stream`` on the diagonal, so
    training starts from the anchor (every node reading its own stream) rather than from a random tree.
    """

    def __init__(
        self,
        n_tasks: int,
        n_decisions: int,
        embed_dim: int = 32,
        hidden: int = 100,
        depth: int = 2,
        init_own_stream: float = 2.0,
    ):
        super().__init__()
        if n_tasks < 1 or n_decisions < 1:
            raise ValueError(f"need at least one task and one decision, got {n_tasks} and {n_decisions}")
        self.n_tasks = n_tasks
        self.n_decisions = n_decisions
        self.embedding = PreferenceEmbedding(n_tasks, embed_dim)
        self.body = mlp(embed_dim, hidden, depth)
        self.heads = nn.ModuleList(nn.Linear(hidden, n_tasks * n_tasks) for _ in range(n_decisions))
        with torch.no_grad():
            for head in self.heads:
                head.weight.mul_(0.1)
                head.bias.copy_(torch.eye(n_tasks).flatten() * init_own_stream)

    def forward(self, r: Tensor, c: Tensor) -> Tensor:
        hidden = self.body(self.embedding(r, c))
        logits = [head(hidden).view(-1, self.n_tasks, self.n_tasks) for head in self.heads]
        return torch.stack(logits, dim=1)


def most_likely_parents(logits: Tensor) -> list[list[int]]:
    """The maximum-likelihood tree of one preference: logits ``[L, N, N]`` -> ``assignment [L][N]``.

    ``assignment[l][k]`` is the stream whose block ``l`` task ``k``'s path passes through, traced from
    the head down: the head picks a last-block node, that node picks its parent, and so on.
    """
    if logits.dim() != 3 or logits.shape[1] != logits.shape[2]:
        raise ValueError(f"expected logits [L, N, N], got {tuple(logits.shape)}")
    parents = logits.argmax(-1).tolist()  # [L][N]
    n_layers, n_tasks = len(parents), len(parents[0])
    assignment = [[0] * n_tasks for _ in range(n_layers)]
    for k in range(n_tasks):
        node = parents[n_layers - 1][k]
        assignment[n_layers - 1][k] = node
        for layer in range(n_layers - 2, -1, -1):
            node = parents[layer][node]
            assignment[layer][k] = node
    return assignment
