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

Directed own trees (``SupernetConfig(own_groups=k)``): one copy per budget serves every preference, so a controller
serving own trees gave one model per budget whatever the preference (no control: on fashion_digits the own trees beat
the supernet's trees on every task, and the search served them to 74-100 % of the preferences). With ``k`` groups,
the tasks are clustered by affinity into ``k`` groups (:func:`task_groups`) and, for each budget and each group, the
merge search's tree for a preference leaning on that group (half its mass on the group, half on every task;
:func:`dymu.budget.merged_anchor`: the other tasks merge first, onto their most similar tasks' features) trains alone
with each task's loss weighted as the search prices that preference (``r_k + 0.1 / N``: the group's tasks 3.5
times the others with 3 groups of 2 among 6 tasks, so the group's shared nodes serve the group first). The search
then serves each preference the copy that prices lowest for it. ``own_min_share`` (:class:`dymu.SupernetConfig`)
keeps copies far below a budget from being served at it, so the cost follows the budget.

What it costs: one stored copy of its tree's nodes and of the heads per own tree, and each supernet step runs every own tree
once more (counted in :func:`dymu.supernet.sandwich_blocks_per_image`). The served model's FLOPs are its tree's.

>>> from dymu.budget import CostTable
>>> table = CostTable(block_flops=(10, 10), block_params=(1, 1), head_flops=(1, 1), head_params=(1, 1), input_shape=(1, 4, 4))
>>> affinity = np.array([[1.0, 0.1], [0.1, 1.0]])
>>> own_tree_assignments(table, affinity, (0.0, 0.8))   # the one-stream tree; the costliest within 0.8 x 42 FLOPs
[((0, 0), (0, 0)), ((0, 0), (0, 1))]
>>> task_groups(np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]]), 2)
[(0, 1), (2,)]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .anchor import AnchorNet, tree_forward, tree_losses
from .budget import CostTable, merged_anchor, price_weights
from .family import affinity_family, family_tree
from .loop import Batch, StepInfo
from .tasks import Task

__all__ = ["own_tree_assignments", "own_tree_specs", "task_groups", "OwnTrees", "AbsentNode"]

Assignment = tuple[tuple[int, ...], ...]


def _rows(assignment: Sequence[Sequence[int]]) -> Assignment:
    """``assignment`` as hashable tuples of ints (a key for lookups)."""
    return tuple(tuple(int(v) for v in row) for row in assignment)


def task_groups(affinity: np.ndarray, n_groups: int) -> list[tuple[int, ...]]:
    """The tasks in ``n_groups`` groups by average-linkage clustering of ``affinity [N, N]`` (the pair of groups with
    the highest mean affinity between their members merges first; ties: the lowest indices); each group sorted,
    groups ordered by their first task. ``n_groups`` at least N gives every task alone."""
    aff = np.asarray(affinity, dtype=float)
    groups = [[k] for k in range(len(aff))]
    while len(groups) > max(int(n_groups), 1):
        pairs = [(i, j) for i in range(len(groups)) for j in range(i + 1, len(groups))]
        i, j = max(pairs, key=lambda p: (float(aff[np.ix_(groups[p[0]], groups[p[1]])].mean()), -p[0], -p[1]))
        groups = sorted([g for k, g in enumerate(groups) if k not in (i, j)] + [sorted(groups[i] + groups[j])])
    return [tuple(g) for g in groups]


def own_tree_specs(table: CostTable, affinity: np.ndarray | None, budgets: Sequence[float],
                   n_groups: int = 0) -> list[tuple[Assignment, tuple[float, ...]]]:
    """The own trees of ``budgets`` with the task weights each trains on: ``[(assignment [L][N], weights [N])]``,
    cheapest first (ties: in order of budget, then group).

    ``n_groups=0``: the distinct nested affinity trees (:func:`dymu.family.affinity_family`), for each budget the
    costliest family tree within it (the one-stream tree for a budget below every tree), every weight 1.
    ``n_groups=k``: for each budget and each group ``G`` of :func:`task_groups`, the merge search's tree
    (:func:`dymu.budget.merged_anchor`, affinity-guessed harm) for the preference ``r`` with half its mass spread
    evenly over ``G`` and half over every task, weights ``N (r_k + 0.1 / N) / 1.1`` (mean 1, the preference as the
    search prices it); a budget below the one-stream tree's cost gives the one-stream tree; a tree already listed is
    not repeated (the first keeps it).
    ``affinity [N, N]`` (None: all tasks alike)."""
    n = table.n_tasks
    aff = np.ones((n, n)) if affinity is None else np.asarray(affinity, dtype=float)
    specs: list[tuple[Assignment, tuple[float, ...]]] = []
    seen: set[Assignment] = set()
    ordered = sorted(set(float(b) for b in budgets))
    if n_groups <= 0:
        family = affinity_family(table, aff)
        candidates = [(_rows(family_tree(family, b * table.anchor_flops)), (1.0,) * n) for b in ordered]
    else:
        candidates = []
        for budget in ordered:
            for group in task_groups(aff, n_groups):
                preference = np.full(n, 0.5 / n)  # half the mass on the group: the others still train a little
                preference[list(group)] += 0.5 / len(group)
                # a budget below the one-stream tree asks for it (half a FLOP of slack: min_budget x anchor may
                # round below min_flops)
                tree = merged_anchor(table, max(budget, (table.min_flops + 0.5) / table.anchor_flops), preference, aff)
                # n / 1.1 makes the mean 1 (a preference sums to 1, so the price weights sum to 1.1)
                candidates.append((_rows(tree), tuple(float(w) for w in n * price_weights(preference) / 1.1)))
    for tree, weights in candidates:
        if tree not in seen:
            seen.add(tree)
            specs.append((tree, weights))
    return sorted(specs, key=lambda spec: table.tree_flops(spec[0]))


