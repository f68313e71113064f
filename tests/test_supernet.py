"""The supernet stage: which trees a step trains, what it leaves alone, and that validation decides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dymu
from _tiny import tiny_batches, tiny_tasks, trained_streams
from dymu.anchor import tree_forward
from dymu.supernet import FeatureAdaptors, SandwichTrees, distillation_loss, frozen_copy, train_supernet


def _trained(n_tasks: int = 3, anchor_steps: int = 30) -> tuple[dymu.Controller, list]:
    return trained_streams(n_tasks, n_batches=4, steps=anchor_steps)


def _states_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_trains_the_anchor_tree_one_stream_and_trees_within_drawn_budgets():
    ctrl, _ = _trained(anchor_steps=1)
    table = ctrl.cost_table
    trees = SandwichTrees(table, np.asarray(ctrl.affinity.matrix), budget_trees=3, dirichlet_alpha=1.0,
                          rng=np.random.default_rng(0))
    streams_seen = set()
    for _ in range(20):
        drawn = trees.draw()
        assert len(drawn) == 5
        (anchor, r0), (one, r1) = drawn[:2]
        assert anchor == ((0, 1, 2),) * table.n_layers and np.allclose(r0, 1 / 3)
        assert len(set(one[0])) == 1 and all(row == one[0] for row in one) and np.allclose(r1, 1 / 3)
        streams_seen.add(one[0][0])
        for assignment, r in drawn[2:]:
            dymu.Tree(ctrl.task_names, assignment)  # a valid tree
            assert table.min_flops <= table.tree_flops(assignment) <= table.anchor_flops
            assert np.isclose(r.sum(), 1.0) and (r >= 0).all()
    assert streams_seen == {0, 1, 2}


def test_adaptors_start_as_the_identity_and_distillation_ignores_scale():
    adaptors = FeatureAdaptors(2, channels=3, spatial=False)
    f = torch.randn(5, 3)
    assert torch.allclose(adaptors(0, f), f)
    assert float(distillation_loss(3 * f, f)) < 1e-10
    assert float(distillation_loss(-f, f)) == pytest.approx(4.0, rel=1e-5)


def test_the_supernet_makes_the_cheapest_tree_better_and_leaves_the_teacher_alone():
    ctrl, data = _trained()
    teacher = frozen_copy(ctrl.anchor)
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    one_stream = ((0, 0, 0),) * ctrl.n_layers

    def losses(anchor):
        anchor.eval()
        with torch.no_grad():
            out = [tree_forward(anchor, one_stream, x) for x, _ in data]
        return [float(np.mean([torch.nn.functional.cross_entropy(o[n], y[n]).item() for o, (_, y) in zip(out, data)]))
                for n in ctrl.task_names]

    before = losses(ctrl.anchor)
    result = train_supernet(ctrl.anchor, teacher, ctrl.tasks, data, ctrl.loss_scales, ctrl.cost_table,
                            np.asarray(ctrl.affinity.matrix), dymu.SupernetConfig(steps=40, lr=3e-3), torch.device("cpu"),
                            verbose=False)
    after = losses(ctrl.anchor)
    # task 0 is stream 0's own: the tasks stream 0 was not trained for gain the most
    assert after[1] < before[1] - 0.05 and after[2] < before[2] - 0.05, (before, after)
    assert _states_equal(before_teacher, teacher.state_dict())
    distill = [entry["distill"] for entry in result["log"]]
    assert all(np.isfinite(distill)) and max(distill) > 0
    # adaptors train beside the anchor but are not part of it
    assert not any("maps" in name for name in ctrl.anchor.state_dict())


def test_only_the_anchor_tree_moves_the_running_statistics():
    ctrl, data = _trained(anchor_steps=2)
    teacher = frozen_copy(ctrl.anchor)
    reference = frozen_copy(ctrl.anchor).train()
    x = data[0][0]
    with torch.no_grad():
        reference.forward_single(x)  # one train-mode pass of every stream on its own: the anchor tree
    # lr 0: weights stay, so any change of a running statistic comes from the forward passes alone
    train_supernet(ctrl.anchor, teacher, ctrl.tasks, data[:1], ctrl.loss_scales, ctrl.cost_table,
                   np.asarray(ctrl.affinity.matrix), dymu.SupernetConfig(steps=1, lr=0.0, budget_trees=2),
                   torch.device("cpu"), verbose=False)
    for key, value in reference.state_dict().items():
        if "running" in key:
            assert torch.allclose(value, ctrl.anchor.state_dict()[key], atol=1e-6), key


def test_validation_keeps_the_stage0_streams_when_the_supernet_does_not_help():
    ctrl, data = _trained()
    before = {k: v.clone() for k, v in ctrl.anchor.state_dict().items()}
    # validation labels that contradict the training labels: fine-tuning can only look worse
    flipped = [(x, {n: (y + 1) % 4 for n, y in targets.items()}) for x, targets in data[:1]]
    ctrl.fit_supernet(data, flipped, config=dymu.SupernetConfig(steps=6, lr=1e-2, eval_every=3), verbose=False, val_samples=32)
    record = ctrl.stages["supernet"]
    assert record["selection"]["best_step"] == 0 and record["kept_stage0"]
    assert _states_equal(before, ctrl.anchor.state_dict())
    trees = record["trees"]
    assert trees["anchor"]["val_loss_before"] == trees["anchor"]["val_loss_after"]
    assert set(trees) == {"anchor", "one_stream"} and len(set(trees["one_stream"]["assignment"][0])) == 1


def test_the_stage_comes_between_the_streams_and_the_edge_hypernet():
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(2), seed=0)
    data = tiny_batches(2, n_batches=1)
    with pytest.raises(ValueError, match=r"train the streams first: fit_anchor"):
        ctrl.fit_supernet(data, steps=1, verbose=False)
    ctrl.fit_anchor(data, steps=1, verbose=False)
    ctrl.fit_affinity(data, n_samples=16, calibration_samples=4)
    ctrl.fit_edge(data, steps=1, verbose=False)
    with pytest.raises(ValueError, match=r"comes before the edge hypernet"):
        ctrl.fit_supernet(data, steps=1, verbose=False)
    with pytest.raises(ValueError, match=r"distill must be 'features' or 'none'"):
        dymu.SupernetConfig(distill="logits")


def test_same_seed_same_supernet():
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        torch.rand(7)  # other draws before must not matter
        ctrl, data = _trained(anchor_steps=3)
        ctrl.fit_supernet(data, data[:1], config=dymu.SupernetConfig(steps=4, eval_every=2, budget_trees=2), verbose=False,
                          val_samples=32)
        states.append(ctrl.anchor.state_dict())
    assert _states_equal(*states)


def test_zero_steps_skip_the_stage_and_stage0_can_train_again_after_it():
    ctrl, data = _trained(anchor_steps=2)
    before = {k: v.clone() for k, v in ctrl.anchor.state_dict().items()}
    assert ctrl.fit_supernet(data, data[:1], steps=0, verbose=False) == {"skipped": True}
    assert "supernet" not in ctrl.stages and _states_equal(before, ctrl.anchor.state_dict())
    ctrl.fit_supernet(data, data[:1], config=dymu.SupernetConfig(steps=2, bn="anchor"), verbose=False, val_samples=32)
    assert not any(p.requires_grad for p in ctrl.anchor.parameters())
    ctrl.fit_anchor(data, steps=1, verbose=False)  # the frozen anchor trains again
    with pytest.raises(ValueError, match=r"bn must be 'batch' or 'anchor'"):
        dymu.SupernetConfig(bn="mixed")


def test_frozen_statistics_keep_the_batch_counters():
    from dymu.anchor import frozen_batchnorm_statistics

    bn = torch.nn.BatchNorm2d(3, momentum=None)  # a cumulative average: the counter is its weight
    bn.train()
    with frozen_batchnorm_statistics(bn):
        bn(torch.randn(4, 3, 2, 2))
    assert int(bn.num_batches_tracked) == 0 and bn.momentum is None
    assert torch.equal(bn.running_mean, torch.zeros(3))


def test_the_benchmarks_refuse_fine_tuned_streams_as_stage0_ones():
    from benchmarks.methods import ControllerMethod, StepBudget

    ctrl, data = _trained(anchor_steps=2)
    method = ControllerMethod(lambda: ctrl, StepBudget(1, 1, 1))
    method.controller = ctrl
    assert method.stage0_streams() is ctrl.anchor  # no supernet stage: the anchor is stage 0's
    ctrl.stages["supernet"] = {"kept_stage0": False}
    with pytest.raises(ValueError, match=r"stage-0 streams were not kept"):
        method.stage0_streams()
    method.teacher = frozen_copy(ctrl.anchor)
    assert method.stage0_streams() is method.teacher


def test_a_heavier_anchor_tree_trains_the_full_budget_model_more_and_the_shared_trees_less():
    def train_with(weight: float) -> tuple[float, float]:
        ctrl, data = _trained()
        train_supernet(ctrl.anchor, frozen_copy(ctrl.anchor), ctrl.tasks, data, ctrl.loss_scales, ctrl.cost_table,
                       np.asarray(ctrl.affinity.matrix),
                       dymu.SupernetConfig(steps=40, lr=3e-3, distill="none", anchor_weight=weight), torch.device("cpu"),
                       verbose=False)
        ctrl.anchor.eval()
        anchor_tree = ((0, 1, 2),) * ctrl.n_layers
        one_stream = ((0, 0, 0),) * ctrl.n_layers
        with torch.no_grad():
            def mean_loss(tree):
                return float(np.mean([torch.nn.functional.cross_entropy(tree_forward(ctrl.anchor, tree, x)[n], y[n]).item()
                                      for x, y in data for n in ctrl.task_names]))
            return mean_loss(anchor_tree), mean_loss(one_stream)

    plain_anchor, plain_one = train_with(1.0)
    heavy_anchor, heavy_one = train_with(20.0)
    assert heavy_anchor < plain_anchor, (plain_anchor, heavy_anchor)
    assert heavy_one > plain_one, (plain_one, heavy_one)


def test_the_anchor_weight_must_be_positive():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="anchor_weight"):
            dymu.SupernetConfig(anchor_weight=bad)


@pytest.mark.parametrize("family, solo, distill", [("merge", True, "features"), ("affinity", False, "none")])
def test_the_counted_blocks_per_image_are_the_blocks_the_stage_ran(family, solo, distill):
    # the training-budget table reports this count; hooks on every block (copied into the teacher and the solo
    # streams with them) count what the stage actually ran forward
    ctrl, data = _trained(anchor_steps=1)
    ran = [0]

    def count(module, inputs, output):
        ran[0] += inputs[0].shape[0]

    for stream in ctrl.anchor.streams:
        for block in stream.blocks:
            block.register_forward_hook(count)
    steps, images = 5, data[0][0].shape[0]
    config = dymu.SupernetConfig(steps=steps, budget_trees=2, tree_family=family, solo=solo, distill=distill)
    ctrl.fit_supernet(data, None, config=config, verbose=False)
    counted = ctrl.supernet_blocks_per_image()
    assert counted == pytest.approx(ran[0] / (steps * images))
    n_streams = ctrl.cost_table.n_tasks * ctrl.n_layers
    assert counted > n_streams + ctrl.n_layers  # more than the anchor tree and a one-stream tree alone


def test_no_supernet_stage_no_count():
    ctrl, _ = _trained(anchor_steps=1)
    assert ctrl.supernet_blocks_per_image() is None
