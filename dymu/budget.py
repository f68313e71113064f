"""Costing trees from a per-block cost table, and fitting a tree into a FLOP budget.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products,
a multiply-add counted as 2 FLOPs; BatchNorm, activations, pooling and interpolation are not counted.
Since every node of a tree is one anchor block and every head one anchor head, a tree's FLOPs are the
sum of its nodes' and heads' table entries, so costing a tree needs no forward pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .metrics.cost import block_cost_table, count_flops, count_params
from .solo import solo_tasks

if TYPE_CHECKING:
    from .path_losses import PathLosses

__all__ = ["CostTable", "shrink_to_budget", "merged_anchor", "fill_budget", "priced_rise", "tree_rises", "price_weights"]


@dataclass(frozen=True)
class CostTable:
    """Per-image cost of every block (the same in every stream) and of every task's head.

    Attributes:
        block_flops, block_params: ``[L]``.
        head_flops, head_params: ``[N]``, in task order.
        input_shape: the per-image input shape ``(C, H, W)`` the FLOPs refer to.
    """

    block_flops: tuple[int, ...]
    block_params: tuple[int, ...]
    head_flops: tuple[int, ...]
    head_params: tuple[int, ...]
    input_shape: tuple[int, ...]

    @classmethod
    def measure(cls, anchor: nn.Module) -> CostTable:
        """Count every block of stream 0 and every head of an :class:`~dymu.anchor.AnchorNet` at batch 1."""
        backbone = anchor.backbone
        shapes = backbone.block_shapes()
        device = next(anchor.parameters()).device
        blocks = block_cost_table(backbone.blocks, [s.input for s in shapes])
        block_flops = [b.flops for b in blocks]
        block_params = [b.params for b in blocks]
        last = torch.zeros(1, *shapes[-1].output, device=device)
        skips = [torch.zeros(1, *shapes[s].output, device=device) for s in backbone.skip_layers]
        head_flops, head_params = [], []
        for name in anchor.task_names:
            head = anchor.heads[name]
            head_flops.append(count_flops(head, last, *skips))
            head_params.append(count_params(head))
        return cls(
            tuple(block_flops), tuple(block_params), tuple(head_flops), tuple(head_params),
            (backbone.in_channels, *backbone.input_size),
        )

    @property
    def n_layers(self) -> int:
        return len(self.block_flops)

    @property
    def n_tasks(self) -> int:
        return len(self.head_flops)

    def tree_flops(self, assignment: Sequence[Sequence[int]]) -> int:
        """Per-image FLOPs of a tree: each distinct node once, every head once."""
        return sum(len(set(row)) * f for row, f in zip(assignment, self.block_flops)) + sum(self.head_flops)

    def tree_params(self, assignment: Sequence[Sequence[int]]) -> int:
        return sum(len(set(row)) * p for row, p in zip(assignment, self.block_params)) + sum(self.head_params)

    @property
    def anchor_flops(self) -> int:
        """The full anchor: N streams and N heads."""
        return self.n_tasks * sum(self.block_flops) + sum(self.head_flops)

    @property
    def anchor_params(self) -> int:
        return self.n_tasks * sum(self.block_params) + sum(self.head_params)

    @property
    def min_flops(self) -> int:
        """The cheapest tree: one stream shared by all tasks, plus the heads."""
        return sum(self.block_flops) + sum(self.head_flops)

    @property
    def min_budget(self) -> float:
        """The smallest budget (fraction of the anchor's FLOPs) any tree can meet."""
        return self.min_flops / self.anchor_flops

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostTable:
        return cls(**{k: tuple(int(x) for x in v) for k, v in data.items()})


def shrink_to_budget(
    assignment: Sequence[Sequence[int]],
    max_flops: float,
    table: CostTable,
    preference: Sequence[float],
    affinity: np.ndarray,
    path_losses: PathLosses | None = None,
) -> list[list[int]]:
    """Merge branches of a tree, least harmful first, until its FLOPs fit ``max_flops``.

    [choice] The paper steers cost only softly; this makes the budget a guarantee. One merge at layer
    ``l`` moves the tasks passing through node ``Y`` onto node ``X``'s path for layers ``0..l`` (their
    nodes above ``l`` stay), which keeps the tree valid and frees at least one node. Among all merges,
    the one with the least harm per FLOP saved is applied, where the harm of moving tasks ``M`` next to
    tasks ``K`` is ``sum_{k in M} (r_k + 0.1 / N) * (1.05 - mean_{m in K} Aff(k, m)) * changed_layers(k) / L``:
    low-preference tasks move first, onto their most similar tasks' features, changing few layers.
    Greedy merging always reaches the single-stream tree, the cheapest there is.

    With ``path_losses`` (:mod:`dymu.path_losses`), the harm is measured instead of guessed: each moved
    task's relative loss increase on its new path over its old one, ``sum_{k in M} (r_k + 0.1 / N) *
    (rise_k(new path) - rise_k(old path))``, with ``rise_k(p) = L_k(p) / L_k(own stream) - 1``; a merge that
    helps counts as harmless, and a merge is credited only with the FLOPs the budget still needs (measured,
    many merges are nearly harmless after the supernet stage, and the plain ratio took the tree far below the
    budget: 0.38 of the anchor's at budget 0.5 on fashion_digits). With solo streams in the table
    (:mod:`dymu.solo`), a task alone on its own stream is priced at its solo stream's loss, and a merge that
    ends a kept task's solitude adds that task's rise from its solo loss to the supernet's own-stream loss.

    Raises:
        ValueError: when ``max_flops`` is below the single-stream tree's FLOPs.
    """
    if max_flops < table.min_flops:
        raise ValueError(
            f"no tree fits {max_flops:.0f} FLOPs: the cheapest (one stream plus the heads) needs {table.min_flops}"
        )
    rows = [list(row) for row in assignment]
    n_layers, n_tasks = len(rows), len(rows[0])
    r = np.asarray(preference, dtype=float)
    aff = np.asarray(affinity, dtype=float)
    cost = table.tree_flops(rows)
    while cost > max_flops:
        if path_losses is not None:  # each task's rise on its current path, before any candidate merge
            alone = set(solo_tasks(rows))
            rise_now = [path_losses.rise(k, [row[k] for row in rows], k in alone) for k in range(n_tasks)]
        best: tuple[float, list[list[int]], int] | None = None
        for layer in range(n_layers):
            nodes = sorted(set(rows[layer]))
            for target in nodes:
                keep = [k for k in range(n_tasks) if rows[layer][k] == target]
                target_path = [rows[m][keep[0]] for m in range(layer + 1)]
                for source in nodes:
                    if source == target:
                        continue
                    moved = [k for k in range(n_tasks) if rows[layer][k] == source]
                    new = [row[:] for row in rows]
                    harm = 0.0
                    for k in moved:
                        changed = sum(new[m][k] != target_path[m] for m in range(layer + 1))
                        for m in range(layer + 1):
                            new[m][k] = target_path[m]
                        weight = r[k] + 0.1 / n_tasks
                        if path_losses is None:
                            similarity = float(aff[k, keep].mean())
                            harm += weight * (1.05 - similarity) * changed / n_layers
                        else:
                            harm += weight * (path_losses.relative_increase(k, [row[k] for row in new]) - rise_now[k])
                    if path_losses is not None:
                        for k in keep:  # a kept task that was alone now shares its stream with the moved ones
                            if k in alone:
                                harm += (r[k] + 0.1 / n_tasks) * (path_losses.rise(k, [row[k] for row in rows], alone=False) - rise_now[k])
                    new_cost = table.tree_flops(new)
                    saved = cost - new_cost
                    if saved <= 0:
                        continue
                    if path_losses is None:
                        score = (harm / saved, 0)
                    else:
                        # FLOPs saved beyond what the budget still needs buy nothing: a merge that measures
                        # harmless must not take the tree far below the budget; ties: the least overshoot
                        score = ((max(harm, 0.0) + 1e-9) / min(saved, cost - max_flops), saved)
                    if best is None or score < best[0]:
                        best = (score, new, new_cost)
        if best is None:  # only when every block costs 0 FLOPs, which min_flops would have caught
            raise RuntimeError(f"no merge lowers the cost of {rows}; the cost table is {table}")
        _, rows, cost = best
    return rows


def merged_anchor(table: CostTable, budget: float, preference: Sequence[float], affinity: np.ndarray,
                  path_losses: PathLosses | None = None, fill: bool = False) -> tuple[tuple[int, ...], ...]:
    """The merge search's tree for one request: the anchor merged by :func:`shrink_to_budget` until it costs at
    most ``budget`` (a fraction of the anchor's FLOPs, heads included) -> ``assignment [L][N]``; the harm
    measured when ``path_losses`` is given; then, with ``fill`` (which needs them), :func:`fill_budget`."""
    if fill and path_losses is None:
        raise ValueError("fill=True spends the budget on measured gains: it needs path_losses")
    anchor = [list(range(table.n_tasks)) for _ in range(table.n_layers)]
    rows = shrink_to_budget(anchor, budget * table.anchor_flops, table, preference, affinity, path_losses)
    if fill:
        rows = fill_budget(rows, budget * table.anchor_flops, table, preference, path_losses)
    return tuple(tuple(row) for row in rows)


def priced_rise(assignment: Sequence[Sequence[int]], preference: Sequence[float], path_losses: PathLosses) -> float:
    """The measured search's price of a tree: ``sum_k (r_k + 0.1 / N) * rise_k(path_k)``, each task's relative loss
    increase on its path over its own stream (:meth:`PathLosses.rise`; a task alone on its own stream at its solo
    loss when the table has solo losses). The anchor tree without solo losses prices 0; lower is better."""
    return _price(preference, tree_rises(assignment, path_losses))


def tree_rises(assignment: Sequence[Sequence[int]], path_losses: PathLosses) -> np.ndarray:
    """``[N]`` every task's measured relative loss increase on its path of ``assignment [L][N]`` over its own stream,
    as :func:`priced_rise` prices them (a task alone on its own stream at its solo loss when the table has them)."""
    alone = set(solo_tasks(assignment))
    return np.array([path_losses.rise(k, [row[k] for row in assignment], k in alone) for k in range(len(assignment[0]))])


def priced_own_tree(index: int, preference: Sequence[float], path_losses: PathLosses) -> float:
    """:func:`priced_rise` of own tree ``index`` of ``path_losses`` (:attr:`~dymu.path_losses.PathLosses.own_trees`),
    each task's rise its measured loss on the own tree's weights over its own stream."""
    return _price(preference, [path_losses.own_tree_rise(index, k) for k in range(path_losses.n_tasks)])


def price_weights(preference: Sequence[float]) -> np.ndarray:
    """Each task's weight in the searches' price, ``r_k + 0.1 / N`` for a preference ``[N]`` -> ``[N]``: every task
    counts a little, whatever the preference."""
    r = np.asarray(preference, dtype=float)
    return r + 0.1 / len(r)


def _price(preference: Sequence[float], rises: Sequence[float]) -> float:
    """``sum_k (r_k + 0.1 / N) * rises[k]`` (:func:`price_weights`)."""
    return float(sum(w * rise for w, rise in zip(price_weights(preference), rises)))


#: a node with more children than this offers each child alone as a split, not every union of children
MAX_CHILDREN_UNIONS = 8


def _splits(rows: Sequence[Sequence[int]]) -> list[list[list[int]]]:
    """Every tree one split away from ``rows``. A split takes a node shared at layer ``l`` and a union ``M`` of some,
    not all, of its children (the nodes its tasks read at layer ``l + 1``; at the last layer, the tasks' heads), and
    gives ``M`` fresh nodes of one stream ``s`` unused at those layers, from a layer ``start <= l`` up to ``l``:
    ``l - start + 1`` more nodes. Above ``l`` no task outside ``M`` reads ``M``'s nodes, below ``start`` nothing changes."""
    n_layers, n_tasks = len(rows), len(rows[0])
    out = []
    for layer in range(n_layers):
        for node in set(rows[layer]):
            group = [k for k in range(n_tasks) if rows[layer][k] == node]
            if len(group) < 2:
                continue
            if layer + 1 < n_layers:
                children = [tuple(k for k in group if rows[layer + 1][k] == child)
                            for child in sorted({rows[layer + 1][k] for k in group})]
            else:
                children = [(k,) for k in group]
            if len(children) < 2:
                continue
            if len(children) <= MAX_CHILDREN_UNIONS:
                chosen = [c for size in range(1, len(children)) for c in itertools.combinations(children, size)]
            else:
                chosen = [(c,) for c in children]
            for parts in chosen:
                moved = [k for part in parts for k in part]
                for start in range(layer + 1):
                    used = set().union(*(set(rows[m]) for m in range(start, layer + 1)))
                    for stream in range(n_tasks):
                        if stream in used:
                            continue
                        new = [list(row) for row in rows]
                        for m in range(start, layer + 1):
                            for k in moved:
                                new[m][k] = stream
                        out.append(new)
    return out


def fill_budget(
    assignment: Sequence[Sequence[int]],
    max_flops: float,
    table: CostTable,
    preference: Sequence[float],
    path_losses: PathLosses,
) -> list[list[int]]:
    """Spend what the budget leaves: split shared nodes, the most measured gain per FLOP first, while a split fits
    ``max_flops`` and lowers the tree's :func:`priced_rise`.

    [choice] beyond the paper. :func:`shrink_to_budget` merges until the tree fits, and its last merge often frees
    far more than the budget needed: on fashion_digits the measured search's trees cost 0.23 and 0.40 of the anchor's
    FLOPs at budgets 0.3 and 0.5, the cheapest tree at 0.3 for almost every preference. A split (see :func:`_splits`)
    gives some of a shared node's subtrees fresh nodes of one unused stream from some layer up to that node's; it is priced on the same
    measured path losses as the merges, so a split is taken only where it measures better, and the preference
    weights decide whose split that is. Never raises the cost above ``max_flops`` nor the price.

    >>> from dymu.path_losses import PathLosses
    >>> table = CostTable((10, 10), (1, 1), (1, 1), (1, 1), (1, 4, 4))
    >>> losses = np.full((4, 2), 2.0); losses[0, 0] = losses[3, 1] = 1.0   # each task best on its own stream
    >>> losses[1, 1] = 1.5                     # task 1 reading stream 0, then its own block: better than stream 0 only
    >>> fill_budget([[0, 0], [0, 0]], 35, table, [0.5, 0.5], PathLosses(2, 2, losses))   # room for one more node
    [[0, 0], [0, 1]]
    >>> fill_budget([[0, 0], [0, 0]], 45, table, [0.5, 0.5], PathLosses(2, 2, losses))   # room for the anchor tree
    [[0, 1], [0, 1]]
    """
    rows = [list(row) for row in assignment]
    price, cost = priced_rise(rows, preference, path_losses), table.tree_flops(rows)
    while True:
        best: tuple[float, list[list[int]], float, int] | None = None
        for new in _splits(rows):
            new_cost = table.tree_flops(new)
            if new_cost > max_flops or new_cost <= cost:
                continue
            new_price = priced_rise(new, preference, path_losses)
            gain = price - new_price
            if gain <= 1e-12:
                continue
            if best is None or gain / (new_cost - cost) > best[0]:
                best = (gain / (new_cost - cost), new, new_price, new_cost)
        if best is None:
            return rows
        _, rows, price, cost = best

