"""The affinity analyzer: feature collection, RSA affinity, budgeted branching trees, plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from affinity import (
    AffinityResult,
    Tree,
    branching_sequence,
    branching_tree,
    collect_features,
    plot_affinity,
    plot_dendrogram,
    plot_tree,
    relative_cost,
    rsa_affinity,
    similarity_matrix,
    tree_cost,
    tree_dissimilarity,
)

K = 24
LAYERS = 4


def structured(seed: int, k: int = K, channels: int = 6, size: int = 3) -> list[torch.Tensor]:
    """Per-layer features ``[K, C, size, size]`` driven by a few latent factors per image."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(k, 3, generator=g)
    layers = []
    for _ in range(LAYERS):
        mix = torch.randn(3, channels * size * size, generator=g)
        layers.append(torch.tanh(latent @ mix).reshape(k, channels, size, size))
    return layers


def noise(seed: int, k: int = K) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, 6, 3, 3, generator=g) for _ in range(LAYERS)]


def twins_and_stranger() -> dict[str, list[torch.Tensor]]:
    """Tasks a and b see identical features, c independent noise."""
    a = structured(0)
    return {"a": a, "b": [x.clone() for x in a], "c": noise(1)}


def mixed_family() -> dict[str, list[torch.Tensor]]:
    """Four tasks with graded relations: b is a noisy a, c shares a's latent less and less, d is noise."""
    g = torch.Generator().manual_seed(7)
    a = structured(3)
    b = [x + 0.3 * torch.randn(x.shape, generator=g) for x in a]
    c = [x + (0.5 + layer) * torch.randn(x.shape, generator=g) for layer, x in enumerate(a)]
    return {"a": a, "b": b, "c": c, "d": noise(4)}


def off_diagonal(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(len(matrix), dtype=bool)]


