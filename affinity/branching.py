"""Static branched multi-task architectures from task affinities under a compute budget.

In the spirit of Vandenhende et al., "Branched Multi-Task Networks: Deciding What Layers To Share"
(BMVC 2020): tasks whose single-task networks stay similar share layers deeper into the network,
dissimilar ones branch early, and a larger budget buys earlier and more branches.

The algorithm (deterministic; everything below is a choice of this project):

1. **Order of splits.** Average-linkage clustering of the mean dissimilarity ``1 - Aff`` gives a
   binary hierarchy of the ``N`` tasks. Each of its ``N - 1`` merges ``v`` becomes a potential
   branch point that separates its two sub-clusters at some layer ``s_v`` (``s_v = L``: never).
   A sub-cluster cannot branch before the cluster containing it (``s_child >= s_parent``), so every
   assignment of the ``s_v`` is a valid tree (paths never re-merge) and every tree consistent with
   the hierarchy is one.
2. **What sharing costs in accuracy.** Two tasks that share the node of layer ``l`` pay their
   dissimilarity at that layer, ``d_l(a, b) = 1 - A_l(a, b)`` from the per-layer affinities: tasks
   are kept together at ``l`` only where they are still similar at ``l``. The loss of a tree is
   ``sum_l sum_{pairs sharing at l} d_l(a, b)`` (:func:`tree_dissimilarity`).
3. **What it costs in compute.** A node of layer ``l`` costs ``layer_costs[l]`` (default 1: the
   budget then counts nodes); a tree costs the sum over its nodes (:func:`tree_cost`). Heads are the
   same in every tree and are left out.
4. **Greedy refinement.** From hard sharing, repeatedly pick the move with the largest loss
   reduction per unit of cost, where a move takes one branch point ``v`` to any earlier layer ``t``
   (every enclosing branch point later than ``t`` moved to ``t`` as well); looking at every ``t``
   sees past layers where the tasks are still similar. Then advance ``v`` (and the enclosing points
   it drags along) by one layer only, so consecutive trees differ by a few nodes and a budget is
   used up closely. Moves that remove no loss are never taken, so tasks with identical features
   (dissimilarity below 1e-6, float32 rounding) are never separated. This yields a sequence of
   nested trees of increasing cost (:func:`branching_sequence`), each refining the previous one.
5. **Budget.** :func:`branching_tree` returns the last tree of that sequence whose cost fits. So a
   larger budget never gives fewer nodes at any layer (the tree refines the one a smaller budget
   gets), and the smallest budget gives hard sharing. The price of this nesting: when the next
   step costs more than what is left, the rest of the budget stays unspent.

A budget is either ``extra_share`` in ``[0, 1]``, the share of the extra cost of the anchor (every task
its own path) over hard sharing that the tree may spend (``cost <= shared + extra_share * (anchor -
shared)``; 0: one shared path, 1: up to the anchor), or ``max_cost``, an absolute cost in the units
of ``layer_costs`` (e.g. FLOPs per block from the controller's cost table). Heads are not counted.
``extra_share`` is *not* the ``budget`` of :meth:`dymu.Controller.build_model`, which is a fraction of
the anchor's whole FLOPs, heads included: an ``extra_share`` of 0 is hard sharing, whose share of the
anchor's FLOPs is about ``1 / N``. (``budget=`` is the old name of ``extra_share``: it still works, with a
``DeprecationWarning``.)

Node ids of the returned trees are canonical: the index of the first task a node serves, i.e. the
anchor stream whose weights a node would start from.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .rsa import AffinityResult
from .tree import Tree

__all__ = [
    "branching_tree",
    "branching_sequence",
    "tree_cost",
    "relative_cost",
    "tree_dissimilarity",
]

_EPS = 1e-12
_SAME = 1e-6  # dissimilarities below this are rounding noise
_NEGLIGIBLE = 1e-9


def tree_cost(tree: Tree, layer_costs: Sequence[float] | None = None) -> float:
    """Compute of ``tree``: ``sum_l (nodes at layer l) * layer_costs[l]``.

    Args:
        tree: the tree.
        layer_costs: cost of one node per layer, ``L`` non-negative numbers (default: 1 each, so
            the cost is the number of nodes).
    """
    costs = _layer_costs(layer_costs, tree.n_layers)
    return float(np.dot(tree.nodes_per_layer(), costs))


def relative_cost(tree: Tree, layer_costs: Sequence[float] | None = None) -> float:
    """Where ``tree``'s cost lies between hard sharing (0) and the anchor (1): the ``extra_share`` scale."""
    costs = _layer_costs(layer_costs, tree.n_layers)
    shared, anchor = float(costs.sum()), float(costs.sum()) * tree.n_tasks
    if anchor - shared <= 0:
        return 0.0
    return (tree_cost(tree, costs) - shared) / (anchor - shared)


