"""build_model: the budget guarantee, derived trees, batch independence, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dymu
from dymu.adaptation import Adaptation
from dymu.anchor import tree_forward
from hyper import tree_code
from dymu.metrics import count_flops

from _tiny import make_controller, tiny_batches


def test_budget_is_never_exceeded_for_200_random_requests(controller):
    rng = np.random.default_rng(0)
    table = controller.cost_table
    anchor_flops = count_flops(controller.anchor, torch.zeros(1, 1, 36, 36))
    assert anchor_flops == table.anchor_flops
    shrunk = 0
    for _ in range(200):
        pref = rng.dirichlet(np.full(controller.n_tasks, 0.5))
        budget = float(rng.uniform(controller.min_budget, 1.0))
        model = controller.build_model(pref.tolist(), budget)
        measured = model.flops()
        assert measured <= budget * anchor_flops, (pref, budget, model.tree)
        assert measured == model.info["flops"] == table.tree_flops(model.tree.assignment)
        shrunk += model.info["shrunk"]
    assert shrunk > 0, "some requests should need branches merged; the test would not exercise shrinking"


def test_full_budget_at_c0_reaches_the_anchor_and_minimum_budget_gives_one_stream():
    ctrl = make_controller(randomize_edge=False)
    full = ctrl.build_model([1, 1, 1], budget=1.0)
    assert full.info["c"] == 0.0
    assert full.tree == dymu.Tree.independent(ctrl.task_names, ctrl.n_layers)
    assert full.flops() == ctrl.cost_table.anchor_flops
    cheapest = ctrl.build_model([1, 1, 1], budget=ctrl.min_budget)
    assert cheapest.tree.nodes_per_layer() == [1] * ctrl.n_layers
    assert cheapest.flops() == ctrl.cost_table.min_flops


def test_budget_below_the_minimum_names_the_minimum(controller):
    minimum = math.ceil(controller.min_budget * 1e6) / 1e6
    with pytest.raises(ValueError, match=f"minimum budget is {minimum:.6f}"):
        controller.build_model([1, 1, 1], budget=controller.min_budget * 0.99)
    # the minimum the message gives is always enough, and the exact minimum is accepted
    assert controller.build_model([1, 1, 1], budget=minimum).flops() == controller.cost_table.min_flops
    assert controller.build_model([1, 1, 1], budget=controller.min_budget).flops() == controller.cost_table.min_flops


@pytest.mark.parametrize(
    "preferences, message",
    [
        ([float("nan"), 1, 1], "NaN"),
        ([1, -0.5, 1], "negative"),
        ([1, float("inf"), 1], "infinite"),
        ([0, 0, 0], "all preference weights are zero"),
        ([1, 1], "2 preference weights for 3 tasks"),
        ({"t0": 1, "t1": 1, "tx": 1}, "unknown task"),
        ({"t0": 1, "t1": 1}, "lack task"),
        ("t0", "mapping"),
        ([1, "a", 1], "not a number"),
    ],
)
def test_bad_preferences_raise_naming_the_problem(controller, preferences, message):
    with pytest.raises(ValueError, match=message):
        controller.build_model(preferences, 0.5)


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, float("nan"), "x"])
def test_bad_budgets_raise(controller, budget):
    with pytest.raises(ValueError, match="budget"):
        controller.build_model([1, 1, 1], budget)


def test_bad_resource_preference_raises(controller):
    with pytest.raises(ValueError, match="c must lie in"):
        controller.build_model([1, 1, 1], c=1.2)


def test_a_mapping_and_a_sequence_give_the_same_model(controller):
    a = controller.build_model({"t2": 3, "t0": 1, "t1": 0}, 0.6)
    b = controller.build_model([0.25, 0.0, 0.75], 0.6)
    assert a.tree == b.tree
    x = torch.rand(4, 1, 36, 36)
    assert all(torch.equal(a(x)[k], b(x)[k]) for k in controller.task_names)


def test_a_shared_node_runs_once_and_flops_are_the_sum_of_node_costs(controller):
    tree = None
    for seed in range(50):
        pref = np.random.default_rng(seed).dirichlet(np.ones(3)).tolist()
        model = controller.build_model(pref, 0.7)
        if any(len(g) > 1 for g in model.tree.groups(0)) and model.tree.n_nodes > controller.n_layers:
            tree = model.tree
            break
    assert tree is not None, "expected a tree that shares some nodes and splits others"
    calls = {key: 0 for key in model.nodes}

    def counter(key):
        def hook(module, inputs, output):
            calls[key] += 1

        return hook

    for key, node in model.nodes.items():
        node.register_forward_hook(counter(key))
    model(torch.rand(5, 1, 36, 36))
    assert set(calls.values()) == {1}
    assert len(calls) == tree.n_nodes
    table = controller.cost_table
    per_node = sum(table.block_flops[int(k[1 : k.index("_")])] for k in model.nodes)
    assert model.flops() == per_node + sum(table.head_flops)


def test_derived_model_matches_the_functional_tree_forward_with_deltas(controller):
    model = controller.build_model([0.5, 0.3, 0.2], 0.8)
    r = torch.tensor([[0.5, 0.3, 0.2]])
    code = tree_code(model.tree.assignment, controller.n_tasks).unsqueeze(0)
    nodes, heads = controller.weight(r, torch.tensor([model.info["c"]]), code)
    adaptation = Adaptation(controller.weight, nodes, heads, model.tree.assignment, controller.adapt_scope)
    assert any(any(row) for row in adaptation.node_mask), "the test needs a tree with adapted nodes"
    x = torch.rand(6, 1, 36, 36)
    with torch.no_grad():
        expected = tree_forward(controller.anchor, model.tree.assignment, x, adaptation.node, adaptation.head)
        got = model(x)
    for name in controller.task_names:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5)


def test_routed_forward_with_one_hot_choices_equals_the_tree():
    ctrl = make_controller()
    anchor = ctrl.anchor
    parents = [[1, 1, 0], [2, 0, 0], [0, 0, 1], [1, 1, 1]]  # decision l, child j -> parent
    nu = torch.zeros(4, 3, 3)
    for l, row in enumerate(parents):
        for j, p in enumerate(row):
            nu[l, j, p] = 1
    from hyper import most_likely_parents

    assignment = most_likely_parents(nu)
    x = torch.rand(4, 1, 36, 36)
    with torch.no_grad():
        routed = anchor.routed_forward(x, nu)
        direct = tree_forward(anchor, assignment, x)
    for name in ctrl.task_names:
        torch.testing.assert_close(routed[name], direct[name])


@pytest.mark.parametrize("bn_stats", ["anchor", "batch"])
def test_a_sample_gets_the_same_output_alone_and_in_a_batch(bn_stats):
    ctrl = make_controller()
    ctrl.bn_stats = bn_stats
    model = ctrl.build_model([0.2, 0.5, 0.3], 0.7)
    x = torch.rand(9, 1, 36, 36)
    with torch.no_grad():
        batched = model(x)
        alone = model(x[3:4])
        other = model(torch.cat([x[3:4], torch.rand(20, 1, 36, 36) * 5]))
    for name in ctrl.task_names:
        torch.testing.assert_close(alone[name][0], batched[name][3], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alone[name][0], other[name][0], rtol=1e-5, atol=1e-5)


def test_recalibration_estimates_statistics_of_the_derived_tree():
    ctrl = make_controller()
    ctrl.bn_stats = "batch"
    model = ctrl.build_model([0.2, 0.5, 0.3], 1.0)
    first = next(m for m in model.nodes["l0_s" + str(model.tree.assignment[0][0])].modules() if isinstance(m, torch.nn.BatchNorm2d))
    ctrl.bn_stats = "anchor"
    plain = ctrl.build_model([0.2, 0.5, 0.3], 1.0)
    plain_first = next(m for m in plain.nodes["l0_s" + str(plain.tree.assignment[0][0])].modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(first.running_mean, plain_first.running_mean)
    # the recalibrated mean of the first BN is the mean conv response over the calibration inputs
    conv = model.nodes["l0_s" + str(model.tree.assignment[0][0])][0]
    with torch.no_grad():
        expected = conv(ctrl.calibration).mean((0, 2, 3))
    torch.testing.assert_close(first.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_repeated_requests_reuse_the_hypernet_outputs(controller, monkeypatch):
    controller.build_model([0.1, 0.2, 0.7], 0.5)
    calls = {"edge": 0}
    original = controller.edge.forward

    def counting(*args, **kwargs):
        calls["edge"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(controller.edge, "forward", counting)
    a = controller.build_model([0.1, 0.2, 0.7], 0.5)
    b = controller.build_model([0.1, 0.2, 0.7], 0.5)
    assert calls["edge"] == 0
    assert a is not b and a.tree == b.tree
    # models are independent copies: fine-tuning one leaves the controller and the other untouched
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert not torch.equal(next(a.parameters()), next(b.parameters()))


def test_c_alone_follows_the_paper_protocol_without_a_budget(controller):
    low = controller.build_model([1, 1, 1], c=0.0)
    assert low.info["c"] == 0.0 and low.info["budget"] is None


def test_without_the_weight_hypernet_the_anchor_batchnorm_is_kept(controller):
    model = controller.build_model([0.3, 0.3, 0.4], 1.0, use_weight_hypernet=False)
    for key, node in model.nodes.items():
        layer, stream = int(key[1 : key.index("_")]), int(key[key.index("_s") + 2 :])
        anchor_block = controller.anchor.block(layer, stream)
        for (name, p), (_, q) in zip(node.named_parameters(), anchor_block.named_parameters()):
            assert torch.equal(p, q), name


def test_evaluate_returns_a_table_that_saves_to_json(controller, tmp_path):
    data = tiny_batches(3, n_batches=1)
    table = controller.evaluate(data, [[1, 0, 0], [0, 0, 1]], budgets=[1.0, 0.5])
    assert len(table) == 4
    assert table.losses().shape == (4, 3) and np.isfinite(table.losses()).all()
    assert (table.flops()[1::2] <= 0.5 * controller.cost_table.anchor_flops).all()
    path = table.to_json(tmp_path / "eval.json")
    again = dymu.EvaluationTable.from_json(path)
    np.testing.assert_allclose(again.losses(), table.losses())
    text = table.format({"t0": "acc", "t1": "acc", "t2": "acc"})
    assert "t0:acc" in text and len(text.splitlines()) == 5
    assert not math.isnan(table.metric("acc").sum())


def test_the_merge_search_meets_the_budget_and_keeps_the_preferred_task_deepest(controller):
    controller.search = "merge"
    controller._invalidate()
    table = controller.cost_table
    rng = np.random.default_rng(3)
    for _ in range(30):
        r = rng.dirichlet(np.ones(3))
        budget = float(rng.uniform(controller.min_budget, 1.0))
        plan = controller.plan(r, budget)
        assert plan.flops <= budget * table.anchor_flops and plan.search == "merge" and not plan.fallback
    # near-uniform preferences may give the trunk to a group whose summed preference is larger;
    for k in range(3):  # a clearly preferred task keeps its own stream at least as deep as any other
        focus = np.full(3, 0.05)
        focus[k] = 0.9
        plan = controller.plan(focus, (controller.min_budget + 1) / 2)
        own = [sum(row[j] == j for row in plan.tree.assignment) for j in range(3)]
        assert own[k] == max(own), (k, plan.tree.assignment)
    anchor = dymu.Tree.independent(controller.task_names, controller.n_layers)
    assert controller.plan([0.2, 0.3, 0.5], 1.0).tree == anchor
    # c requests still go to the edge hypernet
    assert controller.plan([0.2, 0.3, 0.5], c=0.5).search == "hypernet"
    with pytest.raises(ValueError, match="search must be one of"):
        dymu.planner.Planner(controller.edge, table, controller.task_names, None, search="beam")


def test_choose_search_keeps_the_search_that_scores_lower_on_validation(controller, monkeypatch, tmp_path):
    scores = {"hypernet": 2.0, "merge": 1.5}
    monkeypatch.setattr(type(controller), "_validation_score", lambda self, batches, adapted: scores[self.search])
    assert controller.choose_search([]) == {"scores": scores, "chosen": "merge"} and controller.search == "merge"
    scores["merge"] = 2.0  # a tie keeps the hypernet
    assert controller.choose_search([])["chosen"] == "hypernet"
    controller.search = "merge"
    path = controller.save(tmp_path / "ctrl.pt")
    assert dymu.load(path, tasks=controller.tasks, backbone=dymu.backbones.lenet(width_mult=0.25)).search == "merge"


@pytest.mark.parametrize("bn_stats", ["anchor", "batch"])
def test_fold_bn_keeps_outputs_and_the_budget_and_counts_the_folds(bn_stats):
    ctrl = make_controller()
    ctrl.bn_stats = bn_stats
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial statistics and affine parameters, so a wrong fold shows
        for m in ctrl.anchor.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    rng = np.random.default_rng(0)
    anchor_flops = ctrl.cost_table.anchor_flops
    x = torch.rand(5, 1, 36, 36)
    for _ in range(8):
        pref = rng.dirichlet(np.ones(3)).tolist()
        budget = float(rng.uniform(ctrl.min_budget, 1.0))
        plain = ctrl.build_model(pref, budget)
        folded = ctrl.build_model(pref, budget, fold_bn=True)
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
        assert plain.info["folded_bn"] == 0 and n_bn > 0
        # every LeNet BatchNorm follows its convolution: all fold
        assert folded.info["folded_bn"] == n_bn
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert folded.tree == plain.tree and not folded.training
        assert folded.flops() <= plain.flops() <= budget * anchor_flops
        with torch.no_grad():
            want, got = plain(x), folded(x)
        for task in ctrl.task_names:
            torch.testing.assert_close(got[task], want[task], rtol=1e-5, atol=1e-5)
    # folding one model leaves the anchor's BatchNorm (and the next unfolded model) in place
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ctrl.build_model(pref, budget).modules())
