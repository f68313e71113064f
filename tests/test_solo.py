"""Solo streams: a task alone on its own stream runs a single-task stream continued on the supernet's batches."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

import dymu
from _tiny import after_supernet, tiny_batches, tiny_tasks, trained_streams
from dymu.anchor import tree_forward
from dymu.budget import CostTable, shrink_to_budget
from dymu.path_losses import PathLosses, path_index
from dymu.solo import solo_tasks, with_solo
from dymu.supernet import frozen_copy, train_supernet
from dymu.training import evaluate_streams, train_anchor

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks

STEPS = 6


def _after_supernet(solo: bool = True, steps: int = STEPS, val: bool = False) -> tuple[dymu.Controller, list, dymu.anchor.AnchorNet]:
    """A tiny controller after stage 0, the affinity and a supernet stage; its data; its stage-0 streams. Without
    validation every solo stream is kept (with it, a stream the supernet's beats is replaced)."""
    return after_supernet(dymu.SupernetConfig(steps=steps, eval_every=max(1, steps // 2), solo=solo, lr=1e-2), val)


def _equal_states(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_solo_streams_are_stage0_continued_on_the_supernets_batches():
    # without validation nothing is selected: the solo streams are exactly stage 0 trained on for the stage's steps
    ctrl, data, stage0 = _after_supernet()
    continued = copy.deepcopy(stage0).requires_grad_(True)
    train_anchor(continued, ctrl.tasks, data, None, dymu.AnchorConfig(steps=STEPS, seed=ctrl.seed), torch.device("cpu"),
                 verbose=False)
    assert _equal_states(ctrl.solo, continued)
    assert not _equal_states(ctrl.solo, stage0)
    assert not _equal_states(ctrl.solo, ctrl.anchor)  # the supernet trains its own copy


def test_the_full_budget_model_is_the_solo_streams_and_a_shared_tree_the_supernet():
    ctrl, data, _ = _after_supernet()
    ctrl.fit_edge(data, steps=2, verbose=False)
    x = data[0][0]
    full = ctrl.build_model([1, 1, 1], 1.0)
    assert full.info["solo_tasks"] == ctrl.task_names
    with torch.no_grad():
        out, want = full(x), ctrl.solo.forward_single(x)
    assert all(torch.equal(out[k], want[k]) for k in want)

    cheapest = ctrl.build_model([1, 1, 1], ctrl.min_budget * (1 + 1e-9))
    assert cheapest.info["solo_tasks"] == []
    with torch.no_grad():
        out, want = cheapest(x), tree_forward(ctrl.anchor, cheapest.tree.assignment, x)
    assert all(torch.equal(out[k], want[k]) for k in want)
    assert cheapest.flops() <= ctrl.min_budget * (1 + 1e-9) * ctrl.cost_table.anchor_flops


def test_in_a_mixed_tree_only_the_task_alone_on_its_stream_runs_solo():
    ctrl, data, _ = _after_supernet()
    tree = dymu.Tree(ctrl.task_names, [[0, 0, 2]] * ctrl.n_layers)  # t0 and t1 share stream 0, t2 alone
    assert solo_tasks(tree.assignment) == (2,)
    model = dymu.derived.derive_model(ctrl.anchor, tree, solo=ctrl.solo)
    assert model.info["solo_tasks"] == ["t2"]
    x = data[0][0]
    with torch.no_grad():
        out = model(x)
        solo_out = ctrl.solo.forward_single(x)
        shared = tree_forward(ctrl.anchor, tree.assignment, x)
    assert torch.equal(out["t2"], solo_out["t2"])
    assert torch.equal(out["t0"], shared["t0"]) and torch.equal(out["t1"], shared["t1"])
    # the view swaps modules for one tree and leaves the anchor as it was
    view = with_solo(ctrl.anchor, ctrl.solo, tree.assignment)
    assert view.streams[2] is ctrl.solo.streams[2] and view.streams[0] is ctrl.anchor.streams[0]
    assert ctrl.anchor.streams[2] is not ctrl.solo.streams[2]


def test_the_shared_node_is_computed_once_in_a_tree_with_a_solo_task():
    ctrl, data, _ = _after_supernet()
    tree = dymu.Tree(ctrl.task_names, [[0, 0, 2]] * ctrl.n_layers)
    model = dymu.derived.derive_model(ctrl.anchor, tree, solo=ctrl.solo)
    calls: dict[str, int] = {}
    hooks = [module.register_forward_hook(lambda m, i, o, key=key: calls.__setitem__(key, calls.get(key, 0) + 1))
             for key, module in model.nodes.items()]
    with torch.no_grad():
        model(data[0][0])
    for hook in hooks:
        hook.remove()
    assert calls == {key: 1 for key in model.nodes}


def test_validation_scores_trees_as_they_are_built():
    ctrl, data, _ = _after_supernet()
    ctrl.fit_edge(data, steps=2, verbose=False)
    tree = dymu.Tree(ctrl.task_names, [[0, 0, 2]] * ctrl.n_layers)
    model = ctrl.build_model([1, 1, 1], 1.0)
    scored = ctrl._tree_losses(tree.assignment, None, data[:1], torch.device("cpu"))
    built = dymu.derived.derive_model(ctrl.anchor, tree, solo=ctrl.solo)
    x, targets = data[0]
    with torch.no_grad():
        out = built(x)
    want = torch.stack([t.loss(out[t.name], targets[t.name]) for t in ctrl.tasks])
    assert torch.allclose(scored, want)
    assert model.info["solo_tasks"] == ctrl.task_names


def test_solo_tasks_get_no_weight_hypernet_adaptation_even_when_every_node_is_adapted():
    ctrl, data, _ = _after_supernet()
    ctrl.fit_edge(data, steps=2, verbose=False)
    ctrl.adapt_scope = "all"
    with torch.no_grad():  # deltas that would show
        for head in ctrl.weight.heads:
            head.bias.fill_(0.5)
    model = ctrl.build_model([1, 1, 1], 1.0)
    x = data[0][0]
    with torch.no_grad():
        out, want = model(x), ctrl.solo.forward_single(x)
    assert all(torch.equal(out[k], want[k]) for k in want)


def test_each_solo_stream_keeps_its_best_validation_state():
    ctrl, data = trained_streams(3, n_batches=3, steps=4)
    stage0, val = frozen_copy(ctrl.anchor), data[:1]
    solo = copy.deepcopy(stage0)
    result = train_supernet(ctrl.anchor, stage0, ctrl.tasks, data, ctrl.loss_scales, ctrl.cost_table, None,
                            dymu.SupernetConfig(steps=4, eval_every=2, solo=True, lr=1e-2), torch.device("cpu"), False,
                            select=lambda: 0.0, solo=solo, val_batches=val)
    selection = result["selection"]
    assert set(selection["solo_steps"]) == set(ctrl.task_names)
    scores = {0: evaluate_streams(stage0, ctrl.tasks, val, torch.device("cpu"))}
    scores.update({h["step"]: h["solo"] for h in selection["history"]})
    assert sorted(scores) == [0, 2, 4]
    final = evaluate_streams(solo, ctrl.tasks, val, torch.device("cpu"))
    for task in ctrl.tasks:
        by_step = [(step, s[task.name][task.primary]) for step, s in sorted(scores.items())]
        best = max(v for _, v in by_step)  # accuracy: higher is better; the first step to reach it is kept
        assert selection["solo_steps"][task.name] == next(step for step, v in by_step if v == best)
        assert final[task.name][task.primary] == pytest.approx(best)


def test_save_load_keeps_the_solo_streams_and_stage0_again_drops_them(tmp_path):
    ctrl, data, _ = _after_supernet()
    ctrl.fit_edge(data, steps=2, verbose=False)
    path = ctrl.save(tmp_path / "ctrl.pt")
    loaded = dymu.load(path, tasks=tiny_tasks(3), backbone=dymu.backbones.lenet(width_mult=0.25))
    assert _equal_states(loaded.solo, ctrl.solo)
    x = data[0][0]
    with torch.no_grad():
        a, b = ctrl.build_model([1, 2, 3], 1.0)(x), loaded.build_model([1, 2, 3], 1.0)(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain, _ = trained_streams(3, n_batches=3, steps=4)
    assert plain.solo is None and plain.build_model([1, 1, 1], 1.0).info["solo_tasks"] == []
    ctrl.fit_anchor(data, data[:1], config=dymu.AnchorConfig(steps=1), verbose=False)
    assert ctrl.solo is None


def test_solo_needs_its_config_and_validation_images():
    ctrl, data = trained_streams(3, n_batches=2, steps=2)
    with pytest.raises(ValueError, match="solo must be True or False"):
        dymu.SupernetConfig(solo="yes")
    teacher = frozen_copy(ctrl.anchor)
    args = (ctrl.anchor, teacher, ctrl.tasks, data, ctrl.loss_scales, ctrl.cost_table, None)
    with pytest.raises(ValueError, match="config.solo and the solo streams go together"):
        train_supernet(*args, dymu.SupernetConfig(steps=1), torch.device("cpu"), False, solo=copy.deepcopy(teacher))
    with pytest.raises(ValueError, match="need val_batches"):
        train_supernet(*args, dymu.SupernetConfig(steps=1, solo=True), torch.device("cpu"), False,
                       select=lambda: 0.0, solo=copy.deepcopy(teacher))


def _table_where_merges_with_task0_are_free(solo: list[float] | None) -> PathLosses:
    """Three tasks on two layers: any path costs task 0 nothing and tasks 1 and 2 nothing on streams 0 and their own,
    but 1% where they read each other; ``solo``: each task's loss on its solo stream."""
    losses = np.ones((3**2, 3))
    for path in itertools.product(range(3), repeat=2):
        for k in (1, 2):
            losses[path_index(path, 3), k] = 1.01 if (3 - k) in path else 1.0
    return PathLosses(3, 2, losses, solo=solo)


def test_the_measured_search_keeps_a_preferred_task_alone_when_its_solo_stream_is_better():
    table = CostTable(block_flops=(100, 100), block_params=(1, 1), head_flops=(1, 1, 1), head_params=(1, 1, 1),
                      input_shape=(1, 8, 8))
    anchor, affinity, r = [[0, 1, 2]] * 2, np.ones((3, 3)), [0.6, 0.2, 0.2]
    budget = table.tree_flops([[0, 1, 1]] * 2)  # one stream must go
    without = shrink_to_budget(anchor, budget, table, r, affinity, _table_where_merges_with_task0_are_free(None))
    with_solo_losses = shrink_to_budget(anchor, budget, table, r, affinity,
                                        _table_where_merges_with_task0_are_free([0.5, 1.0, 1.0]))
    # measured on the supernet alone, merging with task 0 is free: the search takes task 0's solitude
    assert 0 not in solo_tasks(without)
    # with its solo stream at half the loss, task 0 stays alone and tasks 1 and 2 share (1 % each)
    assert solo_tasks(with_solo_losses) == (0,)
    assert table.tree_flops(with_solo_losses) <= budget


def test_solo_losses_are_measured_with_the_paths_and_saved(tmp_path):
    ctrl, data, _ = _after_supernet()
    table = ctrl.measure_paths(data, samples=64)
    want = ctrl._tree_losses([[0, 1, 2]] * ctrl.n_layers, None, data[:2], torch.device("cpu"))
    torch.testing.assert_close(torch.as_tensor(table.solo, dtype=torch.float32), want)
    again = PathLosses.from_dict(table.to_dict())
    assert np.array_equal(again.solo, table.solo)
    with pytest.raises(ValueError, match="solo losses must be 3 finite numbers"):
        PathLosses(3, 2, np.ones((9, 3)), solo=[1.0, float("nan"), 1.0])


def test_the_supernet_plot_and_table_show_the_served_anchor_tree_and_the_supernets_own(tmp_path):
    from benchmarks.plots import plot_supernet
    from benchmarks.protocol.report import _supernet_table
    from benchmarks.views import supernet_effect

    ctrl, data, stage0 = _after_supernet()  # every solo stream kept; the trees as a stage with validation records them
    trees = ctrl._supernet_trees(data[:1], torch.device("cpu"))
    ctrl.stages["supernet"]["trees"] = {name: {"assignment": [list(row) for row in a]} for name, (a, _) in trees.items()}
    effect = supernet_effect(ctrl, stage0, data, torch.device("cpu"))
    served = ctrl.solo.forward_single
    solo_losses = [float(np.mean([t.loss(served(x)[t.name], y[t.name]) for x, y in data])) for t in ctrl.tasks]
    assert effect["anchor"]["after"] == pytest.approx(solo_losses, rel=1e-5)
    own = [tree_forward(ctrl.anchor, effect["anchor"]["assignment"], x) for x, _ in data]
    supernet_losses = [float(np.mean([t.loss(o[t.name], y[t.name]) for o, (_, y) in zip(own, data)])) for t in ctrl.tasks]
    assert effect["anchor"]["after_supernet_alone"] == pytest.approx(supernet_losses, rel=1e-5)
    results = {"tasks": ctrl.task_names, "benchmark": "tiny", "mode": "quick", "seeds": [0],
               "methods": {"dymu": {"per_seed": [{"seed": 0, "supernet_effect": effect}]}}}
    assert plot_supernet(results, tmp_path / "supernet.png").stat().st_size > 10_000
    assert any(line.startswith("| anchor tree, supernet alone") for line in _supernet_table(results))


def test_a_task_keeps_its_solo_stream_only_where_it_beats_the_supernets_on_validation():
    ctrl, data, _ = _after_supernet(solo=False)
    val = data[:1]
    candidate = copy.deepcopy(ctrl.anchor).requires_grad_(True)
    # a solo net that fits the validation batch (lower loss there) but whose stream 0 is broken
    train_anchor(candidate, ctrl.tasks, val, None, dymu.AnchorConfig(steps=20), torch.device("cpu"), verbose=False)
    with torch.no_grad():
        for p in candidate.streams[0].parameters():
            p.add_(torch.randn_like(p))
    record = ctrl._keep_better_streams(candidate, val, torch.device("cpu"))
    assert record["t0"]["solo"] is False and record["t1"]["solo"] is True
    for k, name in enumerate(ctrl.task_names):
        assert record[name]["solo"] == (record[name]["solo_val_loss"] < record[name]["supernet_val_loss"])
        same = _equal_states(ctrl.solo.streams[k], ctrl.anchor.streams[k])
        assert same != record[name]["solo"], name
    # where the supernet's streams win for every task nothing more is stored
    plain = copy.deepcopy(ctrl.anchor)
    assert all(not r["solo"] for r in ctrl._keep_better_streams(plain, val, torch.device("cpu")).values())
    assert ctrl.solo is None


def test_the_supernet_trains_the_same_with_and_without_solo_streams_even_with_dropout_in_a_head():
    class DropoutHead(torch.nn.Module):
        def __init__(self, shape):
            super().__init__()
            c, h, w = shape
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(c * h * w, 4))

        def forward(self, x, *skips):
            return self.body(x)

    tasks = [dymu.Task(t.name, head=DropoutHead, loss=t.loss, metrics=t.metrics, primary=t.primary,
                       higher_is_better=t.higher_is_better) for t in tiny_tasks(2)]
    states = []
    for solo in (False, True):
        torch.manual_seed(0)
        ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tasks, seed=0)
        data = tiny_batches(2, n_batches=2, batch=16, seed=1)
        ctrl.fit_anchor(data, None, config=dymu.AnchorConfig(steps=2), verbose=False)
        ctrl.fit_affinity(data, n_samples=32, calibration_samples=16)
        ctrl.fit_supernet(data, None, config=dymu.SupernetConfig(steps=3, solo=solo), verbose=False)
        states.append(ctrl.anchor)
    assert _equal_states(*states)