def tree_dissimilarity(tree: Tree, affinity: AffinityResult | np.ndarray) -> float:
    """The accuracy proxy the branching minimises: ``sum_l sum_{a < b sharing at l} (1 - A_l(a, b))``.

    Args:
        tree: a tree over the affinity's tasks (same order).
        affinity: an :class:`AffinityResult`, or affinities ``[L, N, N]`` or ``[N, N]`` (the latter
            used at every layer).
    """
    if isinstance(affinity, AffinityResult) and affinity.tasks != tree.tasks:
        raise ValueError(f"the tree's tasks {list(tree.tasks)} differ from the affinity's {list(affinity.tasks)}")
    per_layer = _per_layer(affinity, tree.n_layers)
    if per_layer.shape[1] != tree.n_tasks:
        raise ValueError(f"the affinity has {per_layer.shape[1]} tasks, the tree {tree.n_tasks}")
    total = 0.0
    for layer, row in enumerate(tree.assignment):
        same = np.equal.outer(row, row)
        total += float(np.triu((1.0 - per_layer[layer]) * same, k=1).sum())
    return total


def branching_tree(
    affinity: AffinityResult | np.ndarray,
    tasks: Sequence[str] | None = None,
    *,
    extra_share: float | None = None,
    max_cost: float | None = None,
    layer_costs: Sequence[float] | None = None,
    n_layers: int | None = None,
    budget: float | None = None,
) -> Tree:
    """A static branched architecture that fits a compute limit (see the module docstring).

    Args:
        affinity: an :class:`AffinityResult` (its per-layer affinities are used), or a numpy array
            ``[L, N, N]`` of per-layer affinities, or ``[N, N]`` used at every layer (then give
            ``n_layers`` or ``layer_costs``). Values in ``[0, 1]``; an asymmetric array is
            symmetrised by averaging with its transpose.
        tasks: the task names (default: the result's, or ``task0 .. task{N-1}`` for an array).
        extra_share: share in ``[0, 1]`` of the anchor's extra cost over hard sharing that may be spent
            (heads excluded; not a fraction of the anchor's FLOPs).
        max_cost: an absolute cost limit in the units of ``layer_costs``; give exactly one of
            ``extra_share`` and ``max_cost``.
        layer_costs: cost of one node at each of the ``L`` layers (default 1 each).
        n_layers: ``L`` when ``affinity`` is a single ``[N, N]`` matrix.
        budget: deprecated name of ``extra_share``.

    Returns:
        the tree, with ``tree_cost(tree, layer_costs) <= `` the limit.

    Raises:
        ValueError: both or neither of ``extra_share`` and ``max_cost``, ``extra_share`` outside ``[0, 1]``,
            ``max_cost`` below the cost of hard sharing, sizes that disagree, bad affinity values.

    >>> twins = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]])
    >>> branching_tree(twins, ["a", "b", "c"], extra_share=0.0, n_layers=2).nodes_per_layer()
    [1, 1]
    >>> tree = branching_tree(twins, ["a", "b", "c"], extra_share=0.25, n_layers=2)  # 2 + 0.25 x (6 - 2) nodes
    >>> tree.nodes_per_layer(), tree.branch_layer("a", "b") > tree.branch_layer("a", "c")
    ([1, 2], True)
    """
    if budget is not None:
        if extra_share is not None:
            raise ValueError("give extra_share only (budget is its deprecated name)")
        warnings.warn("branching_tree(budget=...) is now extra_share=... (a share of the extra cost over hard "
                      "sharing, not build_model's fraction of the anchor's FLOPs)", DeprecationWarning, stacklevel=2)
        extra_share = budget
    if (extra_share is None) == (max_cost is None):
        raise ValueError("give exactly one of extra_share (a share in [0, 1]) and max_cost (an absolute cost)")
    refinement = _refine(affinity, tasks, layer_costs, n_layers)
    shared = float(refinement.layer_costs.sum())
    anchor = shared * len(refinement.names)
    if extra_share is not None:
        if not np.isfinite(extra_share) or not 0.0 <= extra_share <= 1.0:
            raise ValueError(f"extra_share must be a share in [0, 1], got {extra_share!r}")
        limit = shared + extra_share * (anchor - shared)
    else:
        if not np.isfinite(max_cost) or max_cost < shared * (1 - 1e-9):
            raise ValueError(
                f"max_cost {max_cost!r} is below the cost of hard sharing ({shared:g}); no tree fits"
            )
        limit = float(max_cost)
    fitting = [i for i, cost in enumerate(refinement.costs) if cost <= limit * (1 + 1e-9) + _EPS]
    return refinement.tree(fitting[-1])


