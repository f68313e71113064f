"""python -m benchmarks.searches: a saved controller's planned costs per search, and the rises on foreign streams."""

from __future__ import annotations

import numpy as np
import pytest

from _tiny import trained_streams
from benchmarks.searches import planned_cost

pytestmark = pytest.mark.usefixtures("one_thread")


def test_planned_cost_is_the_mean_fraction_at_each_budget_and_leaves_the_search_as_it_was():
    ctrl, _ = trained_streams(3, steps=2)
    prefs = np.random.default_rng(0).dirichlet(np.ones(3), size=5)
    before = ctrl.search
    low = ctrl.min_budget
    costs = planned_cost(ctrl, "merge", [1.0, low, 0.6], prefs)
    assert costs[0] == pytest.approx(1.0) and costs[1] == pytest.approx(low) and low <= costs[2] <= 0.6
    assert ctrl.search == before


def test_own_tree_share_counts_the_requests_served_on_an_own_tree():
    from dataclasses import replace

    import dymu
    from benchmarks.searches import own_tree_share

    ctrl, data = trained_streams(3, n_batches=3, steps=2)
    config = dymu.SupernetConfig(steps=2, lr=1e-2, own_trees=(0.0,), tree_family="affinity")
    ctrl.fit_supernet(data, None, config=config, verbose=False)
    ctrl.search = "fill"
    table = ctrl.measure_paths(data, samples=64)
    cheapest = ctrl.own_trees.assignments[0]
    prefs = np.random.default_rng(0).dirichlet(np.ones(3), size=5)
    # priced at a tenth of every stream's loss, the one-stream own tree serves every request at every budget
    ctrl.path_losses = replace(table, own_trees=((cheapest, [table.own(k) * 0.1 for k in range(3)]),))
    ctrl._invalidate()
    assert own_tree_share(ctrl, [ctrl.min_budget * (1 + 1e-9), 1.0], prefs) == [1.0, 1.0]
    # priced at ten times, none
    ctrl.path_losses = replace(table, own_trees=((cheapest, [table.own(k) * 10 for k in range(3)]),))
    ctrl._invalidate()
    assert own_tree_share(ctrl, [ctrl.min_budget * (1 + 1e-9), 1.0], prefs) == [0.0, 0.0]


def test_the_own_tree_printout_sets_the_solo_streams_beside_the_own_trees(capsys):
    from dataclasses import replace

    import dymu
    from benchmarks.searches import _print_own_trees

    ctrl, data = trained_streams(3, n_batches=3, steps=2)
    ctrl.fit_supernet(data, None, config=dymu.SupernetConfig(steps=2, lr=1e-2, own_trees=(0.0,), tree_family="affinity"),
                      verbose=False)
    ctrl.search = "fill"
    table = ctrl.measure_paths(data, samples=64)
    prefs = np.random.default_rng(0).dirichlet(np.ones(3), size=5)
    _print_own_trees(ctrl, prefs)
    assert "solo streams" not in capsys.readouterr().out  # none trained: nothing to set beside
    ctrl.path_losses = replace(table, solo=np.array([table.own(k) * 0.5 for k in range(3)]))
    ctrl._invalidate()
    _print_own_trees(ctrl, prefs)
    out = capsys.readouterr().out
    assert ("1.000 of the anchor's FLOPs, the solo streams (trained alone for the same steps): "
            + ", ".join(f"{name} -50.0%" for name in ctrl.task_names)) in out


def test_control_at_budgets_measures_the_models_the_controller_builds():
    from benchmarks.searches import control_at_budgets

    ctrl, data = trained_streams(3, steps=2)
    ctrl.search = "merge"
    prefs = np.random.default_rng(0).dirichlet(np.ones(3), size=6)
    low = ctrl.min_budget
    full, tight = control_at_budgets(ctrl, ctrl.tasks, data, prefs, [1.0, low], data[0][0][:1])
    # budget 1: the anchor tree for every preference, so the metrics cannot follow the preference
    assert full["distinct_trees"] == 1 and full["most_served"] == 6
    assert full["controllability"] is None and full["per_task"] == [None] * 3
    assert full["flops_fraction"] == pytest.approx(1.0, rel=1e-3) and full["own_share"] == 0.0
    # the minimum budget: the one-stream trees, within the budget
    assert tight["flops_fraction"] <= low * (1 + 1e-6)
    assert tight["budget"] == low and len(tight["per_task"]) == 3
    assert tight["most_served"] * tight["distinct_trees"] >= 6 >= tight["most_served"]
