"""The hypernetworks, Gumbel sampling and the branching regulariser (hyper/, independent of dymu)."""

from __future__ import annotations

import math

import pytest
import torch

from hyper import (
    EdgeHypernet,
    RegulariserConfig,
    TemperatureSchedule,
    WeightHypernet,
    branching_regulariser,
    gumbel_softmax,
    most_likely_parents,
    tree_code,
    usage_probability,
)


def one_hot_choices(parents):
    """parents[l][j] -> nu [L, N, N] one-hot."""
    n = len(parents[0])
    nu = torch.zeros(len(parents), n, n)
    for l, row in enumerate(parents):
        for j, p in enumerate(row):
            nu[l, j, p] = 1.0
    return nu


def test_edge_hypernet_shapes_and_anchor_start():
    edge = EdgeHypernet(n_tasks=3, n_decisions=4)
    r = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    logits = edge(r, torch.tensor([0.0, 1.0]))
    assert logits.shape == (2, 4, 3, 3)
    # untrained: every child prefers its own stream, so the most likely tree is the anchor
    assert most_likely_parents(logits[0]) == [[0, 1, 2]] * 4


def test_most_likely_parents_traces_paths_from_the_heads():
    # decision 2 (heads): all heads read node 1; decision 1: node 1 reads node 0; decision 0: node 0 reads node 2
    parents = [[2, 2, 2], [0, 0, 0], [1, 1, 1]]
    logits = one_hot_choices(parents) * 10
    assert most_likely_parents(logits) == [[2, 2, 2], [0, 0, 0], [1, 1, 1]]
    # heads pick different nodes whose own parents differ
    parents = [[0, 1, 2], [0, 1, 1], [2, 0, 1]]
    assignment = most_likely_parents(one_hot_choices(parents) * 10)
    assert assignment[2] == [2, 0, 1]
    assert assignment[1] == [parents[1][2], parents[1][0], parents[1][1]] == [1, 0, 1]
    assert assignment[0] == [parents[0][1], parents[0][0], parents[0][1]] == [1, 0, 1]


