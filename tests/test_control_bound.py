"""python -m benchmarks.control_bound: the control a choice of tree can give, predicted from the measured path losses."""

from __future__ import annotations

import numpy as np
import pytest

from _tiny import trained_streams
from benchmarks.control_bound import _spearman_per_task, control_bound, most_control_choice, tree_pool, weighted_loss_choice

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_local_search_never_lowers_the_mean_rank_correlation_it_starts_from():
    rng = np.random.default_rng(0)
    rises = rng.random((7, 4))
    prefs = rng.dirichlet(np.ones(4), size=12)
    start = weighted_loss_choice(rises, prefs)
    found = most_control_choice(rises, prefs, start)
    ranks = np.argsort(np.argsort(prefs, axis=0), axis=0).astype(float)
    assert _spearman_per_task(ranks, rises[found]).mean() >= _spearman_per_task(ranks, rises[start]).mean()
    # a second pass from its own answer keeps it: a local optimum
    assert most_control_choice(rises, prefs, found).tolist() == found.tolist()


def test_the_weighted_loss_choice_is_the_lowest_priced_tree_with_every_task_counting_a_little():
    rises = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.0]])
    # half the preference on task 0, yet tree 1 prices lower (0.267 against 0.283: tasks 1 and 2 lose nothing on it);
    # all of it on task 0: tree 0 (0.033 against 0.517)
    prefs = np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    assert weighted_loss_choice(rises, prefs).tolist() == [1, 0]


def test_control_bound_predicts_from_the_path_losses_of_the_trees_within_the_budget():
    ctrl, data = trained_streams(3, steps=2)
    ctrl.search = "measured"
    ctrl.measure_paths(data, samples=64)
    prefs = np.random.default_rng(0).dirichlet(np.ones(3), size=8)
    cost = np.random.default_rng(1).dirichlet(np.ones(3), size=20)
    tight = (ctrl.min_budget + 1.0) / 2
    pool = tree_pool(ctrl, tight, np.vstack([prefs, cost]))
    assert pool and all(ctrl.cost_table.tree_flops(a) <= tight * ctrl.cost_table.anchor_flops for a in pool)
    assert ctrl.search == "measured"
    full, mid = control_bound(ctrl, [1.0, tight], prefs, cost, sharpness=(3,))
    # budget 1: every search gives the anchor tree, whose losses are every task's own: nothing follows the preference
    assert full["pool"] == 1
    for rule in full["rules"].values():
        assert rule["evaluation"] == (None, [None, None, None]) and rule["trees"] == 1 and rule["price"] == 0.0
    rules = mid["rules"]
    assert list(rules) == ["planned", "weighted loss", "weighted loss, r^3", "most control found"]
    assert rules["most control found"]["cost"] is None and rules["weighted loss, r^3"]["cost"] is not None
    # the weighted-loss rule picks the cheapest price among the pool, so it pays no more than the controller's plans
    # (which are in the pool), nor than the sharpened rule, priced alike
    assert rules["weighted loss"]["price"] <= min(rules["planned"]["price"], rules["weighted loss, r^3"]["price"]) + 1e-12
    assert rules["most control found"]["price"] >= rules["weighted loss"]["price"] - 1e-12


def test_control_bound_names_what_it_needs_when_no_path_losses_were_measured():
    ctrl, _ = trained_streams(3, steps=2)
    prefs = np.random.default_rng(0).dirichlet(np.ones(3), size=4)
    with pytest.raises(ValueError, match="no measured path losses"):
        control_bound(ctrl, [0.6], prefs, prefs)


def test_the_command_names_a_missing_controller_file_and_a_budget_outside_the_range(tmp_path, capsys):
    from benchmarks.control_bound import main

    missing = tmp_path / "seed0-dymu.pt"
    with pytest.raises(SystemExit):
        main([str(missing), "--benchmark", "fashion_digits", "--budgets", "0.5"])
    assert f"no controller file at {missing}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(missing), "--benchmark", "fashion_digits", "--budgets", "0.5", "1.5"])
    assert "--budgets must lie in (0, 1], got [1.5]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(missing), "--benchmark", "fashion_digits", "--budgets", "0.5", "--sharpness", "2", "-1"])
    assert "--sharpness must be positive and finite, got [-1.0]" in capsys.readouterr().err