def branching_sequence(
    affinity: AffinityResult | np.ndarray,
    tasks: Sequence[str] | None = None,
    *,
    layer_costs: Sequence[float] | None = None,
    n_layers: int | None = None,
) -> list[Tree]:
    """Every tree the greedy refinement passes through, from hard sharing on, by increasing cost.

    Each tree refines the one before (same or more nodes at every layer). Arguments as for
    :func:`branching_tree`.
    """
    refinement = _refine(affinity, tasks, layer_costs, n_layers)
    return [refinement.tree(i) for i in range(len(refinement.splits))]


# --------------------------------------------------------------------------------- internals
@dataclass
class _Hierarchy:
    """The binary merge tree of the tasks: internal node ``v`` joins ``left[v]`` and ``right[v]``."""

    members: list[tuple[int, ...]]  # cluster id -> tasks (ids 0..N-1 are the tasks themselves)
    left: list[int]  # per internal node (cluster id N + v)
    right: list[int]
    parent: list[int | None]  # per internal node: the internal node that contains it


@dataclass
class _Refinement:
    """The greedy's states: ``splits[i][v]`` is the branch layer of point ``v`` in tree ``i``."""

    names: tuple[str, ...]
    hierarchy: _Hierarchy | None  # None for a single task
    n_layers: int
    layer_costs: np.ndarray
    splits: list[np.ndarray]
    costs: list[float]  # tree_cost of each state, increasing

    def tree(self, index: int) -> Tree:
        if self.hierarchy is None:
            return Tree.shared(self.names, self.n_layers)
        return _to_tree(self.names, self.hierarchy, self.splits[index], self.n_layers)


