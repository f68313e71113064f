"""The measured search: every task's loss along every path of streams, and the merge search priced by it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import dymu
from _tiny import tiny_batches, tiny_tasks, trained_streams
from dymu.anchor import tree_losses
from dymu.budget import CostTable, shrink_to_budget
from dymu.path_losses import PathLosses, measure_path_losses, path_index
from dymu.planner import Planner

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks


def _streams(n_tasks: int = 3, steps: int = 3) -> tuple[dymu.Controller, list]:
    return trained_streams(n_tasks, steps=steps)


def test_each_path_loss_is_the_loss_of_the_tree_that_runs_every_task_on_that_path():
    ctrl, data = _streams()
    table = measure_path_losses(ctrl.anchor, ctrl.tasks, data, torch.device("cpu"))
    assert table.losses.shape == (3**4, 3) and table.samples == 64
    for path in [(0, 0, 0, 0), (2, 2, 2, 2), (1, 0, 2, 0), (0, 1, 1, 2)]:
        single_stream_tree = [[node] * 3 for node in path]
        expected = tree_losses(ctrl.anchor, ctrl.tasks, single_stream_tree, data, torch.device("cpu"))
        torch.testing.assert_close(torch.as_tensor(table.losses[path_index(path, 3)], dtype=torch.float32), expected)


def test_a_table_of_the_wrong_shape_or_with_a_nan_is_refused_and_a_good_one_round_trips():
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        PathLosses(2, 2, np.ones((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        PathLosses(2, 2, np.array([[1.0, 1.0], [1.0, np.nan], [1.0, 1.0], [1.0, 1.0]]))
    table = PathLosses(2, 2, np.arange(8.0).reshape(4, 2) + 1, samples=10)
    again = PathLosses.from_dict(table.to_dict())
    assert np.array_equal(again.losses, table.losses) and again.samples == 10


def _table_preferring_a_full_merge(n_layers: int = 3) -> PathLosses:
    """Two tasks; task 1 loses 50% on any path that mixes streams and only 5% on stream 0 all the way up."""
    losses = np.ones((2**n_layers, 2))
    for path in itertools.product((0, 1), repeat=n_layers):
        row = path_index(path, 2)
        losses[row, 0] = 1.0 if all(p == 0 for p in path) else 1.5
        losses[row, 1] = 1.0 if all(p == 1 for p in path) else (1.05 if all(p == 0 for p in path) else 1.5)
    return PathLosses(2, n_layers, losses)


def test_the_merge_search_follows_the_measured_harm_where_the_guess_from_depth_misleads():
    table = CostTable(block_flops=(300, 100, 100), block_params=(1, 1, 1), head_flops=(1, 1), head_params=(1, 1),
                      input_shape=(1, 8, 8))
    anchor = [[0, 1]] * 3
    affinity = np.ones((2, 2))
    r = [0.5, 0.5]
    budget = table.tree_flops([[0, 0], [0, 1], [0, 1]])  # room to free exactly one node
    guessed = shrink_to_budget(anchor, budget, table, r, affinity)
    measured = shrink_to_budget(anchor, budget, table, r, affinity, _table_preferring_a_full_merge())
    # the guess changes the fewest layers: task 1 reads stream 0's first block under its own upper blocks
    assert guessed == [[0, 0], [0, 1], [0, 1]]
    # measured, that mixed path costs task 1 50%; it rather runs task 1 on stream 0 all the way (5%)
    assert measured == [[0, 0], [0, 0], [0, 0]]


def _additive_table(rng: np.random.Generator, n_tasks: int = 3, n_layers: int = 4) -> PathLosses:
    """Task ``k`` loses ``w[k, l]`` for every layer ``l`` its path leaves its own stream (streams trained apart)."""
    w = rng.uniform(0.05, 1.0, size=(n_tasks, n_layers))
    losses = np.ones((n_tasks**n_layers, n_tasks))
    for path in itertools.product(range(n_tasks), repeat=n_layers):
        losses[path_index(path, n_tasks)] = [1 + sum(w[k, l] for l, p in enumerate(path) if p != k) for k in range(n_tasks)]
    return PathLosses(n_tasks, n_layers, losses)


def test_under_a_binding_budget_each_task_fares_best_when_it_is_preferred():
    ctrl, _ = _streams()
    for seed in range(5):
        table = _additive_table(np.random.default_rng(seed))
        planner = Planner(ctrl.edge, ctrl.cost_table, ctrl.task_names, None, "budget", "measured", table)
        for fraction in (0.1, 0.35, 0.6):
            budget = ctrl.min_budget + fraction * (1 - ctrl.min_budget)
            rise = np.zeros((3, 3))  # [preferred task, task]: the task's loss rise on its path in that tree
            for focus in range(3):
                r = np.full(3, 0.05)
                r[focus] = 0.9
                tree = planner.plan(r, budget).tree.assignment
                assert ctrl.cost_table.tree_flops(tree) <= budget * ctrl.cost_table.anchor_flops
                rise[focus] = [table.relative_increase(k, [row[k] for row in tree]) for k in range(3)]
            assert (np.diag(rise) <= rise.min(axis=0)).all(), (seed, fraction, rise)
        assert planner.plan(np.full(3, 1 / 3), 1.0).tree.assignment == tuple((0, 1, 2) for _ in range(ctrl.n_layers))


def test_on_real_streams_the_measured_search_builds_trees_its_measurement_prices_lower_than_the_guess():
    ctrl, data = _streams(steps=20)
    table = ctrl.measure_paths(data)
    rng = np.random.default_rng(0)
    planners = {search: Planner(ctrl.edge, ctrl.cost_table, ctrl.task_names, ctrl._affinity_matrix(), "budget", search, table)
                for search in ("merge", "measured")}
    harm = {search: [] for search in planners}
    for _ in range(30):
        r = rng.dirichlet(np.ones(3))
        budget = ctrl.min_budget + float(rng.uniform(0.05, 0.8)) * (1 - ctrl.min_budget)
        for search, planner in planners.items():
            tree = planner.plan(r, budget).tree.assignment
            harm[search].append(sum((r[k] + 0.1 / 3) * table.relative_increase(k, [row[k] for row in tree]) for k in range(3)))
    assert np.mean(harm["measured"]) < np.mean(harm["merge"]), harm


def test_stage1_measures_the_paths_on_examples_the_score_does_not_read_and_the_controller_keeps_them(tmp_path):
    ctrl, data = _streams()
    val = tiny_batches(3, n_batches=3, batch=16, seed=2)
    config = dymu.EdgeConfig(steps=2, eval_every=2, path_samples=20, warm_start="measured", warm_start_steps=5)
    ctrl.fit_edge(data, val, config=config, val_samples=16, verbose=False)
    paths = ctrl.stages["edge"]["paths"]
    assert paths["paths"] == 81 and paths["samples"] == 20  # batch 0 (16) is scored; 16 of batch 1 and 4 of batch 2
    expected = measure_path_losses(ctrl.anchor, ctrl.tasks, [val[1], (val[2][0][:4], {n: t[:4] for n, t in val[2][1].items()})],
                                   torch.device("cpu"))
    np.testing.assert_allclose(ctrl.path_losses.losses, expected.losses, rtol=1e-6)
    assert set(ctrl.stages["edge"]["search"]["scores"]) == {"hypernet", "merge", "measured", "fill", "family"}
    assert ctrl.stages["edge"]["warm_start"]["steps"] == 5
    ctrl.search = "measured"
    ctrl._invalidate()
    budget = ctrl.min_budget + 0.3 * (1 - ctrl.min_budget)
    before = ctrl.plan([0.6, 0.3, 0.1], budget)
    assert before.search == "measured"
    loaded = dymu.Controller.load(ctrl.save(tmp_path / "c.pt"), tasks=tiny_tasks(3))
    assert np.array_equal(loaded.path_losses.losses, ctrl.path_losses.losses)
    assert loaded.plan([0.6, 0.3, 0.1], budget).tree == before.tree


def test_the_measured_search_needs_its_table_and_validation_examples_left_over():
    ctrl, data = _streams()
    with pytest.raises(ValueError, match="needs measured path losses"):
        Planner(ctrl.edge, ctrl.cost_table, ctrl.task_names, None, "budget", "measured")
    with pytest.raises(ValueError, match="set path_samples > 0"):
        dymu.EdgeConfig(warm_start="measured")
    with pytest.raises(ValueError, match="path_samples must be >= 0"):
        dymu.EdgeConfig(path_samples=-1)
    with pytest.raises(ValueError, match="no example after the first 64"):
        ctrl.measure_paths(data, skip=64)
    # stage 1 with too little validation data goes on without the measured search, and says why
    ctrl.fit_edge(data, data[:1], config=dymu.EdgeConfig(steps=1, path_samples=8), val_samples=32, verbose=False)
    assert "no example after the first 32" in ctrl.stages["edge"]["paths"]["skipped"]
    assert ctrl.path_losses is None and set(ctrl.stages["edge"]["search"]["scores"]) == {"hypernet", "merge"}
    with pytest.raises(ValueError, match="were not measured"):
        ctrl.fit_edge(data, data[:1], config=dymu.EdgeConfig(steps=1, path_samples=8, warm_start="measured"),
                      val_samples=32, verbose=False)


def test_merges_measured_harmless_take_the_tree_no_further_below_the_budget_than_needed():
    table = CostTable(block_flops=(100, 100, 100), block_params=(1, 1, 1), head_flops=(1, 1, 1), head_params=(1, 1, 1),
                      input_shape=(1, 8, 8))
    alike = PathLosses(3, 3, np.ones((27, 3)))  # every path as good as every other: every merge is harmless
    anchor = [[0, 1, 2]] * 3
    for budget in (table.anchor_flops - 100, table.anchor_flops - 250, table.min_flops + 100):
        tree = shrink_to_budget(anchor, budget, table, [0.5, 0.3, 0.2], np.ones((3, 3)), alike)
        # nodes cost 100 each: the tree frees as few nodes as the budget needs
        assert budget - 100 < table.tree_flops(tree) <= budget, (budget, tree)


def test_a_second_stage1_starts_from_the_hypernet_whatever_search_the_first_chose():
    ctrl, data = _streams()
    val = tiny_batches(3, n_batches=2, batch=16, seed=2)
    ctrl.fit_edge(data, val, config=dymu.EdgeConfig(steps=1, path_samples=16), val_samples=16, verbose=False)
    ctrl.search = "measured"  # as if the validation had chosen it
    ctrl.fit_edge(data, val, config=dymu.EdgeConfig(steps=2, eval_every=1), val_samples=16, verbose=False)
    history = ctrl.stages["edge"]["selection"]["history"]
    assert ctrl.path_losses is None and ctrl.search in ("hypernet", "merge")
    assert set(ctrl.stages["edge"]["search"]["scores"]) == {"hypernet", "merge"}
    assert len(history) >= 2


def test_bad_validation_images_for_the_path_losses_raise_naming_the_problem():
    ctrl, data = _streams()
    x, targets = data[1]
    bad = x.clone()
    bad[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="path losses.*NaN|NaN.*path losses"):
        ctrl.measure_paths([data[0], (bad, targets)], skip=32)
    assert ctrl.path_losses is None
    with pytest.raises(ValueError, match="'t2'"):
        ctrl.measure_paths([(x, {"t0": targets["t0"], "t1": targets["t1"]})])
