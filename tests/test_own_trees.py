"""Own trees: a few budget trees trained alone on the supernet's batches and served where they price lower."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

import dymu
from _tiny import after_supernet, tiny_tasks, trained_streams
from dymu.anchor import scoring_mode, tree_forward
from dymu.derived import derive_model, recalibrate_batchnorm
from dymu.budget import CostTable
from dymu.metrics.cost import count_params
from dymu.own_trees import AbsentNode, OwnTrees, own_tree_assignments
from dymu.path_losses import PathLosses
from dymu.planner import Planner
from dymu.supernet import frozen_copy, sandwich_blocks_per_image, train_supernet, tree_blocks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks

BUDGETS = (0.0, 0.7)


def _after_supernet(own_trees=BUDGETS, val: bool = False, steps: int = 4):
    return after_supernet(dymu.SupernetConfig(steps=steps, eval_every=2, lr=1e-2, own_trees=own_trees, tree_family="affinity"), val)


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_own_trees_train_their_own_nodes_only_and_leave_the_supernet_as_it_would_be():
    ctrl, data, stage0 = _after_supernet()
    plain, _, _ = _after_supernet(own_trees=())
    assert _equal(ctrl.anchor, plain.anchor)  # the own trees draw nothing from the supernet's random streams
    own = ctrl.own_trees
    assert own is not None and len(own) == 2
    assert own.assignments == own_tree_assignments(ctrl.cost_table, ctrl._affinity_matrix(), BUDGETS)
    cheapest, richer = own.assignments
    assert len({node for row in cheapest for node in row}) == 1  # the one-stream tree
    assert ctrl.cost_table.tree_flops(richer) <= 0.7 * ctrl.cost_table.anchor_flops
    for net, assignment in zip(own.nets, own.assignments):
        for layer, row in enumerate(assignment):
            for stream in range(ctrl.n_tasks):
                if stream in row:  # trained
                    assert not _equal(net.block(layer, stream), stage0.block(layer, stream)), (assignment, layer, stream)
                else:  # not held at all: nothing stored, nothing counted
                    assert isinstance(net.block(layer, stream), AbsentNode), (assignment, layer, stream)
        tree_nodes = sum(count_params(stage0.block(layer, stream)) for layer, row in enumerate(assignment) for stream in set(row))
        assert count_params(net) == tree_nodes + count_params(stage0.heads)
    assert ctrl.stages["supernet"]["own_trees"][0]["assignment"] == [list(r) for r in cheapest]


def test_each_own_tree_keeps_its_best_validation_state():
    ctrl, data = trained_streams(3, n_batches=3, steps=4)
    stage0, val = frozen_copy(ctrl.anchor), data[:1]
    own = OwnTrees(stage0, own_tree_assignments(ctrl.cost_table, ctrl._affinity_matrix(), BUDGETS))
    assert len(own) == 2
    result = train_supernet(ctrl.anchor, stage0, ctrl.tasks, data, ctrl.loss_scales, ctrl.cost_table, None,
                            dymu.SupernetConfig(steps=4, eval_every=2, lr=1e-2, own_trees=BUDGETS), torch.device("cpu"),
                            False, select=lambda: 0.0, own=own, val_batches=val)
    selection = result["selection"]
    history = {h["step"]: h["own"] for h in selection["history"]}
    scales = ctrl.loss_scales
    first = {str(i): float((scales * dymu.anchor.tree_losses(stage0, ctrl.tasks, a, val, torch.device("cpu"))).mean())
             for i, a in enumerate(own.assignments)}
    scores = {0: first, **history}
    for i, (net, assignment) in enumerate(zip(own.nets, own.assignments)):
        by_step = [(step, s[str(i)]) for step, s in sorted(scores.items())]
        best = min(v for _, v in by_step)
        assert selection["own_steps"][i] == next(step for step, v in by_step if v == best)
        final = float((scales * dymu.anchor.tree_losses(net, ctrl.tasks, assignment, val, torch.device("cpu"))).mean())
        assert final == pytest.approx(best, rel=1e-5)


@pytest.mark.parametrize("bn_stats", ["anchor", "batch"])
def test_a_request_the_own_tree_prices_lower_runs_its_own_weights_within_the_budget(tmp_path, bn_stats):
    ctrl, data, _ = _after_supernet()
    ctrl.fit_edge(data, steps=2, verbose=False)
    ctrl.bn_stats, ctrl.search = bn_stats, "fill"
    cpu = torch.device("cpu")
    table = ctrl.measure_paths(data, samples=64)
    cheapest, richer = ctrl.own_trees.assignments
    # measured on the same images, scored as the validation score runs trees: on the own tree's weights
    want = ctrl._tree_losses(richer, None, data[:2], cpu, batch_statistics=bn_stats == "batch", own_weights=True)
    cut = ctrl._tree_losses(richer, None, data[:2], cpu, batch_statistics=bn_stats == "batch", own_weights=False)
    torch.testing.assert_close(torch.as_tensor(table.own_trees[1][1], dtype=torch.float32), want)
    assert not torch.allclose(want, cut)
    # make the richer own tree the best there is: every task at a tenth of its own stream's loss
    own_losses = [table.own(k) * 0.1 for k in range(3)]
    ctrl.path_losses = replace(table, own_trees=((cheapest, table.own_trees[0][1]), (richer, own_losses)))
    ctrl._invalidate()
    budget = 0.7
    model = ctrl.build_model([1, 2, 3], budget)
    assert model.info["own_weights"] and model.tree.assignment == richer and not model.info["weight_hypernet"]
    assert model.flops() <= budget * ctrl.cost_table.anchor_flops
    x = data[0][0]
    net = copy.deepcopy(ctrl.own_trees.net_for(richer)).eval()
    if bn_stats == "batch":  # a built tree re-estimates its BatchNorm statistics on the calibration inputs
        expected = derive_model(net, model.tree)
        recalibrate_batchnorm(expected, ctrl.calibration.split(128))
    else:
        expected = lambda inputs: tree_forward(net, richer, inputs)  # noqa: E731
    with torch.no_grad():
        out, want_out = model(x), expected(x)
    assert all(torch.allclose(out[k], want_out[k], atol=1e-5) for k in out)
    # the validation score runs the request's tree as served: on the own tree's weights
    r = np.array([1, 2, 3]) / 6
    scales = ctrl.loss_scales
    with scoring_mode(ctrl.anchor, bn_stats == "batch"):  # as stages 1 and 2 score
        score = ctrl._validation_score(data[:1], adapted=True, requests=[(r, budget, None)])
        own_score = float((torch.as_tensor(r, dtype=torch.float32) * scales
                           * ctrl._tree_losses(richer, None, data[:1], cpu, own_weights=True)).sum())
    assert score == pytest.approx(own_score, rel=1e-6)
    # stage 2 trains on the trees it adapts; an own tree is served unadapted
    ctrl.fit_weights(data, steps=2, verbose=False)
    assert ctrl.build_model([1, 2, 3], budget).info["own_weights"]
    # a budget it does not fit never gets it; budget 1 gets it too (it prices below the anchor tree)
    small = ctrl.build_model([1, 2, 3], ctrl.cost_table.tree_flops(richer) / ctrl.cost_table.anchor_flops * 0.99)
    assert small.tree.assignment != richer
    assert ctrl.build_model([1, 2, 3], 1.0).info["own_weights"]
    # saved and loaded: the same own trees, the same outputs
    loaded = dymu.load(ctrl.save(tmp_path / "ctrl.pt"), tasks=tiny_tasks(3), backbone=dymu.backbones.lenet(width_mult=0.25))
    assert _equal(loaded.own_trees, ctrl.own_trees)
    again = loaded.build_model([1, 2, 3], budget)
    assert again.info["own_weights"]
    with torch.no_grad():
        a, b = model(x), again(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_planner_serves_an_own_tree_only_when_it_fits_and_prices_lower():
    table = CostTable(block_flops=(100, 100), block_params=(1, 1), head_flops=(1, 1, 1), head_params=(1, 1, 1),
                      input_shape=(1, 8, 8))
    one_stream = ((0, 0, 0), (0, 0, 0))
    losses = np.full((9, 3), 2.0)  # on the supernet, every task's loss doubles off its own stream
    for k in range(3):
        losses[4 * k, k] = 1.0  # path (k, k): task k's own stream
    edge = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3)).edge
    minimum = table.min_flops / table.anchor_flops
    for own_loss, served in ((1.5, True), (2.5, False)):
        paths = PathLosses(3, 2, losses, own_trees=((one_stream, [own_loss] * 3),))
        planner = Planner(edge, table, ["t0", "t1", "t2"], None, "budget", "fill", paths)
        plan = planner.plan(np.array([0.2, 0.3, 0.5]), minimum)
        assert plan.own_weights == served and (plan.tree.assignment == one_stream) == served
    # at the full budget the anchor tree prices 0: an own tree takes it only by beating the streams themselves
    paths = PathLosses(3, 2, losses, own_trees=((one_stream, [0.9] * 3),))
    planner = Planner(edge, table, ["t0", "t1", "t2"], None, "budget", "fill", paths)
    assert planner.plan(np.array([0.2, 0.3, 0.5]), 1.0).own_weights
    assert PathLosses.from_dict(paths.to_dict()).own_trees[0][0] == one_stream


def test_own_trees_are_counted_checked_and_dropped_by_a_new_stage0():
    ctrl, data = trained_streams(3, n_batches=2, steps=2)
    config = dymu.SupernetConfig(steps=3, budget_trees=0, distill="none", own_trees=BUDGETS, seed=0)
    blocks = sandwich_blocks_per_image(config, ctrl.cost_table, None)
    plain = sandwich_blocks_per_image(replace(config, own_trees=()), ctrl.cost_table, None)
    assert blocks - plain == sum(tree_blocks(a) for a in own_tree_assignments(ctrl.cost_table, None, BUDGETS))
    with pytest.raises(ValueError, match=r"own_trees holds budgets .* in \[0, 1\], got 1.5"):
        dymu.SupernetConfig(own_trees=(0.4, 1.5))
    teacher = frozen_copy(ctrl.anchor)
    with pytest.raises(ValueError, match="config.own_trees and the own trees go together"):
        train_supernet(ctrl.anchor, teacher, ctrl.tasks, data, ctrl.loss_scales, ctrl.cost_table, None,
                       dymu.SupernetConfig(steps=1), torch.device("cpu"), False,
                       own=OwnTrees(teacher, own_tree_assignments(ctrl.cost_table, None, BUDGETS)))
    with pytest.raises(ValueError, match="an own tree needs"):
        PathLosses(3, 2, np.ones((9, 3)), own_trees=(([[0, 0, 0]], [1.0, 1.0, 1.0]),))
    ctrl.fit_supernet(data, None, config=replace(config, steps=2), verbose=False)
    assert ctrl.own_trees is not None
    ctrl.fit_anchor(data, data[:1], config=dymu.AnchorConfig(steps=1), verbose=False)
    assert ctrl.own_trees is None


def test_stage2_never_trains_on_a_tree_served_on_its_own_weights(monkeypatch):
    ctrl, data, _ = _after_supernet()
    ctrl.fit_edge(data, steps=2, verbose=False)
    ctrl.search = "fill"
    table = ctrl.measure_paths(data, samples=64)
    # the one-stream own tree at a tenth of every stream's loss: every request, at every budget, gets it
    cheapest = ctrl.own_trees.assignments[0]
    ctrl.path_losses = replace(table, own_trees=((cheapest, [table.own(k) * 0.1 for k in range(3)]),))
    ctrl._invalidate()

    def must_not_run(*args, **kwargs):
        raise AssertionError("stage 2 ran a tree that is served on its own weights")

    monkeypatch.setattr(dymu.training, "tree_forward", must_not_run)
    ctrl.fit_weights(data, steps=2, verbose=False)
    assert ctrl.build_model([1, 1, 1], 0.5).info["own_weights"]


def test_own_trees_hold_only_their_nodes_and_load_files_that_held_every_stream():
    ctrl, data = trained_streams(3, n_batches=1, steps=1)
    assignments = own_tree_assignments(ctrl.cost_table, ctrl._affinity_matrix(), BUDGETS)
    own = OwnTrees(ctrl.anchor, assignments)
    anchor_tree = [list(range(3))] * ctrl.n_layers
    with pytest.raises(RuntimeError, match="not part of this own tree"):  # a wrong routing fails, never reads stale weights
        tree_forward(own.nets[0], anchor_tree, data[0][0])
    # the layout before absent nodes: every copy held all streams
    every_stream = torch.nn.ModuleList(copy.deepcopy(ctrl.anchor) for _ in assignments)
    with torch.no_grad():
        for p in every_stream.parameters():
            p.add_(1.0)
    own.load_weights({f"nets.{k}": v for k, v in every_stream.state_dict().items()})
    for net, old in zip(own.nets, every_stream):
        held, written = net.state_dict(), old.state_dict()
        assert len(held) < len(written) and all(torch.equal(v, written[k]) for k, v in held.items())
    state = own.state_dict()
    del state[next(k for k in state if ".streams." in k)]
    with pytest.raises(RuntimeError, match="Missing key"):
        own.load_weights(state)
