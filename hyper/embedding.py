"""The preference embedding shared by both hypernetworks: ``p = sum_i r_i e_i + c e_c``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PreferenceEmbedding", "mlp"]


class PreferenceEmbedding(nn.Module):
    """Embeds a task preference ``r [B, N]`` (rows on the simplex) and a resource preference ``c [B]``.

    ``forward(r, c) -> [B, dim]`` with ``p = r @ E + c * e_c``, ``E`` a learnable ``[N, dim]`` table.
    """

    def __init__(self, n_tasks: int, dim: int = 32):
        super().__init__()
        self.task_embeddings = nn.Parameter(torch.randn(n_tasks, dim) / dim**0.5)
        self.resource_embedding = nn.Parameter(torch.randn(dim) / dim**0.5)

    def forward(self, r: Tensor, c: Tensor) -> Tensor:
        return r @ self.task_embeddings + c.unsqueeze(-1) * self.resource_embedding


def mlp(in_dim: int, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` with ReLU: ``[B, in_dim] -> [B, hidden]``."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers)
