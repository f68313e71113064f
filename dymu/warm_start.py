"""Warm-start the edge hypernet on the merge search's trees before stage 1, without a training image.

[choice] beyond the paper. Stage 1 learns a family of trees, one per (preference, budget pressure). After a
few hundred CPU steps that family can be thin: on multifashion with 200 stage-1 steps the hypernet's trees
jumped from the anchor straight to the one-stream tree, so every binding budget got the one-stream tree
(planned cost 0.54 of the anchor's at budget 0.9) and the planner had little to choose from.

The merge search (:func:`dymu.budget.shrink_to_budget`) gives, for any request ``(r, b)``, a tree that fits
``b``, keeps the preferred tasks' streams longest and merges the others onto their most similar streams. It
reads only the cost table and the task affinity, so fitting the hypernet's most likely trees to it costs
no training image and no pass through the backbone; stage 1 then moves the trees where the task loss says.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hyper import EdgeHypernet, budget_pressure

from .budget import CostTable, merged_anchor
from .path_losses import PathLosses

__all__ = ["parent_targets", "merge_requests", "imitate_merge"]

#: rows of the decision tensor that the tree leaves free (nodes no task passes through)
FREE = -100


def parent_targets(assignment: list[list[int]] | tuple[tuple[int, ...], ...], n_tasks: int) -> Tensor:
    """The parent choices that make ``assignment [L][N]`` the most likely tree: ``[L, N]`` long.

    Row ``l < L - 1``, entry ``j``: the parent stream of node ``(l + 1, j)`` (:data:`FREE` when no task passes
    through it); row ``L - 1``, entry ``k``: the last-block node task ``k``'s head reads (the layout of
    :class:`hyper.EdgeHypernet`'s logits).

    >>> parent_targets([[0, 0, 0], [0, 0, 2]], 3).tolist()
    [[0, -100, 0], [0, 0, 2]]
    """
    n_layers = len(assignment)
    targets = torch.full((n_layers, n_tasks), FREE, dtype=torch.long)
    for layer in range(n_layers - 1):
        for k in range(n_tasks):
            node, parent = assignment[layer + 1][k], assignment[layer][k]
            if int(targets[layer, node]) not in (FREE, parent):
                raise ValueError(f"{assignment} is not a tree: node ({layer + 1}, {node}) has two parents")
            targets[layer, node] = parent
    targets[n_layers - 1] = torch.as_tensor(list(assignment[n_layers - 1]))
    return targets


def merge_requests(table: CostTable, affinity: np.ndarray, n: int, alpha: float,
                   rng: np.random.Generator, path_losses: PathLosses | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` requests ``r ~ Dirichlet(alpha)``, ``b ~ U(min_budget, 1)`` and the merge search's trees for them
    (the harm measured with ``path_losses``): ``(r [n, N], s [n] the budget pressures, targets [n, L, N])``
    (see :func:`parent_targets`)."""
    n_tasks, low = table.n_tasks, table.min_budget
    prefs, pressures, targets = [], [], []
    for _ in range(n):
        r = rng.dirichlet(np.full(n_tasks, alpha))
        budget = low + (1.0 - low) * float(rng.random())
        budget = max(budget, low * (1 + 1e-9))  # the cheapest tree must fit after rounding
        tree = merged_anchor(table, budget, r, affinity, path_losses)
        prefs.append(r)
        pressures.append(budget_pressure(budget, low))
        targets.append(parent_targets(tree, n_tasks))
    return (torch.as_tensor(np.array(prefs), dtype=torch.float32), torch.tensor(pressures, dtype=torch.float32),
            torch.stack(targets))


def imitate_merge(edge: EdgeHypernet, table: CostTable, affinity: np.ndarray | None, *, steps: int, requests: int = 2048,
                  held_out: int = 256, lr: float = 1e-2, alpha: float = 1.0, seed: int = 0,
                  path_losses: PathLosses | None = None) -> dict[str, Any]:
    """Fit ``edge``'s parent logits to the merge search's trees for ``requests`` drawn requests: ``steps``
    full-batch Adam steps of cross-entropy on the rows each tree uses. With ``path_losses``, the trees of the
    search with the measured harm (:mod:`dymu.path_losses`).

    Draws from its own generator seeded by ``seed``. Returns ``{"steps", "requests", "seconds", "match_before",
    "match_after", "row_match_after"}``: on ``held_out`` further requests, the fraction whose most likely tree is
    the merge search's, before and after, and the fraction of used rows whose most likely parent is.
    """
    n_tasks = table.n_tasks
    if (edge.n_tasks, edge.n_decisions) != (n_tasks, table.n_layers):
        raise ValueError(f"the edge hypernet has {edge.n_tasks} tasks and {edge.n_decisions} decisions, the cost table "
                         f"{n_tasks} tasks and {table.n_layers} blocks: they must come from one controller")
    affinity = np.ones((n_tasks, n_tasks)) if affinity is None else np.asarray(affinity, dtype=float)
    start = time.time()
    rng = np.random.default_rng(seed)
    device = next(edge.parameters()).device
    prefs, pressures, targets = (t.to(device) for t in merge_requests(table, affinity, requests, alpha, rng, path_losses))
    test = [t.to(device) for t in merge_requests(table, affinity, held_out, alpha, rng, path_losses)]
    was = edge.training
    match_before = _match(edge, *test)[0]
    optimizer = torch.optim.Adam(edge.parameters(), lr=lr)
    edge.train()
    for _ in range(steps):
        logits = edge(prefs, pressures)  # [requests, L, N, N]
        loss = F.cross_entropy(logits.reshape(-1, n_tasks), targets.reshape(-1), ignore_index=FREE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    edge.zero_grad(set_to_none=True)
    edge.train(was)
    match_after, rows_after = _match(edge, *test)
    return {"steps": steps, "requests": requests, "seconds": time.time() - start, "match_before": match_before,
            "match_after": match_after, "row_match_after": rows_after}


@torch.no_grad()
def _match(edge: EdgeHypernet, prefs: Tensor, pressures: Tensor, targets: Tensor) -> tuple[float, float]:
    """The fraction of requests whose most likely tree is the one ``targets [n, L, N]`` encode, and the
    fraction of used rows whose most likely parent is the target's."""
    was = edge.training
    edge.eval()
    logits = edge(prefs, pressures)
    edge.train(was)
    used = targets != FREE
    hits = (logits.argmax(-1) == targets) | ~used  # [n, L, N]: a free row matches whatever it holds
    # the most likely tree is traced along used rows only, so it is the target tree iff every used row matches
    return float(hits.all(2).all(1).float().mean()), float(hits[used].float().mean())