def own_tree_assignments(table: CostTable, affinity: np.ndarray | None, budgets: Sequence[float],
                         n_groups: int = 0) -> list[Assignment]:
    """The trees of :func:`own_tree_specs`, cheapest first: with ``n_groups=0`` the distinct nested affinity trees
    (:func:`dymu.family.affinity_family`) of ``budgets``, for each budget the costliest family tree within it, the
    one-stream tree for a budget below every tree. ``affinity [N, N]`` (None: all tasks alike, a family of the
    one-stream tree alone)."""
    return [tree for tree, _ in own_tree_specs(table, affinity, budgets, n_groups)]


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
        task_weights: per tree, each task's loss weight ``[N]`` in training and in the validation score
            (:func:`own_tree_specs`; None: every weight 1).
    """

    def __init__(self, template: AnchorNet, assignments: Sequence[Sequence[Sequence[int]]],
                 task_weights: Sequence[Sequence[float]] | None = None):
        super().__init__()
        self.assignments: list[Assignment] = [_rows(a) for a in assignments]
        if len(set(self.assignments)) != len(self.assignments):
            raise ValueError("own trees must be distinct")
        n_tasks = template.n_tasks
        weights = [[1.0] * n_tasks for _ in self.assignments] if task_weights is None else [list(w) for w in task_weights]
        if len(weights) != len(self.assignments) or any(len(w) != n_tasks for w in weights):
            raise ValueError(f"task_weights needs one weight per task ({n_tasks}) for each of the {len(self.assignments)} "
                             f"own trees, got {[len(w) for w in weights]}")
        if not all(np.isfinite(w) and w >= 0 for row in weights for w in row):
            raise ValueError(f"task weights must be finite and >= 0, got {weights}")
        self.task_weights: list[tuple[float, ...]] = [tuple(float(w) for w in row) for row in weights]
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
        """One step of every tree on its own loss ``sum_k w_k v_k L_k`` (``scales [N]`` w, the tree's task weights v)
        on the batch ``x [B, ...]``; no parameter is shared between the copies, so summing the trees' losses trains
        each alone. Returns the mean over trees."""
        per_tree = self.losses(tasks, x, targets)
        for tree in per_tree:
            for task, loss in zip(tasks, tree):
                info.check_loss(loss, task.name)
        totals = torch.stack([(scales * self._weights(i, scales) * tree).sum()
                              for i, tree in enumerate(per_tree)])
        optimizer.zero_grad(set_to_none=True)
        totals.sum().backward()
        optimizer.step()
        scheduler.step()
        return float(totals.detach().mean())

    @torch.no_grad()
    def scores(self, tasks: Sequence[Task], scales: Tensor, batches: Sequence[Batch], device: torch.device) -> dict[str, float]:
        """Each tree's validation score ``mean_k w_k v_k L_k`` (``scales [N]`` w, the tree's task weights v; eval mode;
        with every v 1 the supernet's score of a uniform preference), keyed by the tree's index as a string."""
        self.eval()
        try:
            return {str(i): float((scales * self._weights(i, scales)
                                   * tree_losses(net, tasks, a, batches, device)).mean())
                    for i, (net, a) in enumerate(zip(self.nets, self.assignments))}
        finally:
            self.train()

    def _weights(self, index: int, like: Tensor) -> Tensor:
        """Tree ``index``'s task weights ``[N]`` on ``like``'s device and dtype."""
        return torch.tensor(self.task_weights[index], dtype=like.dtype, device=like.device)