# ------------------------------------------------------------------------------------ RSA
@pytest.mark.parametrize("measure", ["pearson", "cka"])
def test_identical_tasks_have_the_largest_affinity_and_share_deepest(measure):
    result = rsa_affinity(twins_and_stranger(), measure=measure)
    assert result.tasks == ("a", "b", "c")
    assert result.matrix[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert result.matrix[0, 1] == off_diagonal(result.matrix).max()
    assert result.matrix[0, 1] > max(result.matrix[0, 2], result.matrix[1, 2]) + 0.05
    for budget in (0.3, 0.6, 1.0):
        tree = branching_tree(result, extra_share=budget)
        assert tree.branch_layer("a", "b") > tree.branch_layer("a", "c")
        assert tree.branch_layer("a", "b") > tree.branch_layer("b", "c")
    full = branching_tree(result, extra_share=1.0)
    assert full.branch_layer("a", "b") == LAYERS  # identical tasks are never separated
    assert full.branch_layer("a", "c") == 0


@pytest.mark.parametrize("measure", ["pearson", "cka"])
def test_affinity_is_symmetric_with_unit_diagonal_and_matrix_is_the_layer_mean(measure):
    result = rsa_affinity(mixed_family(), measure=measure)
    assert result.per_layer.shape == (LAYERS, 4, 4)
    assert result.matrix.shape == (4, 4)
    assert np.array_equal(result.per_layer, result.per_layer.transpose(0, 2, 1))
    assert np.all(np.diagonal(result.matrix) == 1.0)
    assert np.all((result.per_layer >= 0) & (result.per_layer <= 1))
    np.testing.assert_allclose(off_diagonal(result.matrix), off_diagonal(result.per_layer.mean(axis=0)))
    assert result.measure == measure and result.n_samples == K and result.layers == tuple(range(LAYERS))
    # the graded construction shows up: b (a + little noise) is closer to a than the pure noise d
    assert result.value("a", "b") > result.value("a", "d")


@pytest.mark.parametrize("measure", ["pearson", "cka"])
def test_affinity_ignores_positive_scaling_and_channel_permutation(measure):
    features = mixed_family()
    baseline = rsa_affinity(features, measure=measure)
    permutation = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    changed = dict(features)
    changed["b"] = [x * 37.5 for x in features["b"]]
    changed["c"] = [x[:, permutation] for x in features["c"]]
    np.testing.assert_allclose(rsa_affinity(changed, measure=measure).per_layer, baseline.per_layer, atol=1e-6)
    # while a real change of a task's representation does move the affinity
    changed["b"] = noise(99)
    assert not np.allclose(rsa_affinity(changed, measure=measure).per_layer, baseline.per_layer, atol=1e-3)


def test_pearson_rsa_follows_the_documented_recipe():
    """S = correlation between images; D = distance of strict upper triangles; rows / row max; symmetrised."""
    features = mixed_family()
    result = rsa_affinity(features)
    tasks = list(features)
    for layer in range(LAYERS):
        sims = []
        for task in tasks:
            flat = features[task][layer].reshape(K, -1).double().numpy()
            correlation = np.corrcoef(flat)
            np.testing.assert_allclose(similarity_matrix(features[task][layer]).numpy(), correlation, atol=1e-10)
            sims.append(correlation[np.triu_indices(K, k=1)])
        distance = np.array([[np.linalg.norm(s - t) for t in sims] for s in sims])
        raw = 1 - distance / distance.max(axis=1, keepdims=True)
        np.testing.assert_allclose(result.per_layer[layer], (raw + raw.T) / 2, atol=1e-9)
        # each task's farthest task scores 0 in its raw row
        assert np.allclose(raw.min(axis=1), 0.0)


def test_linear_cka_is_one_for_a_rotation_and_lower_for_unrelated_features():
    features = mixed_family()
    q, _ = torch.linalg.qr(torch.randn(54, 54, generator=torch.Generator().manual_seed(5)))
    rotated = {
        "a": features["a"],
        "rotated": [(x.reshape(K, -1) @ q).reshape(x.shape) for x in features["a"]],
        "d": features["d"],
    }
    result = rsa_affinity(rotated, measure="cka")
    assert result.value("a", "rotated") == pytest.approx(1.0, abs=1e-6)
    assert result.value("a", "d") < 0.9


def test_features_may_be_mappings_with_named_layers_or_numpy_arrays():
    features = twins_and_stranger()
    named = {task: {f"block{l}": layers[l].numpy() for l in range(LAYERS)} for task, layers in features.items()}
    result = rsa_affinity(named)
    assert result.layers == tuple(f"block{l}" for l in range(LAYERS))
    np.testing.assert_allclose(result.per_layer, rsa_affinity(features).per_layer, atol=1e-12)


def test_result_round_trips_through_json_and_files(tmp_path):
    result = rsa_affinity(mixed_family())
    again = AffinityResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.tasks == result.tasks and again.measure == result.measure and again.layers == result.layers
    assert again.n_samples == K
    np.testing.assert_array_equal(again.per_layer, result.per_layer)
    np.testing.assert_array_equal(again.matrix, result.matrix)
    loaded = AffinityResult.load(result.save(tmp_path / "sub" / "aff.json"))
    np.testing.assert_array_equal(loaded.matrix, result.matrix)


def test_result_rejects_inconsistent_data(tmp_path):
    data = rsa_affinity(mixed_family()).to_dict()
    data["matrix"][0][1] = 0.123456
    with pytest.raises(ValueError, match="not the mean of 'per_layer'"):
        AffinityResult.from_dict(data)
    with pytest.raises(ValueError, match=r"shape \[L >= 1, 3, 3\]"):
        AffinityResult(("a", "b", "c"), np.ones((2, 2, 2)), "pearson")
    with pytest.raises(ValueError, match="symmetric"):
        AffinityResult(("a", "b"), np.array([[[1.0, 0.2], [0.4, 1.0]]]), "pearson")
    with pytest.raises(ValueError, match="with itself must be 1"):
        AffinityResult(("a", "b"), np.array([[[0.5, 0.2], [0.2, 1.0]]]), "pearson")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        AffinityResult(("a", "b"), np.array([[[1.0, 1.5], [1.5, 1.0]]]), "pearson")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        AffinityResult.load(bad)
    with pytest.raises(ValueError, match="no affinity file"):
        AffinityResult.load(tmp_path / "missing.json")


def _with(features, task, layer, value):
    changed = {t: list(layers) for t, layers in features.items()}
    changed[task][layer] = value
    return changed


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda f: _with(f, "b", 2, f["b"][2][:-1]), "K differs"),
        (lambda f: {t: [x[:10] for x in v] if t == "c" else v for t, v in f.items()}, "K differs"),
        (lambda f: {**f, "c": f["c"][:-1]}, "different layers"),
        (lambda f: {**f, "c": dict(enumerate(f["c"][:3])) | {"extra": f["c"][3]}}, "different layers"),
        (lambda f: _with(f, "a", 1, torch.full_like(f["a"][1], float("nan"))), "NaN or inf"),
        (lambda f: _with(f, "c", 0, f["c"][0].index_fill(0, torch.tensor([3]), float("inf"))), "NaN or inf"),
        (lambda f: {"a": f["a"]}, "at least 2 tasks"),
        (lambda f: {t: [x[:2] for x in v] for t, v in f.items()}, r"K >= 3"),
        (lambda f: {t: [x.reshape(K, -1)[:, :1] for x in v] for t, v in f.items()}, "at least 2"),
        (lambda f: {**f, "c": "features"}, "mapping layer -> tensor"),
        (lambda f: {**f, "c": []}, "has no layers"),
        (lambda f: _with(f, "b", 0, [[1.0, 2.0]]), "expected a tensor"),
    ],
)
def test_bad_features_raise_a_value_error_naming_the_problem(make, message):
    with pytest.raises(ValueError, match=message):
        rsa_affinity(make(twins_and_stranger()))


