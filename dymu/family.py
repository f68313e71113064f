"""The nested affinity trees with one stream per group: what the supernet stage can train instead of drawn merges.

[choice] beyond the paper. The supernet stage (:mod:`dymu.supernet`) trains the streams on a sandwich of trees.
Drawn from the merge search (a random preference and budget each step), those trees put a node of stream ``s``
under ever other groups of tasks, so no node learns to serve any group well: on fashion_digits, after the stage,
digit lost 65 % on the best foreign stream, while a static affinity tree trained jointly at 0.6 of the anchor's
FLOPs was within 2.2 % of the single-task streams. :func:`affinity_family` gives instead the static affinity
trees of every cost (:func:`affinity.branching_sequence`, each one refining the one before), with the stream of
every node chosen so that a group keeps one stream from the input up (:func:`consistent_streams`): a node then
serves the same group in every tree of the family that has it, or a union of such groups in cheaper trees.

>>> affinity = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
>>> consistent_streams([[5, 5, 5], [3, 3, 7]], affinity)   # the pair keeps task 1's stream; task 2 its own
((1, 1, 1), (1, 1, 2))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from affinity.branching import branching_sequence

from .budget import CostTable

__all__ = ["consistent_streams", "affinity_family", "family_tree"]

Assignment = tuple[tuple[int, ...], ...]


def _central(group: Sequence[int], affinity: np.ndarray) -> int:
    """The member with the highest summed affinity to the group's other members (ties: the lowest index)."""
    return max(group, key=lambda k: (sum(affinity[k, m] for m in group if m != k), -k))


def consistent_streams(assignment: Sequence[Sequence[int]], affinity: np.ndarray) -> Assignment:
    """The same tree, each node renamed to a stream of one of its tasks: a node keeps its parent's stream when the
    parent's stream's task is among its tasks, else takes the stream of its most central task (:func:`_central`;
    at the first layer every node does). ``assignment [L][N]`` -> ``[L][N]``; node ids stay unique per layer, since
    groups at one layer are disjoint and each is named after one of its own tasks."""
    aff = np.asarray(affinity, dtype=float)
    n_tasks = len(assignment[0])
    out: list[tuple[int, ...]] = []
    for layer, row in enumerate(assignment):
        new = [0] * n_tasks
        for node in set(row):
            group = [k for k in range(n_tasks) if row[k] == node]
            parent = out[layer - 1][group[0]] if layer else None
            stream = parent if parent in group else _central(group, aff)
            for k in group:
                new[k] = stream
        out.append(tuple(new))
    return tuple(out)


def affinity_family(table: CostTable, affinity: np.ndarray) -> list[tuple[Assignment, int]]:
    """Every tree of :func:`affinity.branching_sequence` for ``affinity [N, N]`` (costs: the table's block FLOPs),
    renamed by :func:`consistent_streams`, with its FLOPs (heads included): ``[(assignment [L][N], flops)]`` from
    the one-stream tree up, by increasing cost."""
    aff = np.asarray(affinity, dtype=float)
    trees = branching_sequence(aff, layer_costs=[float(f) for f in table.block_flops], n_layers=table.n_layers)
    family = []
    for tree in trees:
        rows = consistent_streams(tree.assignment, aff)
        family.append((rows, table.tree_flops(rows)))
    return sorted(family, key=lambda item: item[1])


def family_tree(family: Sequence[tuple[Assignment, int]], max_flops: float) -> Assignment:
    """The costliest tree of ``family`` (:func:`affinity_family`) of at most ``max_flops``; its cheapest tree when none
    fits (the caller checks the budget's reach)."""
    fitting = [rows for rows, flops in family if flops <= max_flops]
    return fitting[-1] if fitting else family[0][0]
