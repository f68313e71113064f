"""The nested affinity trees with one stream per group, and the supernet sandwich drawn from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dymu
from _tiny import trained_streams
from affinity.tree import Tree
from dymu.budget import CostTable
from dymu.family import affinity_family, consistent_streams
from dymu.supernet import SandwichTrees

AFFINITY = np.array([[1.0, 0.8, 0.3, 0.1], [0.8, 1.0, 0.2, 0.1], [0.3, 0.2, 1.0, 0.6], [0.1, 0.1, 0.6, 1.0]])
TABLE = CostTable(block_flops=(40, 100, 60), block_params=(1, 1, 1), head_flops=(5,) * 4, head_params=(1,) * 4,
                  input_shape=(1, 8, 8))
NAMES = ["a", "b", "c", "d"]


def _groups(rows) -> list[set[frozenset[int]]]:
    return [{frozenset(k for k in range(len(row)) if row[k] == node) for node in set(row)} for row in rows]


def test_renaming_keeps_the_tree_and_gives_each_group_one_stream_from_the_input_up():
    rows = [[7, 7, 7, 7], [3, 3, 9, 9], [3, 5, 9, 9]]
    renamed = consistent_streams(rows, AFFINITY)
    assert Tree(NAMES, renamed).same_structure(Tree(NAMES, rows))   # the same tree, other names (ids unique per layer)
    assert renamed[0] == (0, 0, 0, 0)                  # the root runs its most central task's stream (a: 0.8 + 0.3 + 0.1)
    for layer in range(1, len(rows)):
        for group in _groups(renamed)[layer]:
            stream = renamed[layer][next(iter(group))]
            assert stream in group                     # every node runs one of its own tasks' streams
            parent = renamed[layer - 1][next(iter(group))]
            if parent in group:
                assert stream == parent                # and keeps its parent's stream where it can


def test_the_family_runs_from_one_stream_to_the_anchor_each_tree_refining_the_one_before():
    family = affinity_family(TABLE, AFFINITY)
    costs = [flops for _, flops in family]
    assert costs == sorted(costs) and costs[0] == TABLE.min_flops and costs[-1] == TABLE.anchor_flops
    for (cheaper, _), (richer, _) in zip(family, family[1:]):
        for coarse, fine in zip(_groups(cheaper), _groups(richer)):
            assert all(any(g <= c for c in coarse) for g in fine)   # every node of the richer tree lies in one of the cheaper's
    # one stream per group across the family: a node of stream s serves the same tasks or a union of them
    servers: dict[tuple[int, int], list[frozenset[int]]] = {}
    for rows, _ in family:
        for layer, row in enumerate(rows):
            for node in set(row):
                servers.setdefault((layer, node), []).append(frozenset(k for k in range(4) if row[k] == node))
    for groups in servers.values():
        assert all(a <= b or b <= a for a in groups for b in groups)   # nested, never crossing


def test_the_sandwich_draws_the_family_tree_of_the_budget_and_the_familys_one_stream_tree():
    trees = SandwichTrees(TABLE, AFFINITY, budget_trees=3, dirichlet_alpha=1.0, rng=np.random.default_rng(0),
                          family="affinity")
    family = dict(affinity_family(TABLE, AFFINITY))
    drawn_costs = set()
    for _ in range(30):
        drawn = trees.draw()
        assert drawn[0][0] == tuple(tuple(range(4)) for _ in range(3))
        assert drawn[1][0] == min(family, key=family.get)          # always the family's one-stream tree
        for rows, r in drawn[2:]:
            assert rows in family and np.isclose(r.sum(), 1.0)
            drawn_costs.add(family[rows])
    assert len(drawn_costs) >= 4                                    # trees across the budget range
    assert trees.family_tree(1.0) == tuple(tuple(range(4)) for _ in range(3))
    assert trees.family_tree(TABLE.min_budget) == min(family, key=family.get)


def test_with_drawn_one_stream_trees_every_stream_serves_every_task_and_the_budget_trees_stay_the_familys():
    trees = SandwichTrees(TABLE, AFFINITY, budget_trees=2, dirichlet_alpha=1.0, rng=np.random.default_rng(0),
                          family="affinity", one_stream="drawn")
    family = dict(affinity_family(TABLE, AFFINITY))
    streams = set()
    for _ in range(30):
        drawn = trees.draw()
        one = drawn[1][0]
        assert all(row == one[0] and len(set(row)) == 1 for row in one)
        streams.add(one[0][0])
        assert all(rows in family for rows, _ in drawn[2:])
    assert streams == {0, 1, 2, 3}


def test_an_unknown_tree_family_is_refused():
    with pytest.raises(ValueError, match="tree_family must be one of"):
        dymu.SupernetConfig(tree_family="random")
    with pytest.raises(ValueError, match="family must be one of"):
        SandwichTrees(TABLE, AFFINITY, 1, 1.0, np.random.default_rng(0), family="random")
    with pytest.raises(ValueError, match="family_one_stream must be one of"):
        dymu.SupernetConfig(tree_family="affinity", family_one_stream="all")


@pytest.mark.usefixtures("one_thread")
def test_the_supernet_stage_trains_on_the_affinity_family():
    ctrl, data = trained_streams(3, n_batches=4, steps=20)
    before = {k: v.clone() for k, v in ctrl.anchor.state_dict().items()}
    config = dymu.SupernetConfig(steps=4, tree_family="affinity", distill="none", solo=True)
    ctrl.fit_supernet(data, None, config=config, verbose=False)
    after = ctrl.anchor.state_dict()
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before if before[k].is_floating_point())
    assert ctrl.stages["supernet"]["config"]["tree_family"] == "affinity"


def test_the_family_search_keeps_the_budget_and_prices_no_higher_than_fill_and_sometimes_lower():
    from hyper import EdgeHypernet
    from dymu.budget import priced_rise
    from dymu.planner import Planner
    from test_fill import N_LAYERS, N_TASKS, _random_losses
    from test_fill import TABLE as FILL_TABLE

    names = [f"t{k}" for k in range(N_TASKS)]
    lower = 0
    for seed in range(5):
        losses = _random_losses(seed, solo=seed % 2 == 0)
        edge = EdgeHypernet(N_TASKS, N_LAYERS)
        planners = {s: Planner(edge, FILL_TABLE, names, AFFINITY, "budget", s, losses) for s in ("fill", "family")}
        rng = np.random.default_rng(seed)
        for _ in range(20):
            preference, budget = rng.dirichlet(np.ones(N_TASKS)), float(rng.uniform(FILL_TABLE.min_budget, 1.0))
            plans = {s: p.plan(preference, budget) for s, p in planners.items()}
            assert plans["family"].search == "family" and not plans["family"].fallback
            assert plans["family"].flops <= budget * FILL_TABLE.anchor_flops
            price = {s: priced_rise(plan.tree.assignment, preference, losses) for s, plan in plans.items()}
            assert price["family"] <= price["fill"] + 1e-12
            lower += price["family"] < price["fill"] - 1e-12
        assert planners["family"].plan(np.full(N_TASKS, 0.25), 1.0).tree == Tree.independent(names, N_LAYERS)
    assert lower > 0  # a greedy merge from the anchor misses some family trees the path table prices lower


def test_the_family_search_needs_measured_losses():
    from dymu.planner import Planner
    from hyper import EdgeHypernet
    with pytest.raises(ValueError, match="'family' search needs measured path losses"):
        Planner(EdgeHypernet(4, 3), TABLE, NAMES, AFFINITY, "budget", "family")


def test_the_supernet_stage_on_the_family_is_selected_on_the_family_trees():
    import copy

    ctrl, data = trained_streams(4, n_batches=2, steps=2)
    batches = ctrl._validation_batches(data[:1], 64)
    before = copy.deepcopy(ctrl)
    on_family, on_merges = before._supernet_score(batches, "affinity"), before._supernet_score(batches, "merge")
    # by hand: the mean over the requests of sum_i r_i w_i L_i on each budget's family tree
    family = affinity_family(ctrl.cost_table, np.asarray(ctrl.affinity.matrix))
    by_hand = []
    for r, budget in before.supernet_requests():
        rows = max((t for t in family if t[1] <= budget * ctrl.cost_table.anchor_flops), key=lambda t: t[1])[0]
        losses = before._tree_losses(rows, None, batches, torch.device("cpu"))
        by_hand.append(float((torch.as_tensor(r, dtype=torch.float32) * before.loss_scales * losses).sum()))
    assert on_family == pytest.approx(np.mean(by_hand), rel=1e-6) and on_family != pytest.approx(on_merges)
    ctrl.fit_supernet(data, data[:1], config=dymu.SupernetConfig(steps=2, tree_family="affinity"), verbose=False,
                      val_samples=64)
    assert ctrl.stages["supernet"]["selection"]["initial_score"] == pytest.approx(on_family)