def test_unknown_measure_is_rejected():
    with pytest.raises(ValueError, match="unknown measure 'cosine'"):
        rsa_affinity(twins_and_stranger(), measure="cosine")


# ------------------------------------------------------------------------------ branching
def late_splitting_affinity() -> np.ndarray:
    """a and b alike up to layer 3 then unlike; c unlike both everywhere; d like a until layer 1."""
    per_layer = np.zeros((6, 4, 4))
    for layer in range(6):
        np.fill_diagonal(per_layer[layer], 1.0)
        if layer < 3:
            per_layer[layer, 0, 1] = per_layer[layer, 1, 0] = 0.95
        if layer < 1:
            per_layer[layer, 0, 3] = per_layer[layer, 3, 0] = 0.9
            per_layer[layer, 1, 3] = per_layer[layer, 3, 1] = 0.9
    return per_layer


def refines(finer: Tree, coarser: Tree) -> bool:
    """Every node of ``finer`` lies inside one node of ``coarser`` at the same layer."""
    for layer in range(finer.n_layers):
        coarse = {task: group for group in coarser.groups(layer) for task in group}
        for group in finer.groups(layer):
            if not set(group) <= set(coarse[group[0]]):
                return False
    return True


COSTS = [1.0, 3.0, 3.0, 8.0, 8.0, 20.0]


@pytest.mark.parametrize("layer_costs", [None, COSTS])
def test_more_budget_never_gives_fewer_nodes_and_budgets_are_respected(layer_costs):
    affinity = late_splitting_affinity()
    tasks = ("a", "b", "c", "d")
    costs = np.ones(6) if layer_costs is None else np.asarray(layer_costs)
    shared, anchor = costs.sum(), 4 * costs.sum()
    smallest = branching_tree(affinity, tasks, extra_share=0.0, layer_costs=layer_costs)
    assert smallest.same_structure(Tree.shared(tasks, 6))
    previous = smallest
    for budget in np.linspace(0.0, 1.0, 21):
        tree = branching_tree(affinity, tasks, extra_share=float(budget), layer_costs=layer_costs)
        assert tree_cost(tree, layer_costs) <= shared + budget * (anchor - shared) + 1e-9
        assert relative_cost(tree, layer_costs) <= budget + 1e-9
        assert all(now >= before for now, before in zip(tree.nodes_per_layer(), previous.nodes_per_layer()))
        assert refines(tree, previous)
        previous = tree
    assert previous.n_nodes > smallest.n_nodes


