"""Directed own trees: per budget one own tree per affinity group of tasks, trained on a preference leaning on that
group, and served only within a share of the budget."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

import dymu
from _tiny import after_supernet, tiny_tasks, trained_streams
from dymu.budget import CostTable
from dymu.loop import StepInfo
from dymu.own_trees import OwnTrees, own_tree_assignments, own_tree_specs, task_groups
from dymu.path_losses import PathLosses
from dymu.planner import Planner
from dymu.supernet import sandwich_blocks_per_image, tree_blocks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks

#: two pairs of similar tasks: (0, 1) and (2, 3)
PAIRS = np.array([[1.0, 0.8, 0.1, 0.2], [0.8, 1.0, 0.2, 0.1], [0.1, 0.2, 1.0, 0.7], [0.2, 0.1, 0.7, 1.0]])
TABLE = CostTable(block_flops=(100, 100, 100), block_params=(1, 1, 1), head_flops=(1,) * 4, head_params=(1,) * 4,
                  input_shape=(1, 8, 8))


def test_task_groups_cluster_the_most_similar_tasks_first():
    assert task_groups(PAIRS, 2) == [(0, 1), (2, 3)]
    assert task_groups(PAIRS, 3) == [(0, 1), (2,), (3,)]  # the least similar pair splits first
    assert task_groups(PAIRS, 1) == [(0, 1, 2, 3)]
    assert task_groups(PAIRS, 9) == [(0,), (1,), (2,), (3,)]


def _foreign_layers(assignment, task: int, group) -> int:
    """How many layers ``task`` runs on a node with a task outside ``group``."""
    return sum(any(row[m] == row[task] for m in range(len(row)) if m not in group) for row in assignment)


def test_each_group_gets_a_tree_within_the_budget_that_keeps_its_tasks_apart_longest():
    specs = own_tree_specs(TABLE, PAIRS, (0.0, 0.5), n_groups=2)
    assert [TABLE.tree_flops(tree) for tree, _ in specs] == sorted(TABLE.tree_flops(tree) for tree, _ in specs)
    groups = task_groups(PAIRS, 2)
    by_group = {}
    for tree, weights in specs:
        favoured = tuple(k for k in range(4) if weights[k] > 1)
        assert favoured in groups and np.mean(weights) == pytest.approx(1.0)
        # half the preference on the group: its tasks weigh (0.5 / 2 + 0.5 / 4 + 0.1 / 4) / (0.5 / 4 + 0.1 / 4) as much
        assert weights[favoured[0]] / min(weights) == pytest.approx(0.4 / 0.15)
        by_group.setdefault(favoured, []).append(tree)
    assert sorted(by_group) == groups
    for group, trees in by_group.items():
        one_stream, half = sorted(trees, key=TABLE.tree_flops)
        assert TABLE.tree_flops(one_stream) == TABLE.min_flops and one_stream[0][0] in group  # the group's own stream
        assert TABLE.tree_flops(half) <= 0.5 * TABLE.anchor_flops
        other = next(t for g, ts in by_group.items() if g != group for t in ts if TABLE.tree_flops(t) > TABLE.min_flops)
        # the group's tasks run on the group's streams only (trained for them in stage 0), and share with foreign
        # tasks no more than in the other group's tree
        assert all(row[k] in group for row in half for k in group), (group, half)
        assert any(row[k] not in group for row in other for k in group), (group, other)
        assert sum(_foreign_layers(half, k, group) for k in group) <= sum(_foreign_layers(other, k, group) for k in group)
    # no group: the nested affinity trees, every weight 1, as before
    plain = own_tree_specs(TABLE, PAIRS, (0.0, 0.5))
    assert [t for t, _ in plain] == own_tree_assignments(TABLE, PAIRS, (0.0, 0.5))
    assert all(w == (1.0,) * 4 for _, w in plain)


def test_a_task_weight_is_a_loss_weight():
    ctrl, data = trained_streams(3, n_batches=1, steps=1)
    trees = own_tree_assignments(ctrl.cost_table, None, (0.0,))
    weights = (2.0, 0.0, 0.5)
    weighted = OwnTrees(ctrl.anchor, trees, [weights])
    plain = OwnTrees(ctrl.anchor, trees)
    x, targets = data[0]
    for own, scales in ((weighted, ctrl.loss_scales), (plain, ctrl.loss_scales * torch.tensor(weights))):
        optimizer = torch.optim.SGD(own.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        own.train_step(ctrl.tasks, scales, optimizer, scheduler, StepInfo("supernet", 1, 0), x, targets)
    for a, b in zip(weighted.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    head = plain.nets[0].heads["t1"]  # task t1 weighs 0: its head did not move
    assert all(torch.equal(p, q) for p, q in zip(head.parameters(), ctrl.anchor.heads["t1"].parameters()))
    with pytest.raises(ValueError, match="one weight per task"):
        OwnTrees(ctrl.anchor, trees, [(1.0, 1.0)])
    with pytest.raises(ValueError, match="finite and >= 0"):
        OwnTrees(ctrl.anchor, trees, [(1.0, float("nan"), 1.0)])


def test_directed_own_trees_train_count_save_and_load(tmp_path):
    config = dymu.SupernetConfig(steps=3, eval_every=2, lr=1e-2, own_trees=(0.0, 0.7), own_groups=2,
                                 own_min_share=0.8, tree_family="affinity")
    ctrl, data, _ = after_supernet(config, val=True)
    specs = own_tree_specs(ctrl.cost_table, ctrl._affinity_matrix(), (0.0, 0.7), 2)
    assert len(specs) > 2  # more than one tree per budget
    assert ctrl.own_trees.assignments == [t for t, _ in specs]
    assert ctrl.own_trees.task_weights == [w for _, w in specs]
    assert [e["task_weights"] for e in ctrl.stages["supernet"]["own_trees"]] == [list(w) for _, w in specs]
    blocks = sandwich_blocks_per_image(config, ctrl.cost_table, ctrl._affinity_matrix())
    plain = sandwich_blocks_per_image(replace(config, own_trees=()), ctrl.cost_table, ctrl._affinity_matrix())
    assert blocks - plain == sum(tree_blocks(t) for t, _ in specs)
    assert ctrl.planner.own_min_share == 0.8
    loaded = dymu.load(ctrl.save(tmp_path / "ctrl.pt"), tasks=tiny_tasks(3), backbone=dymu.backbones.lenet(width_mult=0.25))
    assert loaded.own_trees.task_weights == ctrl.own_trees.task_weights
    assert loaded.planner.own_min_share == 0.8
    state = copy.deepcopy(ctrl.own_trees.state_dict())
    assert all(torch.equal(v, loaded.own_trees.state_dict()[k]) for k, v in state.items())


def test_the_planner_serves_an_own_tree_only_within_its_share_of_the_budget():
    table = CostTable(block_flops=(100, 100), block_params=(1, 1), head_flops=(1, 1, 1), head_params=(1, 1, 1),
                      input_shape=(1, 8, 8))
    one_stream = ((0, 0, 0), (0, 0, 0))
    losses = np.full((9, 3), 2.0)
    for k in range(3):
        losses[4 * k, k] = 1.0
    paths = PathLosses(3, 2, losses, own_trees=((one_stream, [0.5] * 3),))  # better than every stream
    edge = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3)).edge
    minimum = table.min_flops / table.anchor_flops
    r = np.array([0.2, 0.3, 0.5])
    for share, budget, served in ((0.0, 1.0, True), (0.8, 1.0, False), (0.8, minimum, True), (0.8, minimum / 0.79, False)):
        planner = Planner(edge, table, ["t0", "t1", "t2"], None, "budget", "fill", paths, own_min_share=share)
        plan = planner.plan(r, budget)
        assert plan.own_weights == served, (share, budget)
        assert plan.flops <= budget * table.anchor_flops


@pytest.mark.parametrize("field, value, message", [
    ("own_groups", -1, "own_groups must be an int >= 0"),
    ("own_groups", True, "own_groups must be an int >= 0"),
    ("own_groups", 1.5, "own_groups must be an int >= 0"),
    ("own_min_share", 1.5, r"own_min_share must be a share of the budget in \[0, 1\]"),
    ("own_min_share", float("nan"), r"own_min_share must be a share of the budget in \[0, 1\]"),
])
def test_bad_own_tree_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        dymu.SupernetConfig(**{field: value})