def _refine(
    affinity: AffinityResult | np.ndarray,
    tasks: Sequence[str] | None,
    layer_costs: Sequence[float] | None,
    n_layers: int | None,
) -> _Refinement:
    names = _task_names(affinity, tasks)
    if layer_costs is not None:
        count = len(layer_costs)
        if n_layers is not None and n_layers != count:
            raise ValueError(f"n_layers={n_layers} but layer_costs has {count} entries")
        if isinstance(affinity, AffinityResult) or np.ndim(affinity) == 3:
            layers = affinity.n_layers if isinstance(affinity, AffinityResult) else np.shape(affinity)[0]
            if count != layers:
                raise ValueError(f"layer_costs has {count} entries for the affinity's {layers} layers")
        n_layers = count
    per_layer = _per_layer(affinity, n_layers)
    if per_layer.shape[1] != len(names):
        raise ValueError(f"{len(names)} task names for an affinity over {per_layer.shape[1]} tasks")
    n_layers = per_layer.shape[0]
    costs = _layer_costs(layer_costs, n_layers)
    n = len(names)
    shared = float(costs.sum())
    if n == 1:
        return _Refinement(names, None, n_layers, costs, [np.zeros(0, dtype=int)], [shared])

    dissimilarity = 1.0 - per_layer  # [L, N, N]
    # tasks equal up to float32 rounding of their features are identical: never pay to separate them
    dissimilarity[dissimilarity < _SAME] = 0.0
    hierarchy = _average_linkage(dissimilarity.mean(axis=0))
    n_internal = n - 1
    # gain[v, l]: the loss removed by separating the two sides of branch point v at layer l
    gain = np.empty((n_internal, n_layers))
    for v in range(n_internal):
        left = list(hierarchy.members[hierarchy.left[v]])
        right = list(hierarchy.members[hierarchy.right[v]])
        gain[v] = dissimilarity[:, left][:, :, right].sum(axis=(1, 2))
    # prefix sums over layers: sum over l in [t, s) is prefix[s] - prefix[t]
    gain_prefix = np.concatenate([np.zeros((n_internal, 1)), np.cumsum(gain, axis=1)], axis=1)
    cost_prefix = np.concatenate([[0.0], np.cumsum(costs)])
    chains = []  # v and its enclosing branch points, innermost first
    for v in range(n_internal):
        chain, u = [], v
        while u is not None:
            chain.append(u)
            u = hierarchy.parent[u]
        chains.append(chain)

    split = np.full(n_internal, n_layers)  # s_v; n_layers = never
    targets = np.arange(n_layers)
    splits, state_costs = [split.copy()], [shared]
    while True:
        best_key: tuple[float, float] | None = None
        best_v: int | None = None
        for v in range(n_internal):
            if split[v] == 0:
                continue
            chain = chains[v]
            current = split[chain]  # [C]
            candidates = targets[: split[v]]  # [T] every earlier layer v could branch at
            moved = current[:, None] > candidates[None, :]  # [C, T] enclosing points dragged along
            move_gain = np.where(moved, gain_prefix[chain, current][:, None] - gain_prefix[chain][:, candidates], 0.0)
            move_cost = np.where(moved, cost_prefix[current][:, None] - cost_prefix[candidates][None, :], 0.0)
            move_gain, move_cost = move_gain.sum(axis=0), move_cost.sum(axis=0)
            for t in range(len(candidates) - 1, -1, -1):  # later targets first
                if move_gain[t] <= _NEGLIGIBLE:
                    continue
                ratio = np.inf if move_cost[t] <= 0 else round(float(move_gain[t] / move_cost[t]), 12)
                # ties: the cheaper move first, then the lower v
                key = (ratio, -float(move_cost[t]))
                if best_key is None or key > best_key:
                    best_key, best_v = key, v
        if best_v is None:
            break
        # take one layer of the best move only: the sequence then grows in small steps, so a
        # budget is used up closely, while the direction still comes from looking further ahead
        step = split[best_v] - 1
        for u in chains[best_v]:
            split[u] = min(split[u], step)
        splits.append(split.copy())
        # each branch point that splits at s adds one node at every layer from s on
        state_costs.append(shared + float((cost_prefix[-1] - cost_prefix[split]).sum()))
    return _Refinement(names, hierarchy, n_layers, costs, splits, state_costs)