def test_splits_follow_the_per_layer_affinity():
    tasks = ("a", "b", "c", "d")
    # 20 of the anchor's 24 nodes: enough for every split worth 1 per node, not for a/b's 0.05
    tree = branching_tree(late_splitting_affinity(), tasks, extra_share=(20 - 6) / (24 - 6))
    assert tree.branch_layer("a", "b") == 3
    assert tree.branch_layer("a", "d") == 1
    assert tree.branch_layer("a", "c") == 0
    assert tree.n_nodes == 20
    # a small budget goes to the most dissimilar split first, at the deep end
    small = branching_tree(late_splitting_affinity(), tasks, extra_share=0.1)
    assert small.nodes_per_layer() == [1, 1, 1, 1, 1, 2]
    assert small.groups(5) == [("a", "b", "d"), ("c",)]
    # all the budget: even slightly dissimilar tasks get their own paths
    assert branching_tree(late_splitting_affinity(), tasks, extra_share=1.0).same_structure(Tree.independent(tasks, 6))


def test_tasks_unlike_early_but_alike_late_still_split_early():
    """Sharing the late layers is free, but a path cannot re-merge, so the early split is worth its cost."""
    per_layer = np.ones((5, 2, 2))
    per_layer[:2, 0, 1] = per_layer[:2, 1, 0] = 0.0
    tree = branching_tree(per_layer, ("x", "y"), extra_share=1.0)
    assert tree.branch_layer("x", "y") == 0


def test_absolute_budget_and_costs():
    affinity = late_splitting_affinity()
    tasks = ("a", "b", "c", "d")
    for limit in (sum(COSTS), 60.0, 100.0, 4 * sum(COSTS)):
        tree = branching_tree(affinity, tasks, max_cost=limit, layer_costs=COSTS)
        assert tree_cost(tree, COSTS) <= limit
    with pytest.raises(ValueError, match="below the cost of hard sharing"):
        branching_tree(affinity, tasks, max_cost=sum(COSTS) - 1, layer_costs=COSTS)
    tree = Tree(tasks, [[0, 0, 0, 0]] * 3 + [[0, 0, 2, 0]] * 2 + [[0, 1, 2, 3]])
    assert tree_cost(tree, COSTS) == 1 + 3 + 3 + 2 * 8 + 2 * 8 + 4 * 20
    assert tree_cost(tree) == tree.n_nodes
    assert relative_cost(Tree.shared(tasks, 6), COSTS) == 0.0
    assert relative_cost(Tree.independent(tasks, 6), COSTS) == 1.0


def test_sequence_is_nested_deterministic_and_lowers_the_dissimilarity():
    result = rsa_affinity(mixed_family())
    sequence = branching_sequence(result, layer_costs=[1, 2, 4, 8])
    assert sequence == branching_sequence(result, layer_costs=[1, 2, 4, 8])
    costs = [tree_cost(t, [1, 2, 4, 8]) for t in sequence]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    losses = [tree_dissimilarity(t, result) for t in sequence]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(losses, losses[1:]))
    assert all(refines(b, a) for a, b in zip(sequence, sequence[1:]))
    for tree in sequence:  # every tree is a valid Tree and survives serialisation
        assert Tree.from_json(tree.to_json()) == tree


def test_twenty_tasks_and_layers_are_handled_quickly_and_within_budget():
    rng = np.random.default_rng(0)
    n, n_layers = 20, 20
    latent = rng.normal(size=(n, 2))
    per_layer = np.empty((n_layers, n, n))
    for layer in range(n_layers):
        points = latent * (1 + layer / 4) + 0.3 * rng.normal(size=(n, 2))
        distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
        per_layer[layer] = 1 - distance / distance.max()
    costs = list(np.linspace(1.0, 5.0, n_layers))
    previous = None
    for budget in (0.0, 0.2, 0.5, 1.0):
        tree = branching_tree(per_layer, extra_share=budget, layer_costs=costs)
        assert relative_cost(tree, costs) <= budget + 1e-9
        if previous is not None:
            assert refines(tree, previous)
        previous = tree
    assert previous.n_nodes > n_layers


