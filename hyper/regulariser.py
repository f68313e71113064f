"""The branching regulariser Omega: active tasks share by affinity and depth, inactive tasks copy.

Shapes: ``nu [L, N, N]`` are the (Gumbel-softmax) parent choices of one preference, decision ``l``
row ``j`` the distribution of child ``j`` over the nodes below it (see :class:`hyper.edge.EdgeHypernet`);
``r [N]`` the task preference; ``affinity [N, N]`` symmetric task affinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RegulariserConfig", "usage_probability", "branching_regulariser", "active_tasks"]


@dataclass(frozen=True)
class RegulariserConfig:
    """Weights and ablation switches of Omega (method.md section 5).

    Attributes:
        lambda_active: weight of the active-task sharing loss (paper 1; the patent says 0.05).
        lambda_inactive: weight of the inactive-task copying loss (paper 0.1).
        active_threshold: tau as a multiple of ``1 / N``: task ``i`` is active when ``r_i >= tau / N``
            (paper 0.6).
        use_inactive: ablation "no inactive loss" when False.
        use_affinity: ablation "no affinity" when False (Aff replaced by 1).
        use_depth: ablation "no depth factor" when False ((L - l) / L replaced by 1).
        all_active: ablation "all tasks active" when True.
        normalize: [choice] divide ``L_active`` by the number of unordered active pairs and
            ``L_inactive`` by the number of inactive tasks, so Omega's scale does not grow with the
            number of tasks (20 CIFAR-100 tasks give 380 ordered pairs). For two tasks this equals the
            paper's plain sums. False gives the plain sums.
    """

    lambda_active: float = 1.0
    lambda_inactive: float = 0.1
    active_threshold: float = 0.6
    use_inactive: bool = True
    use_affinity: bool = True
    use_depth: bool = True
    all_active: bool = False
    normalize: bool = True


def usage_probability(nu: Tensor) -> Tensor:
    """``P_use [L, N]``: probability that block node ``(l, i)`` lies on some task's path.

    [choice] Dynamic programming from the heads down (the paper's equation is not recoverable): heads
    are always used; ``P(L-1, i) = 1 - prod_k (1 - nu[L-1, k, i])`` and
    ``P(l, i) = 1 - prod_j (1 - P(l+1, j) * nu[l, j, i])``, i.e. a node is used unless no used child
    picks it, children choosing independently.
    """
    n_layers, n_tasks, _ = nu.shape
    rows = [None] * n_layers
    child_use = torch.ones(n_tasks, dtype=nu.dtype, device=nu.device)  # heads
    for layer in range(n_layers - 1, -1, -1):
        picked = child_use.unsqueeze(1) * nu[layer]  # [children, parents]
        rows[layer] = 1 - torch.prod(1 - picked, dim=0)
        child_use = rows[layer]
    return torch.stack(rows)


def active_tasks(r: Tensor, config: RegulariserConfig) -> Tensor:
    """Boolean mask ``[N]`` of the active tasks ``r_i >= active_threshold / N`` (all when the ablation says so)."""
    n_tasks = r.shape[-1]
    if config.all_active:
        return torch.ones(n_tasks, dtype=torch.bool, device=r.device)
    return r >= config.active_threshold / n_tasks


def branching_regulariser(
    nu: Tensor, r: Tensor, c: float | Tensor, affinity: Tensor, config: RegulariserConfig = RegulariserConfig()
) -> tuple[Tensor, dict[str, float]]:
    """``Omega = c * lambda_A * L_active + lambda_I * L_inactive`` for one preference.

    ``L_active = sum_l sum_{i != j in A} (L - l) / L * Aff(i, j) * P(l, i) * P(l, j) * ||nu_i^l - nu_j^l||^2``
    where ``P(l, i)`` is the usage probability of decision ``l``'s child ``i`` (1 for heads), and
    ``L_inactive = sum_l sum_{j in I} min_{i in A} ||nu_i^l - nu_j^l||^2`` (both normalised by the
    number of pairs / inactive tasks when ``config.normalize``).
    Returns the scalar and a dict of its parts for logging.
    """
    n_layers, n_tasks, _ = nu.shape
    active = active_tasks(r, config)
    if not active.any():  # cannot happen on the simplex with threshold < 1, but keep Omega defined
        active = r == r.max()
    usage = usage_probability(nu)
    # decision l's children are block nodes (l + 1, .) for l < L - 1 and the (always used) heads at l = L - 1
    child_use = torch.cat([usage[1:], torch.ones(1, n_tasks, dtype=nu.dtype, device=nu.device)])
    sq_dist = torch.cdist(nu, nu).pow(2)  # [L, N, N]: ||nu_i^l - nu_j^l||^2
    depth = (n_layers - torch.arange(n_layers, dtype=nu.dtype, device=nu.device)) / n_layers
    if not config.use_depth:
        depth = torch.ones_like(depth)
    aff = affinity.to(nu) if config.use_affinity else torch.ones(n_tasks, n_tasks, dtype=nu.dtype, device=nu.device)
    pair = active.unsqueeze(0) & active.unsqueeze(1)
    pair &= ~torch.eye(n_tasks, dtype=torch.bool, device=nu.device)
    weights = depth.view(-1, 1, 1) * aff.unsqueeze(0) * child_use.unsqueeze(2) * child_use.unsqueeze(1)
    l_active = (weights * sq_dist * pair.unsqueeze(0)).sum()
    n_active = int(active.sum())
    if config.normalize and n_active > 2:
        l_active = l_active / (n_active * (n_active - 1) / 2)

    inactive = ~active
    if config.use_inactive and inactive.any():
        to_active = sq_dist[:, inactive][:, :, active]  # [L, |I|, |A|]
        l_inactive = to_active.min(dim=2).values.sum()
        if config.normalize:
            l_inactive = l_inactive / int(inactive.sum())
    else:
        l_inactive = nu.new_zeros(())
    omega = c * config.lambda_active * l_active + config.lambda_inactive * l_inactive
    return omega, {"l_active": float(l_active.detach()), "l_inactive": float(l_inactive.detach())}