def _average_linkage(dissimilarity: np.ndarray) -> _Hierarchy:
    from scipy.cluster.hierarchy import linkage  # imported here: scipy's clustering is slow to load

    n = dissimilarity.shape[0]
    condensed = np.clip(dissimilarity[np.triu_indices(n, k=1)], 0.0, None)
    merges = linkage(condensed, method="average")
    members: list[tuple[int, ...]] = [(k,) for k in range(n)]
    left, right = [], []
    parent: list[int | None] = [None] * (n - 1)
    for v, (a, b, _, _) in enumerate(merges):
        a, b = int(a), int(b)
        # the side holding the lowest task index goes left, so the output does not hinge on scipy's order
        if min(members[b]) < min(members[a]):
            a, b = b, a
        left.append(a)
        right.append(b)
        members.append(tuple(sorted(members[a] + members[b])))
        for child in (a, b):
            if child >= n:
                parent[child - n] = v
    return _Hierarchy(members=members, left=left, right=right, parent=parent)


def _to_tree(names: tuple[str, ...], hierarchy: _Hierarchy, split: np.ndarray, n_layers: int) -> Tree:
    n = len(names)
    root = len(hierarchy.members) - 1

    def groups(cluster: int, layer: int) -> list[tuple[int, ...]]:
        if cluster < n or split[cluster - n] > layer:
            return [hierarchy.members[cluster]]
        v = cluster - n
        return groups(hierarchy.left[v], layer) + groups(hierarchy.right[v], layer)

    partitions = [[[names[k] for k in group] for group in groups(root, layer)] for layer in range(n_layers)]
    return Tree.from_branch_points(names, partitions)


def _task_names(affinity: AffinityResult | np.ndarray, tasks: Sequence[str] | None) -> tuple[str, ...]:
    if isinstance(affinity, AffinityResult):
        if tasks is not None and tuple(tasks) != affinity.tasks:
            raise ValueError(f"tasks {list(tasks)} differ from the affinity's tasks {list(affinity.tasks)}")
        return affinity.tasks
    array = np.asarray(affinity)
    if array.ndim not in (2, 3):
        raise ValueError(f"an affinity array must be [N, N] or [L, N, N], got shape {list(array.shape)}")
    n = array.shape[-1]
    names = tuple(tasks) if tasks is not None else tuple(f"task{k}" for k in range(n))
    if len(names) != n:
        raise ValueError(f"{len(names)} task names for an affinity over {n} tasks")
    return names


def _per_layer(affinity: AffinityResult | np.ndarray, n_layers: int | None) -> np.ndarray:
    if isinstance(affinity, AffinityResult):
        array = np.asarray(affinity.per_layer, dtype=np.float64)
    else:
        try:
            array = np.array(affinity, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"affinity must be an AffinityResult or a numeric array: {error}") from error
        if array.ndim == 2:
            if n_layers is None:
                raise ValueError("a single [N, N] affinity matrix needs n_layers (or layer_costs)")
            if n_layers < 1:
                raise ValueError(f"n_layers must be >= 1, got {n_layers}")
            array = np.broadcast_to(array, (n_layers, *array.shape)).copy()
        if array.ndim != 3 or array.shape[1] != array.shape[2] or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"affinity must have shape [N, N] or [L, N, N], got {list(array.shape)}")
        if not np.isfinite(array).all():
            raise ValueError("the affinity holds NaN or inf")
        if array.min() < -1e-6 or array.max() > 1 + 1e-6:
            raise ValueError(f"affinities must lie in [0, 1], got [{array.min():.4g}, {array.max():.4g}]")
        array = np.clip((array + array.transpose(0, 2, 1)) / 2, 0.0, 1.0)
    if n_layers is not None and array.shape[0] != n_layers:
        raise ValueError(f"the affinity has {array.shape[0]} layers, but {n_layers} layers were asked for")
    return array


def _layer_costs(layer_costs: Sequence[float] | np.ndarray | None, n_layers: int) -> np.ndarray:
    if layer_costs is None:
        return np.ones(n_layers)
    costs = np.asarray(layer_costs, dtype=np.float64)
    if costs.shape != (n_layers,):
        raise ValueError(f"layer_costs must hold one cost per layer ({n_layers}), got shape {list(costs.shape)}")
    if not np.isfinite(costs).all() or (costs < 0).any():
        raise ValueError(f"layer_costs must be finite and non-negative, got {costs.tolist()}")
    return costs
