"""Static affinity trees at the controller's budgets: the rival of "dynamic beats static at equal cost".

One :class:`~benchmarks.baselines.StaticTree` per budget ``b``, each the largest affinity tree whose FLOPs
fit ``b`` times the anchor's, heads included (the budget the controller's ``build_model`` guarantees), each
trained jointly on the equal preference for the run's total steps (each tree alone answers its budget:
:data:`benchmarks.protocol.TRAINING_BUDGET_RULE`).

>>> from dymu.budget import CostTable
>>> table = CostTable((10, 10), (1, 1), (5, 5, 5), (1, 1, 1), (1, 8, 8))   # 3 tasks, 2 layers, anchor 75 FLOPs
>>> extra_share_for_budget(table, 0.6)                              # 0.6 x 75 - 15 = 30 = 20 + 0.25 x 40
0.25
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from affinity.rsa import AffinityResult
from dymu.budget import CostTable
from dymu.tasks import Task

from ..methods import Method, StepBudget
from .common import BackboneFactory
from .static_tree import StaticTree

__all__ = ["StaticTreesAtBudgets", "extra_share_for_budget"]


def extra_share_for_budget(table: CostTable, budget: float) -> float:
    """The :func:`affinity.branching_tree` ``extra_share`` (of the extra block FLOPs over one stream) whose
    tree costs at most ``budget`` times the anchor's FLOPs, heads included.

    Raises:
        ValueError: a budget below one stream plus the heads.
    """
    one_stream = sum(table.block_flops)
    allowed_blocks = budget * table.anchor_flops - sum(table.head_flops)
    if allowed_blocks < one_stream - 1e-9:
        raise ValueError(f"budget {budget} is below the cheapest tree ({table.min_budget:.4f} of the anchor's FLOPs)")
    extra = (table.n_tasks - 1) * one_stream
    return float(min(1.0, (allowed_blocks - one_stream) / extra)) if extra > 0 else 0.0


class StaticTreesAtBudgets(Method):
    """One static affinity tree per budget; ``model_for(r, budget=b)`` returns the tree of budget ``b``.

    Args:
        backbone_factory, tasks, steps, affinity: as for :class:`StaticTree`.
        cost_table: the controller's cost table (the anchor's FLOPs the budgets are fractions of).
        budgets: the budgets (each at least the table's minimum budget).
        options: keyword arguments of every :class:`StaticTree` (``loss_scales``, ``seed``, ...).

    Attributes:
        budget_settings: the budgets the protocol asks this method at (one setting per budget).
        trees: ``{budget: StaticTree}``.
    """

    name = "static_equal_cost"
    dynamic_cost = True

    def __init__(
        self,
        backbone_factory: BackboneFactory,
        tasks: Sequence[Task],
        steps: StepBudget,
        affinity: AffinityResult | np.ndarray,
        cost_table: CostTable,
        budgets: Sequence[float],
        **options: Any,
    ):
        super().__init__()
        self.budget_settings = tuple(float(b) for b in budgets)
        self.trees = {
            b: StaticTree(backbone_factory, tasks, steps, affinity, extra_share_for_budget(cost_table, b),
                          name=f"static_tree@{b:g}", **options)
            for b in self.budget_settings
        }
        self.cost_table = cost_table

    def fit(self, train, val, *, device, verbose: bool = True) -> None:
        start = time.time()
        for tree in self.trees.values():
            tree.fit(train, val, device=device, verbose=verbose)
        self.train_seconds = time.time() - start

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        if budget is None or float(budget) not in self.trees:
            raise ValueError(f"{self.name}: a budget among {list(self.trees)} is needed, got {budget}")
        return self.trees[float(budget)].model_for(preference)

    def stored_modules(self) -> Sequence[nn.Module]:
        return [m for tree in self.trees.values() for m in tree.stored_modules()]