def test_a_single_matrix_is_used_at_every_layer():
    matrix = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    tree = branching_tree(matrix, ["p", "q", "r"], extra_share=0.5, n_layers=4)
    assert tree.n_layers == 4
    assert tree.branch_layer("p", "q") > tree.branch_layer("p", "r")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of extra_share"),
        ({"extra_share": 0.5, "max_cost": 10.0}, "exactly one of extra_share"),
        ({"extra_share": 1.5}, r"extra_share must be a share in \[0, 1\]"),
        ({"extra_share": -0.1}, "extra_share must be a share"),
        ({"extra_share": 0.5, "budget": 0.5}, "extra_share only"),
        ({"extra_share": 0.5, "layer_costs": [1.0, 2.0]}, "layer_costs has 2 entries for the affinity's 6 layers"),
        ({"extra_share": 0.5, "layer_costs": [1, 1, 1, -1, 1, 1]}, "non-negative"),
        ({"extra_share": 0.5, "tasks": ("a", "b")}, "2 task names for an affinity over 4 tasks"),
    ],
)
def test_bad_branching_arguments_raise(kwargs, message):
    kwargs.setdefault("tasks", ("a", "b", "c", "d"))
    with pytest.raises(ValueError, match=message):
        branching_tree(late_splitting_affinity(), **kwargs)


def test_budget_is_the_deprecated_name_of_extra_share():
    tasks = ("a", "b", "c", "d")
    with pytest.warns(DeprecationWarning, match="extra_share"):
        old = branching_tree(late_splitting_affinity(), tasks, budget=0.4)
    assert old.same_structure(branching_tree(late_splitting_affinity(), tasks, extra_share=0.4))


def test_bad_affinity_arrays_raise():
    with pytest.raises(ValueError, match="needs n_layers"):
        branching_tree(np.eye(3), extra_share=0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        branching_tree(np.full((2, 3, 3), 2.0), extra_share=0.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        branching_tree(np.full((2, 3, 3), np.nan), extra_share=0.5)
    with pytest.raises(ValueError, match=r"\[N, N\] or \[L, N, N\]"):
        branching_tree(np.ones(3), extra_share=0.5)
    result = rsa_affinity(twins_and_stranger())
    with pytest.raises(ValueError, match="differ from the affinity's tasks"):
        branching_tree(result, ("x", "y", "z"), extra_share=0.5)


# ----------------------------------------------------------------------- feature collection
class TinyNet(nn.Module):
    """A single-task network exposing its backbone's blocks, with a head after them."""

    def __init__(self, seed: int, fail_in_head: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)),
                # starts with an in-place op that would overwrite the previous block's output
                nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)),
                nn.Sequential(nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1, stride=2)),
            ]
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(5 * 2 * 2, 2))
        self.fail_in_head = fail_in_head
        self.head_calls = 0

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        self.head_calls += 1
        if self.fail_in_head:
            raise RuntimeError("head exploded")
        return self.head(x)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_collect_features_returns_every_block_output_and_leaves_no_trace():
    models = {"seg": TinyNet(0), "depth": TinyNet(1)}
    models["seg"].train()
    models["seg"].blocks[0][1].eval()  # a frozen BatchNorm inside a training model
    modes = {name: [m.training for m in model.modules()] for name, model in models.items()}
    images = torch.randn(20, 3, 8, 8)
    features = collect_features(models, inputs=images, max_samples=13, batch_size=5)
    assert set(features) == {"seg", "depth"}
    shapes = [(13, 4, 4, 4), (13, 6, 4, 4), (13, 5, 2, 2)]
    for task, model in models.items():
        assert [tuple(features[task][l].shape) for l in range(3)] == shapes
        assert no_hooks(model)
        assert [m.training for m in model.modules()] == modes[task]
        assert not any(x.requires_grad for x in features[task].values())
    # the stored outputs are the eval-mode block outputs, untouched by the next block's in-place ReLU
    model = models["depth"].eval()
    with torch.no_grad():
        x = images[:13]
        for l, block in enumerate(model.blocks):
            x = block(x.clone())
            torch.testing.assert_close(features["depth"][l], x)


def test_collect_features_takes_the_first_samples_of_a_loader_once():
    loaded = []

    def loader():
        for start in range(0, 40, 8):
            batch = torch.randn(8, 3, 8, 8)
            loaded.append(start)
            yield batch, torch.zeros(8)

    twins = {"a": TinyNet(3), "b": TinyNet(3)}
    features = collect_features(twins, inputs=loader(), max_samples=12)
    assert loaded == [0, 8]  # stopped reading once 12 samples were in hand
    for layer in range(3):
        assert features["a"][layer].shape[0] == 12
        torch.testing.assert_close(features["a"][layer], features["b"][layer])


