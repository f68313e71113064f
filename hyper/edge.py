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

    [choice] The heads start with small weights and a bias of ``init_own_stream`` on the diagonal, so
    training starts from the anchor (every node reading its own stream) rather than from a random tree.

    [choice] Structured preference terms, scaled by the resource input ``c`` (the budget pressure in
    budget mode, 0 when the whole anchor fits): child ``j``'s logit for its own stream gets
    ``c * a_l * log(N r_j)`` and every child's logit for parent ``i`` gets
    ``c * (b_l * log(N r_i) + g_l * Aff(j, i))``, with learnable gains ``a, b, g`` per decision (start 1).
    Under a binding budget a preferred task keeps its own stream and the others move to preferred,
    similar streams; at ``c = 0`` the terms vanish. The MLP learns the rest. Without them, a few
    hundred CPU steps learn trees that follow the budget but barely the preference.

    With the buffer ``anchor_at_zero`` set (the budget mode), the logits are
    ``(1 - c) * init_own_stream * I + c * (learned + structured)``: at zero budget pressure the most
    likely tree is the anchor for every preference, by construction.
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
        self.own_gain = nn.Parameter(torch.ones(n_decisions))
        self.parent_gain = nn.Parameter(torch.ones(n_decisions))
        self.affinity_gain = nn.Parameter(torch.ones(n_decisions))
        self.register_buffer("affinity", torch.zeros(n_tasks, n_tasks))
        self.register_buffer("own_prior", torch.eye(n_tasks) * init_own_stream)
        self.register_buffer("anchor_at_zero", torch.tensor(False))
        with torch.no_grad():
            for head in self.heads:
                head.weight.mul_(0.1)
                head.bias.copy_(torch.eye(n_tasks).flatten() * init_own_stream)

    def set_affinity(self, affinity: Tensor) -> None:
        """Use task affinity ``[N, N]`` in the structured parent term (zeros: no affinity term)."""
        affinity = torch.as_tensor(affinity, dtype=self.affinity.dtype, device=self.affinity.device)
        if affinity.shape != self.affinity.shape:
            raise ValueError(f"affinity must be {tuple(self.affinity.shape)}, got {tuple(affinity.shape)}")
        self.affinity.copy_(affinity)

    def forward(self, r: Tensor, c: Tensor) -> Tensor:
        """``r [B, N]``, ``c [B]`` -> logits ``[B, L, N, N]``."""
        hidden = self.body(self.embedding(r, c))
        logits = torch.stack([head(hidden).view(-1, self.n_tasks, self.n_tasks) for head in self.heads], dim=1)
        log_r = torch.log(r.clamp_min(1e-4) * self.n_tasks)  # [B, N]; 0 at the uniform preference
        own = torch.diag_embed(log_r).unsqueeze(1) * self.own_gain.view(1, -1, 1, 1)  # [B, L, N, N]
        parent = log_r.view(-1, 1, 1, self.n_tasks) * self.parent_gain.view(1, -1, 1, 1)
        similar = self.affinity.view(1, 1, self.n_tasks, self.n_tasks) * self.affinity_gain.view(1, -1, 1, 1)
        c = c.view(-1, 1, 1, 1)
        if bool(self.anchor_at_zero):
            # budget mode: no pressure means nothing to save, so every node keeps its own stream
            return (1 - c) * self.own_prior + c * (logits + own + parent + similar)
        return logits + c * (own + parent + similar)


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