def test_gumbel_softmax_hard_is_one_hot_with_soft_gradient():
    logits = torch.randn(4, 5, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    hard = gumbel_softmax(logits, tau=1.0, hard=True, generator=g)
    assert torch.equal(hard.detach().sum(-1), torch.ones(4))
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    (hard * torch.arange(5.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_softmax_is_reproducible_with_a_generator_and_sharpens_with_low_temperature():
    logits = torch.tensor([[2.0, 0.0, 0.0]]).expand(2000, 3)
    a = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(1))
    b = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    hot = gumbel_softmax(logits, 5.0, generator=torch.Generator().manual_seed(2))
    cold = gumbel_softmax(logits, 0.1, generator=torch.Generator().manual_seed(2))
    assert cold.max(-1).values.mean() > 0.95 > hot.max(-1).values.mean()
    # argmax frequencies follow softmax(logits) whatever the temperature
    freq = cold.argmax(-1).eq(0).float().mean().item()
    assert abs(freq - math.exp(2) / (math.exp(2) + 2)) < 0.05
    with pytest.raises(ValueError, match="temperature"):
        gumbel_softmax(logits, 0.0)


def test_temperature_schedule_matches_the_paper_and_scales_with_steps():
    paper = TemperatureSchedule(5.0, 0.97, 300)
    assert paper(0) == 5.0 and paper(299) == 5.0 and paper(300) == pytest.approx(4.85)
    short = TemperatureSchedule.for_steps(3000)
    assert short(2999) == pytest.approx(paper(29999), rel=1e-6)


def test_usage_probability_on_hard_choices_marks_exactly_the_used_nodes():
    # 3 tasks, 3 decisions; heads read nodes 0,0,2; node 0 and 2 of layer 2 read node 1 and 1; layer 1 node 1 reads 0
    parents = [[0, 0, 0], [1, 1, 1], [0, 0, 2]]
    usage = usage_probability(one_hot_choices(parents))
    assert usage[2].tolist() == [1.0, 0.0, 1.0]
    assert usage[1].tolist() == [0.0, 1.0, 0.0]
    assert usage[0].tolist() == [1.0, 0.0, 0.0]


def test_usage_probability_soft_matches_independent_choices():
    nu = torch.full((1, 2, 2), 0.5)
    usage = usage_probability(nu)
    assert usage[0].tolist() == [0.75, 0.75]  # 1 - (1 - 0.5)^2


def test_regulariser_active_term_vanishes_when_active_tasks_choose_alike_and_grows_with_c():
    same = one_hot_choices([[0, 0, 0], [0, 0, 0]])
    split = one_hot_choices([[0, 1, 2], [0, 1, 2]])
    r = torch.tensor([1 / 3, 1 / 3, 1 / 3])
    aff = torch.full((3, 3), 0.8)
    zero, parts = branching_regulariser(same, r, 1.0, aff)
    assert zero.item() == 0.0 and parts["l_active"] == 0.0
    low, _ = branching_regulariser(split, r, 0.2, aff)
    high, _ = branching_regulariser(split, r, 1.0, aff)
    assert 0 < low.item() < high.item()
    assert high.item() == pytest.approx(5 * low.item())


def test_regulariser_weights_pairs_by_affinity_and_depth():
    # tasks 0 and 1 split at the bottom (both decisions differ) or only at the heads
    bottom = one_hot_choices([[0, 1, 0], [0, 1, 0]])
    top = one_hot_choices([[0, 0, 0], [0, 1, 0]])
    r = torch.tensor([0.5, 0.5, 0.0])
    aff = torch.eye(3)
    aff[0, 1] = aff[1, 0] = 0.9
    only_active = RegulariserConfig(use_inactive=False)
    b, _ = branching_regulariser(bottom, r, 1.0, aff, only_active)
    t, _ = branching_regulariser(top, r, 1.0, aff, only_active)
    # ordered pairs (0,1), (1,0) x Aff 0.9 x ||e_0 - e_1||^2 = 2 x depth (1 at decision 0, 1/2 at the heads)
    assert t.item() == pytest.approx(2 * 0.9 * 2 * 0.5)
    assert b.item() == pytest.approx(2 * 0.9 * 2 * 1.0 + t.item())
    no_depth = RegulariserConfig(use_depth=False, use_inactive=False)
    assert branching_regulariser(top, r, 1.0, aff, no_depth)[0].item() == pytest.approx(2 * 0.9 * 2)
    no_aff = RegulariserConfig(use_affinity=False, use_inactive=False)
    assert branching_regulariser(top, r, 1.0, aff, no_aff)[0].item() == pytest.approx(2 * 2 * 0.5)
    # a node no path uses does not count: bottom split under heads that all read node 0
    unused = one_hot_choices([[0, 1, 0], [0, 0, 0]])
    assert branching_regulariser(unused, r, 1.0, aff, only_active)[0].item() == 0.0


def test_normalised_active_term_is_the_mean_over_unordered_pairs():
    split = one_hot_choices([[0, 1, 2], [0, 1, 2]])
    r = torch.full((3,), 1 / 3)
    aff = torch.ones(3, 3)
    raw, _ = branching_regulariser(split, r, 1.0, aff, RegulariserConfig(normalize=False))
    mean, _ = branching_regulariser(split, r, 1.0, aff)
    assert mean.item() == pytest.approx(raw.item() / 3)  # 3 unordered pairs among 3 active tasks


def test_inactive_tasks_copy_the_nearest_active_task():
    r = torch.tensor([0.9, 0.1, 0.0])  # tau = 0.6 / 3 = 0.2: only task 0 is active
    aff = torch.ones(3, 3)
    copies = one_hot_choices([[0, 0, 0], [1, 1, 1]])
    strays = one_hot_choices([[0, 1, 2], [1, 0, 2]])
    a, parts_a = branching_regulariser(copies, r, 0.0, aff)
    b, parts_b = branching_regulariser(strays, r, 0.0, aff)
    assert parts_a["l_inactive"] == 0.0 and a.item() == 0.0
    # 2 inactive tasks x 2 decisions x ||e_i - e_j||^2 = 2, averaged over the 2 inactive tasks
    assert parts_b["l_inactive"] == pytest.approx(4.0)
    assert b.item() == pytest.approx(0.1 * 4.0)
    raw, parts_raw = branching_regulariser(strays, r, 0.0, aff, RegulariserConfig(normalize=False))
    assert parts_raw["l_inactive"] == pytest.approx(8.0) and raw.item() == pytest.approx(0.8)
    off, _ = branching_regulariser(strays, r, 0.0, aff, RegulariserConfig(use_inactive=False))
    assert off.item() == 0.0
    everyone, parts = branching_regulariser(strays, r, 1.0, aff, RegulariserConfig(all_active=True))
    assert parts["l_inactive"] == 0.0 and parts["l_active"] > 0


def test_weight_hypernet_starts_at_zero_deltas_and_splits_per_batchnorm():
    weight = WeightHypernet(3, [[4, 6], [5]], head_channels=7, n_layers_tree=2)
    code = torch.stack([tree_code([[0, 1, 2], [0, 1, 2]], 3), tree_code([[0, 0, 0], [0, 0, 0]], 3)])
    deltas, heads = weight(torch.full((2, 3), 1 / 3), torch.tensor([0.1, 0.9]), code)
    assert [d.shape for d in deltas] == [(2, 3, 20), (2, 3, 10)]
    assert heads.shape == (2, 3, 14)
    assert all(d.abs().max() == 0 for d in [*deltas, heads])
    with pytest.raises(ValueError, match="tree_code"):
        weight(torch.full((2, 3), 1 / 3), torch.tensor([0.1, 0.9]))
    node = torch.arange(20.0)
    pairs = weight.split(0, node)
    assert [(g.tolist(), b.tolist()) for g, b in pairs] == [
        ([0, 1, 2, 3], [4, 5, 6, 7]),
        ([8, 9, 10, 11, 12, 13], [14, 15, 16, 17, 18, 19]),
    ]