def test_collect_features_accepts_explicit_blocks_and_pools_large_maps():
    model = TinyNet(0)
    chosen = [model.blocks[0], model.head]
    by_task = collect_features({"t": model}, {"t": chosen}, torch.randn(6, 3, 8, 8))
    by_callable = collect_features({"t": model}, lambda m: chosen, torch.randn(6, 3, 8, 8))
    assert [tuple(v.shape) for v in by_task["t"].values()] == [(6, 4, 4, 4), (6, 2)]
    assert [tuple(v.shape) for v in by_callable["t"].values()] == [(6, 4, 4, 4), (6, 2)]
    pooled = collect_features({"t": model}, inputs=torch.randn(6, 3, 8, 8), spatial_size=2)
    assert [tuple(v.shape) for v in pooled["t"].values()] == [(6, 4, 2, 2), (6, 6, 2, 2), (6, 5, 2, 2)]


def test_collect_features_skips_the_head_and_cleans_up_when_the_forward_fails():
    model = TinyNet(0, fail_in_head=True)
    model.train()
    features = collect_features({"t": model}, inputs=torch.randn(4, 3, 8, 8))
    assert len(features["t"]) == 3 and model.head_calls == 0
    with pytest.raises(RuntimeError, match="head exploded"):
        collect_features({"t": model}, inputs=torch.randn(4, 3, 8, 8), stop_after_last_block=False)
    assert no_hooks(model)
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: collect_features({"t": nn.Linear(2, 2)}, inputs=torch.randn(4, 2)), "no 'blocks'"),
        (lambda: collect_features({}, inputs=torch.randn(4, 2)), "non-empty mapping"),
        (lambda: collect_features({"t": TinyNet(0)}), "inputs is required"),
        (lambda: collect_features({"t": TinyNet(0)}, inputs=iter([])), "no samples"),
        (lambda: collect_features({"t": TinyNet(0)}, inputs=[{"x": 1}]), "batch 0 of inputs"),
        (lambda: collect_features({"t": TinyNet(0)}, {"other": []}, torch.randn(4, 3, 8, 8)), "no entry for task 't'"),
        (lambda: collect_features({"t": TinyNet(0)}, lambda m: [nn.ReLU()], torch.randn(4, 3, 8, 8)), "did not run"),
    ],
)
def test_collect_features_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_features_to_affinity_to_tree():
    models = {"a": TinyNet(0), "a_copy": TinyNet(0), "b": TinyNet(5)}
    features = collect_features(models, inputs=torch.randn(16, 3, 8, 8))
    result = rsa_affinity(features)
    assert result.value("a", "a_copy") == pytest.approx(1.0)
    tree = branching_tree(result, extra_share=1.0)
    assert tree.branch_layer("a", "a_copy") == 3
    assert tree.branch_layer("a", "b") < 3


# ---------------------------------------------------------------------------------- plots
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_plots_write_png_files_without_a_display(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = rsa_affinity(mixed_family())
    tree = branching_tree(result, extra_share=0.5)
    written = [
        plot_affinity(result, tmp_path / "affinity.png"),
        plot_affinity(result, tmp_path / "mean_only.png", per_layer=False),
        plot_dendrogram(result, tmp_path / "dendrogram.png"),
        plot_tree(tree, tmp_path / "nested" / "tree.png", layer_costs=[1e6, 2e6, 4e6, 8e6], title="budget 0.5"),
    ]
    assert written[-1] == tmp_path / "nested" / "tree.png"
    assert all(is_png(path) for path in written)


def test_tree_plot_handles_twenty_tasks_and_layers(tmp_path):
    names = [f"task_number_{k}" for k in range(20)]
    sizes = [20, 10, 5, 1]  # group size for each run of 5 layers: nested splits
    rows = [[k // sizes[layer // 5] * sizes[layer // 5] for k in range(20)] for layer in range(20)]
    tree = Tree(names, rows)
    assert is_png(plot_tree(tree, tmp_path / "big.png", layer_costs=list(range(1, 21))))
    with pytest.raises(ValueError, match="20 finite non-negative"):
        plot_tree(tree, tmp_path / "bad.png", layer_costs=[1.0])

