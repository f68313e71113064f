"""The edge hypernet's warm start on the merge search's trees: it reads no image, it makes the hypernet's trees
those of the merge search, and stage 1 starts from trees that follow the preference under a binding budget."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import dymu
from _tiny import tiny_tasks, trained_streams
from dymu.budget import shrink_to_budget
from dymu.warm_start import imitate_merge

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks


def _streams(n_tasks: int = 3) -> tuple[dymu.Controller, list]:
    return trained_streams(n_tasks)


def test_the_hypernet_learns_the_merge_search_trees_without_an_image():
    ctrl, _ = _streams()
    ctrl.edge.anchor_at_zero.fill_(True)
    result = imitate_merge(ctrl.edge, ctrl.cost_table, ctrl._affinity_matrix(), steps=500, requests=1024, seed=3)
    assert result["match_after"] >= 0.8 > result["match_before"], result
    assert result["row_match_after"] >= 0.95
    # what the planner builds from the warmed hypernet is the merge search's tree for most requests
    table, rng = ctrl.cost_table, np.random.default_rng(7)
    anchor = [list(range(3))] * table.n_layers
    same = 0
    for _ in range(20):
        r = rng.dirichlet(np.ones(3))
        budget = table.min_budget + (1 - table.min_budget) * float(rng.uniform(0.05, 0.95))
        planned = ctrl.plan(r, budget).tree.assignment
        same += [list(row) for row in planned] == shrink_to_budget(anchor, budget * table.anchor_flops, table, r,
                                                                   ctrl._affinity_matrix())
    assert same >= 14, same


def test_stage1_starts_from_preference_following_trees_and_records_the_warm_start():
    ctrl, data = _streams()
    config = dymu.EdgeConfig(steps=1, warm_start="merge", warm_start_steps=300)
    ctrl.fit_edge(data, config=config, verbose=False)
    warm = ctrl.stages["edge"]["warm_start"]
    assert warm["steps"] == 300 and warm["match_after"] > warm["match_before"]
    budget = ctrl.min_budget + 0.4 * (1 - ctrl.min_budget)
    prefs = [np.eye(3)[k] * 0.8 + 0.1 for k in range(3)] + [np.array([0.45, 0.45, 0.1]), np.array([0.1, 0.45, 0.45]),
                                                             np.array([0.45, 0.1, 0.45])]
    trees = {tuple(map(tuple, ctrl.plan(r / r.sum(), budget).tree.assignment)) for r in prefs}
    assert len(trees) >= 3, trees


def test_the_warm_start_needs_the_budget_mode_and_a_known_name():
    with pytest.raises(ValueError, match="needs control='budget'"):
        dymu.EdgeConfig(control="paper", warm_start="merge")
    with pytest.raises(ValueError, match="warm_start must be"):
        dymu.EdgeConfig(warm_start="planner")
    with pytest.raises(ValueError, match="warm_start_steps"):
        dymu.EdgeConfig(warm_start="merge", warm_start_steps=-1)


def test_same_seed_same_warm_start_whatever_ran_before():
    ctrl, _ = _streams()
    ctrl.edge.anchor_at_zero.fill_(True)
    first, second = copy.deepcopy(ctrl.edge), copy.deepcopy(ctrl.edge)
    imitate_merge(first, ctrl.cost_table, ctrl._affinity_matrix(), steps=20, requests=64, held_out=16, seed=5)
    torch.randn(100), np.random.rand(10)  # other draws in the process change nothing
    imitate_merge(second, ctrl.cost_table, ctrl._affinity_matrix(), steps=20, requests=64, held_out=16, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with pytest.raises(ValueError, match="must come from one controller"):
        imitate_merge(dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(2), seed=0).edge, ctrl.cost_table,
                      None, steps=1)


def test_a_resumed_stage1_loads_the_hypernet_it_reached_without_warming_it_again(tmp_path, monkeypatch):
    ctrl, data = _streams()
    first = copy.deepcopy(ctrl)
    config = dymu.EdgeConfig(steps=2, warm_start="merge", warm_start_steps=50)
    first.fit_edge(data, config=config, checkpoint=tmp_path, verbose=False)
    assert first.stages["edge"]["warm_start"]["steps"] == 50
    import dymu.controller as controller_module
    monkeypatch.setattr(controller_module, "imitate_merge", lambda *a, **k: pytest.fail("warm start on resume"))
    second = copy.deepcopy(ctrl)
    second.fit_edge(data, config=config, checkpoint=tmp_path, resume=True, verbose=False)
    for key, tensor in first.edge.state_dict().items():
        assert torch.equal(tensor, second.edge.state_dict()[key]), key
