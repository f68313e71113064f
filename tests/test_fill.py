"""The fill search: what the measured merge search leaves of the budget goes to the splits that measure best."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from affinity.tree import Tree
from dymu.budget import CostTable, fill_budget, merged_anchor, priced_rise, shrink_to_budget
from dymu.path_losses import PathLosses, path_index
from dymu.planner import Planner
from hyper import EdgeHypernet

N_TASKS, N_LAYERS = 4, 3
TABLE = CostTable(block_flops=(40, 100, 60), block_params=(1, 1, 1), head_flops=(5,) * N_TASKS, head_params=(1,) * N_TASKS,
                  input_shape=(1, 8, 8))


def _random_losses(seed: int, solo: bool = False) -> PathLosses:
    """Every task best on its own stream, worse the more of its path another stream runs (with noise)."""
    rng = np.random.default_rng(seed)
    losses = np.empty((N_TASKS**N_LAYERS, N_TASKS))
    for path in itertools.product(range(N_TASKS), repeat=N_LAYERS):
        for k in range(N_TASKS):
            foreign = sum(node != k for node in path)
            losses[path_index(path, N_TASKS), k] = 1.0 + 0.3 * foreign * rng.uniform(0.2, 1.5)
    return PathLosses(N_TASKS, N_LAYERS, losses, solo=rng.uniform(0.8, 1.0, N_TASKS) if solo else None)


def _is_tree(rows) -> bool:
    try:
        Tree([f"t{k}" for k in range(N_TASKS)], rows)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("seed", range(6))
def test_filling_keeps_the_budget_never_raises_the_price_and_spends_where_a_split_measures_better(seed):
    losses = _random_losses(seed, solo=seed % 2 == 0)
    rng = np.random.default_rng(100 + seed)
    for _ in range(5):
        preference = rng.dirichlet(np.ones(N_TASKS))
        budget = rng.uniform(TABLE.min_budget, 0.9)
        allowed = budget * TABLE.anchor_flops
        shrunk = merged_anchor(TABLE, budget, preference, np.ones((N_TASKS, N_TASKS)), losses)
        filled = fill_budget(shrunk, allowed, TABLE, preference, losses)
        assert _is_tree(filled)
        assert TABLE.tree_flops(shrunk) <= TABLE.tree_flops(filled) <= allowed
        assert priced_rise(filled, preference, losses) <= priced_rise(shrunk, preference, losses)
        # nothing left that fits and measures better: filling again changes nothing
        assert fill_budget(filled, allowed, TABLE, preference, losses) == filled


def test_the_preferred_task_gets_the_split_the_budget_leaves_room_for():
    # two tasks share stream 0; each gains the same from its own last block, and there is room for one block
    table = CostTable((10, 10), (1, 1), (1, 1), (1, 1), (1, 4, 4))
    losses = np.full((4, 2), 2.0)
    losses[path_index((0, 0), 2), 0] = 1.0
    losses[path_index((1, 1), 2), 1] = 1.0
    losses[path_index((1, 0), 2), 0] = 1.5   # task 0 on stream 1's first block, then stream 0's
    losses[path_index((0, 1), 2), 1] = 1.5   # task 1 on stream 0's first block, then its own
    paths = PathLosses(2, 2, losses)
    shared_on_1 = [[1, 1], [1, 1]]           # both on stream 1: task 0 gains from stream 0's last block
    assert fill_budget(shared_on_1, 35, table, [0.9, 0.1], paths) == [[1, 1], [0, 1]]
    shared_on_0 = [[0, 0], [0, 0]]
    assert fill_budget(shared_on_0, 35, table, [0.1, 0.9], paths) == [[0, 0], [0, 1]]
    # the budget leaves no room for a block: nothing changes
    assert fill_budget(shared_on_0, 25, table, [0.1, 0.9], paths) == shared_on_0


def test_a_split_that_measures_worse_is_not_taken_even_with_budget_to_spare():
    losses = PathLosses(2, 2, np.array([[1.0, 1.2], [3.0, 3.0], [3.0, 3.0], [3.0, 1.0]]))  # mixing streams hurts both
    table = CostTable((10, 10), (1, 1), (1, 1), (1, 1), (1, 4, 4))
    assert fill_budget([[0, 0], [0, 0]], 35, table, [0.5, 0.5], losses) == [[0, 0], [0, 0]]
    # with room for the whole of stream 1, task 1 takes it
    assert fill_budget([[0, 0], [0, 0]], 42, table, [0.5, 0.5], losses) == [[0, 1], [0, 1]]


def test_the_fill_search_plans_within_the_budget_at_no_higher_price_than_the_measured_search():
    losses = _random_losses(7, solo=True)
    edge = EdgeHypernet(N_TASKS, N_LAYERS)
    names = [f"t{k}" for k in range(N_TASKS)]
    planners = {s: Planner(edge, TABLE, names, None, "budget", s, losses) for s in ("measured", "fill")}
    rng = np.random.default_rng(3)
    for _ in range(10):
        preference = rng.dirichlet(np.ones(N_TASKS))
        budget = float(rng.uniform(TABLE.min_budget, 1.0))
        plans = {s: p.plan(preference, budget) for s, p in planners.items()}
        assert plans["fill"].search == "fill" and not plans["fill"].fallback
        assert plans["measured"].flops <= plans["fill"].flops <= budget * TABLE.anchor_flops
        price = {s: priced_rise(plan.tree.assignment, preference, losses) for s, plan in plans.items()}
        assert price["fill"] <= price["measured"] + 1e-12
    assert planners["fill"].plan(np.full(N_TASKS, 0.25), 1.0).tree == Tree.independent(names, N_LAYERS)


def test_fill_needs_measured_losses():
    with pytest.raises(ValueError, match="needs path_losses"):
        merged_anchor(TABLE, 0.5, [0.25] * 4, np.ones((4, 4)), None, fill=True)
    with pytest.raises(ValueError, match="'fill' search needs measured path losses"):
        Planner(EdgeHypernet(N_TASKS, N_LAYERS), TABLE, [f"t{k}" for k in range(N_TASKS)], None, "budget", "fill")


def test_shrinking_alone_can_leave_budget_unspent_that_filling_uses():
    # the situation fill exists for: the last merge frees more than the budget needs
    losses = _random_losses(1)
    preference = [0.7, 0.1, 0.1, 0.1]
    budget = 0.5
    shrunk = shrink_to_budget([list(range(N_TASKS))] * N_LAYERS, budget * TABLE.anchor_flops, TABLE, preference,
                              np.ones((N_TASKS, N_TASKS)), losses)
    filled = fill_budget(shrunk, budget * TABLE.anchor_flops, TABLE, preference, losses)
    assert TABLE.tree_flops(filled) > TABLE.tree_flops(shrunk)
    assert priced_rise(filled, preference, losses) < priced_rise(shrunk, preference, losses)
