"""Budget trees with weights of their own: the nested affinity trees of a few budgets, each trained alone.

[choice] beyond the paper. The supernet stage (:mod:`dymu.supernet`) trains one set of weights for every tree of
its sandwich, and a tree cut from it is worse than the same tree trained alone: on fashion_digits the static
affinity tree of 0.6 of the anchor's FLOPs, cut from the supernet, scored 0.896 digit accuracy on validation, and
0.921 when continued alone from the stage-0 streams for the same steps (``python -m benchmarks.tree_alone``, README).
With ``SupernetConfig(own_trees=(b1, b2, ...))`` the stage also continues, for each budget ``b``, a copy of the
stage-0 streams on the nested affinity tree of cost at most ``b`` (:func:`dymu.family.family_tree`; a budget at or
below the minimum gives the one-stream tree), on the very batches the supernet trains on (no extra training image),
every task's loss times its loss scale (a uniform preference), each copy keeping its best validation state. This is
what :mod:`dymu.solo` does for the anchor tree, for a few cheaper trees.

Serving: the measured searches (:data:`dymu.planner.MEASURED_SEARCHES`) price each own tree that fits the budget by
its measured validation losses (:attr:`dymu.path_losses.PathLosses.own_trees`) beside the supernet's tree, and the
request gets the lower priced one (:meth:`dymu.planner.Planner.plan`); a request for an own tree runs its own copy,
unadapted (``model.info["own_weights"]``). A budget-1 request may then get an own tree cheaper than the anchor
tree when it prices lower for that preference.

What it costs: one stored copy of its tree's nodes and of the heads per own tree, and each supernet step runs every own tree
once more (counted in :func:`dymu.supernet.sandwich_blocks_per_image`). The served model's FLOPs are its tree's.

>>> from dymu.budget import CostTable
>>> table = CostTable(block_flops=(10, 10), block_params=(1, 1), head_flops=(1, 1), head_params=(1, 1), input_shape=(1, 4, 4))
>>> affinity = np.array([[1.0, 0.1], [0.1, 1.0]])
>>> own_tree_assignments(table, affinity, (0.0, 0.8))   # the one-stream tree; the costliest within 0.8 x 42 FLOPs
[((0, 0), (0, 0)), ((0, 0), (0, 1))]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .anchor import AnchorNet, tree_forward, tree_losses
from .budget import CostTable
from .family import affinity_family, family_tree
from .loop import Batch, StepInfo
from .tasks import Task

__all__ = ["own_tree_assignments", "OwnTrees", "AbsentNode"]

Assignment = tuple[tuple[int, ...], ...]


def _rows(assignment: Sequence[Sequence[int]]) -> Assignment:
    """``assignment`` as hashable tuples of ints (a key for lookups)."""
    return tuple(tuple(int(v) for v in row) for row in assignment)


def own_tree_assignments(table: CostTable, affinity: np.ndarray | None, budgets: Sequence[float]) -> list[Assignment]:
    """The distinct nested affinity trees (:func:`dymu.family.affinity_family`) of ``budgets``, cheapest first: for
    each budget the costliest family tree within it, the one-stream tree for a budget below every tree.
    ``affinity [N, N]`` (None: all tasks alike, a family of the one-stream tree alone)."""
    n = table.n_tasks
    aff = np.ones((n, n)) if affinity is None else np.asarray(affinity, dtype=float)
    family = affinity_family(table, aff)
    trees: list[Assignment] = []
    for budget in sorted(set(float(b) for b in budgets)):
        tree = _rows(family_tree(family, budget * table.anchor_flops))
        if tree not in trees:
            trees.append(tree)
    return sorted(trees, key=table.tree_flops)


def _tree_copy(template: AnchorNet, assignment: Assignment) -> AnchorNet:
    """A deep copy of ``template`` holding only the nodes of ``assignment [L][N]`` (and every head)."""
    net = copy.deepcopy(template)
    for layer, row in enumerate(assignment):
        for stream in set(range(net.n_tasks)) - set(row):
            net.streams[stream].blocks[layer] = AbsentNode(layer, stream)
    return net


class AbsentNode(nn.Module):
    """The place of a node an own tree does not use: it holds no weights (so none are stored or counted) and refuses to
    run, so that a wrong routing fails loudly instead of reading stale weights."""

    def __init__(self, layer: int, stream: int):
        super().__init__()
        self.layer, self.stream = layer, stream

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError(f"node (layer {self.layer}, stream {self.stream}) is not part of this own tree")


class OwnTrees(nn.Module):
    """One copy of the tree's nodes and every head per tree: ``nets[i]`` runs ``assignments[i]``; a node the tree does
    not use is an :class:`AbsentNode` (no weights).

    Args:
        template: the streams each copy starts from (the stage-0 streams); not modified.
        assignments: the trees, ``[L][N]`` each.
    """

    def __init__(self, template: AnchorNet, assignments: Sequence[Sequence[Sequence[int]]]):
        super().__init__()
        self.assignments: list[Assignment] = [_rows(a) for a in assignments]
        if len(set(self.assignments)) != len(self.assignments):
            raise ValueError("own trees must be distinct")
        self.nets = nn.ModuleList(_tree_copy(template, a) for a in self.assignments)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load a :meth:`state_dict`. A file written when every copy held all streams also loads: the weights of nodes
        outside each tree are dropped (nothing ran them). A weight of the tree missing from ``state`` raises."""
        own = self.state_dict()
        self.load_state_dict({k: v for k, v in state.items() if k in own})

    def __len__(self) -> int:
        return len(self.assignments)

    def net_for(self, assignment: Sequence[Sequence[int]]) -> AnchorNet | None:
        """The copy trained on exactly ``assignment``, or None."""
        key = _rows(assignment)
        return self.nets[self.assignments.index(key)] if key in self.assignments else None

    def losses(self, tasks: Sequence[Task], x: Tensor, targets: dict[str, Tensor]) -> list[Tensor]:
        """Each tree's per-task losses on one batch ``x [B, ...]``: ``[N]`` per tree (the nets in the mode they are)."""
        out = []
        for net, assignment in zip(self.nets, self.assignments):
            predictions = tree_forward(net, assignment, x)
            out.append(torch.stack([t.loss(predictions[t.name], targets[t.name]).float() for t in tasks]))
        return out

    def train_step(self, tasks: Sequence[Task], scales: Tensor, optimizer: torch.optim.Optimizer, scheduler: Any,
                   info: StepInfo, x: Tensor, targets: dict[str, Tensor]) -> float:
        """One step of every tree on its own loss ``sum_k w_k L_k`` (``scales [N]``) on the batch ``x [B, ...]``; no
        parameter is shared between the copies, so summing the trees' losses trains each alone. Returns the mean over
        trees."""
        per_tree = self.losses(tasks, x, targets)
        for tree in per_tree:
            for task, loss in zip(tasks, tree):
                info.check_loss(loss, task.name)
        totals = torch.stack([(scales * tree).sum() for tree in per_tree])
        optimizer.zero_grad(set_to_none=True)
        totals.sum().backward()
        optimizer.step()
        scheduler.step()
        return float(totals.detach().mean())

    @torch.no_grad()
    def scores(self, tasks: Sequence[Task], scales: Tensor, batches: Sequence[Batch], device: torch.device) -> dict[str, float]:
        """Each tree's validation score ``mean_k w_k L_k`` (``scales [N]``; eval mode, the supernet's score of a uniform
        preference), keyed by the tree's index as a string."""
        self.eval()
        try:
            return {str(i): float((scales * tree_losses(net, tasks, a, batches, device)).mean())
                    for i, (net, a) in enumerate(zip(self.nets, self.assignments))}
        finally:
            self.train()
