"""The baselines of the benchmark comparison: hard sharing per preference, PHN, PHN-BN, the static tree, the
distilled trunk, cross-stitch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dymu
from benchmarks.baselines import PHN, CrossStitch, DistilledTrunk, HardSharing, StaticTree
from benchmarks.baselines.common import block_flops, shared_network, validation_losses
from benchmarks.baselines.cross_stitch import cross_stitch_network
from benchmarks.baselines.distilled_trunk import distillation_loss, identity_adaptor
from benchmarks.protocol import STATIC, evaluate_method
from benchmarks.methods import StepBudget
from dymu.metrics import count_flops, count_params

CLASSES = 4
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These networks are tiny: a second intra-op thread only adds synchronisation, which on a busy
    # machine makes a forward pass up to ~50 times slower. Restored after this module.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Head(nn.Module):
    def __init__(self, shape):
        super().__init__()
        c, h, w = shape
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, CLASSES))

    def forward(self, x, *skips):
        return self.body(x)


def _tasks(n: int = 2) -> list[dymu.Task]:
    return [
        dymu.Task(f"t{i}", head=_Head, loss=F.cross_entropy, metrics={"acc": dymu.metrics.accuracy}, primary="acc",
                  higher_is_better=True)
        for i in range(n)
    ]


def _backbone():
    return dymu.backbones.lenet(width_mult=0.25)


def _batches(n_tasks: int = 2, n_batches: int = 4, batch: int = 32, seed: int = 0):
    """Noisy 36x36 images; task ``i``'s label (one of 4) says which corner of region ``i`` holds a bright square."""
    g = torch.Generator().manual_seed(seed)
    regions = [(0, 0), (18, 18), (0, 18)]
    out = []
    for _ in range(n_batches):
        x = 0.3 * torch.rand(batch, 1, 36, 36, generator=g)
        targets = {}
        for i in range(n_tasks):
            y = torch.randint(0, CLASSES, (batch,), generator=g)
            top, left = regions[i % 3]
            for b in range(batch):
                r, c = top + 9 * (int(y[b]) // 2), left + 9 * (int(y[b]) % 2)
                x[b, 0, r : r + 9, c : c + 9] += 1.0
            targets[f"t{i}"] = y
        out.append((x, targets))
    return out


def _affinity(n_layers: int = 4) -> np.ndarray:
    """Tasks 0 and 1 alike, task 2 unlike both: ``[L, 3, 3]``."""
    a = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]])
    return np.broadcast_to(a, (n_layers, 3, 3)).copy()


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ----------------------------------------------------------------------------- hard sharing
def test_hard_sharing_trains_one_model_per_preference_and_refuses_others():
    tasks, data = _tasks(), _batches()
    prefs = np.array([[0.8, 0.2], [0.2, 0.8]])
    method = HardSharing(_backbone, tasks, StepBudget(anchor=3, edge=1, weights=1, batch_size=32), prefs)
    method.fit(data, data[:1], device="cpu", verbose=False)
    assert method.train_seconds > 0
    assert len(method.models) == 2 and method.models[0] is not method.models[1]
    assert method.model_for(np.float32([0.2, 0.8])) is method.models[1]  # float32 rounding still matches
    assert method.model_for([0.8, 0.2]) is method.models[0]
    out = _outputs(method.model_for([0.8, 0.2]), data[0][0])
    assert set(out) == {"t0", "t1"} and all(v.shape == (32, CLASSES) for v in out.values())
    with pytest.raises(ValueError, match="no model was trained for preference"):
        method.model_for([0.5, 0.5])
    assert method.size() == sum(count_params(m) for m in method.models)
    assert method.loss_scales.shape == (2,) and (method.loss_scales > 0).all()


def test_hard_sharing_uses_given_loss_scales_and_checks_them():
    tasks = _tasks()
    method = HardSharing(_backbone, tasks, StepBudget(1, 1, 1), [[1.0, 0.0]], loss_scales=[1.0, 2.0])
    assert method.loss_scales.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="loss scales"):
        HardSharing(_backbone, tasks, StepBudget(1, 1, 1), [[1.0, 0.0]], loss_scales=[1.0, -1.0])
    with pytest.raises(ValueError, match="2 tasks"):
        HardSharing(_backbone, tasks, StepBudget(1, 1, 1), [[1.0, 0.0]], loss_scales=[1.0])


# ------------------------------------------------------------------------------------- PHN
@pytest.fixture(scope="module")
def fitted_phn() -> dict[str, PHN]:
    data = _batches()
    methods = {}
    for mode in ("full", "bn"):
        method = PHN(_backbone, _tasks(), StepBudget(anchor=2, edge=2, weights=2, batch_size=32), mode=mode, eval_every=3)
        method.fit(data, data[:1], device=CPU, verbose=False)
        methods[mode] = method
    return methods


def test_phn_model_depends_on_the_preference(fitted_phn):
    x = _batches(n_batches=1, seed=5)[0][0]
    for method in fitted_phn.values():
        assert method.train_seconds > 0
        a1, a2 = _outputs(method.model_for([0.9, 0.1]), x), _outputs(method.model_for([0.9, 0.1]), x)
        b = _outputs(method.model_for([0.1, 0.9]), x)
        for name in ("t0", "t1"):
            assert a1[name].shape == (32, CLASSES)
            assert torch.equal(a1[name], a2[name])
            assert (a1[name] - b[name]).abs().max() > 1e-6


def test_phn_full_generates_every_parameter(fitted_phn):
    method = fitted_phn["full"]
    target = method.target
    assert count_params(target, trainable_only=True) == 0
    assert {n for n, _ in method.generated} == {n for n, _ in target.named_parameters()}
    assert method.n_generated == count_params(target)
    assert method.size() == count_params(method.hypernet)
    x = _batches(n_batches=1, seed=6)[0][0]
    before = _outputs(method.model_for([0.5, 0.5]), x)
    # the target's own parameter values are never used
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    unchanged = _outputs(method.model_for([0.5, 0.5]), x)
    assert all(torch.equal(before[n], unchanged[n]) for n in before)
    # every weight is an output of the hypernet: moving one output bias moves that weight of the model
    last_name = method.generated[-1][0]
    index = method.n_generated - 1  # the last head's last bias entry
    with torch.no_grad():
        method.hypernet.output_bias.view(-1)[index] += 3.0
    model = method.model_for([0.5, 0.5])
    assert torch.isclose(model.get_parameter(last_name).view(-1)[-1],
                         method.predicted_parameters(torch.tensor([0.5, 0.5]))[last_name].view(-1)[-1])
    changed = _outputs(model, x)
    assert not torch.equal(before["t1"], changed["t1"])
    assert torch.allclose(before["t1"][:, -1] + 3.0, changed["t1"][:, -1], atol=1e-5)
    with torch.no_grad():
        method.hypernet.output_bias.view(-1)[index] -= 3.0


def test_phn_bn_changes_only_batchnorm_affine_parameters(fitted_phn):
    method = fitted_phn["bn"]
    bn_names = {n for n, _ in method.generated}
    assert bn_names and all(n.endswith((".weight", ".bias")) for n in bn_names)
    a, b = method.model_for([0.9, 0.1]), method.model_for([0.1, 0.9])
    changed = set()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if not torch.equal(pa, pb):
            changed.add(name)
    assert changed and changed <= bn_names
    for (_, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        assert torch.equal(ba, bb)
    shared = method.shared_parameters()
    assert shared and count_params(method.target, trainable_only=True) == sum(p.numel() for p in shared)
    assert method.size() == count_params(method.hypernet) + sum(p.numel() for p in shared)


def test_phn_is_deterministic_and_checks_its_arguments():
    data = _batches(n_batches=2)
    runs = []
    for _ in range(2):
        method = PHN(_backbone, _tasks(), StepBudget(2, 1, 1), mode="bn", val_batches=1)
        method.fit(data, data[:1], device=CPU, verbose=False)
        runs.append(_outputs(method.model_for([0.3, 0.7]), data[0][0]))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    with pytest.raises(ValueError, match="mode"):
        PHN(_backbone, _tasks(), StepBudget(1, 1, 1), mode="weights")
    with pytest.raises(ValueError, match="call fit"):
        PHN(_backbone, _tasks(), StepBudget(1, 1, 1)).model_for([0.5, 0.5])

    def no_batchnorm():
        blocks = [nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()) for _ in range(2)]
        blocks[1][0] = nn.Conv2d(2, 2, 3, padding=1)
        return dymu.backbones.BlockBackbone(blocks, in_channels=1, input_size=(36, 36))

    with pytest.raises(ValueError, match="BatchNorm"):
        PHN(no_batchnorm, _tasks(), StepBudget(1, 1, 1), mode="bn")


# ----------------------------------------------------------------------------- static tree
def test_static_tree_computes_each_node_once_and_costs_its_nodes():
    tasks, data = _tasks(3), _batches(n_tasks=3, n_batches=2)
    method = StaticTree(_backbone, tasks, StepBudget(anchor=2, edge=1, weights=1), _affinity(), extra_share=0.5)
    tree = method.tree
    assert 4 < tree.n_nodes < 12  # branched, neither hard sharing nor the anchor
    method.fit(data, data[:1], device=CPU, verbose=False)
    assert method.train_seconds > 0
    model = method.model_for([0.6, 0.3, 0.1])
    assert model is method.model_for([0.1, 0.1, 0.8])
    assert set(model.nodes) == {f"l{l}_s{n}" for l in range(tree.n_layers) for n in tree.nodes(l)}

    calls: dict[str, list] = {}
    handles = [
        module.register_forward_hook(lambda m, inp, out, key=key: calls.setdefault(key, []).append(inp[0]))
        for key, module in [*[(f"node {k}", v) for k, v in model.nodes.items()], *[(f"head {k}", v) for k, v in model.heads.items()]]
    ]
    x = data[0][0][:1]
    out = _outputs(model, x)
    for h in handles:
        h.remove()
    assert all(v.shape == (1, CLASSES) for v in out.values())
    assert all(len(v) == 1 for v in calls.values()) and len(calls) == tree.n_nodes + 3
    parts = sum(count_flops(model.nodes[k[5:]], calls[k][0]) for k in calls if k.startswith("node "))
    parts += sum(count_flops(model.heads[k[5:]], calls[k][0]) for k in calls if k.startswith("head "))
    assert count_flops(model, x) == parts
    heads = sum(count_flops(model.heads[k[5:]], calls[k][0]) for k in calls if k.startswith("head "))
    assert count_flops(model, x) - heads == method.tree_flops


# ------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("kind", ["hard_sharing", "phn", "phn_bn", "static_tree", "distilled_trunk", "cross_stitch"])
def test_training_reduces_the_loss(kind):
    n_tasks = 3 if kind == "static_tree" else 2
    tasks, data = _tasks(n_tasks), _batches(n_tasks=n_tasks, n_batches=8, seed=1)
    held_out = _batches(n_tasks=n_tasks, n_batches=2, seed=2)
    steps = StepBudget(anchor=40, edge=10, weights=10, batch_size=32)
    equal = np.full(n_tasks, 1.0 / n_tasks)
    if kind == "hard_sharing":
        method = HardSharing(_backbone, tasks, steps, [equal])
    elif kind == "static_tree":
        method = StaticTree(_backbone, tasks, steps, _affinity(), extra_share=0.5)
    elif kind == "distilled_trunk":  # 40 steps after its (here untrained) teachers' 20
        method = DistilledTrunk(_backbone, tasks, StepBudget(anchor=20, edge=20, weights=20), _teacher(tasks))
    elif kind == "cross_stitch":
        method = CrossStitch(_backbone, tasks, StepBudget(anchor=20, edge=10, weights=10))
    else:
        method = PHN(_backbone, tasks, StepBudget(anchor=20, edge=10, weights=10), mode="full" if kind == "phn" else "bn")
    untrained = validation_losses(shared_network(_backbone, tasks), tasks, held_out, CPU)
    method.fit(data, held_out[:1], device=CPU, verbose=False)
    trained = validation_losses(method.model_for(equal), tasks, held_out, CPU)
    assert (trained < 0.7 * untrained).all(), (untrained, trained)


# -------------------------------------------------------------------------- distilled trunk
def _teacher(tasks, width: float = 0.25, seed: int = 1) -> dymu.anchor.AnchorNet:
    """Untrained single-task streams (any fixed features serve as distillation targets), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dymu.anchor.AnchorNet(dymu.backbones.lenet(width_mult=width), tasks, seed=seed)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_identity_adaptors_start_as_the_identity():
    for shape in ((8,), (8, 5), (8, 3, 3)):
        feature = torch.randn(4, *shape)
        assert torch.allclose(identity_adaptor(shape)(feature), feature, atol=1e-6)
    teacher = [torch.randn(4, 8, 3, 3)]
    adaptor = [identity_adaptor((8, 3, 3))]
    with torch.no_grad():
        assert float(distillation_loss(adaptor, teacher[0], teacher)) == pytest.approx(0.0, abs=1e-6)
        # normalised per position: a feature matching the teacher's direction at any scale costs nothing
        assert float(distillation_loss(adaptor, 5.0 * teacher[0], teacher)) == pytest.approx(0.0, abs=1e-6)
        # opposite directions cost the most: |n(f) - n(t)|^2 = 4 at every position
        assert float(distillation_loss(adaptor, -teacher[0], teacher)) == pytest.approx(4.0, rel=1e-5)


def test_distilled_trunk_distils_and_serves_a_plain_hard_sharing_network():
    tasks, data = _tasks(), _batches(n_batches=4)
    teacher = _teacher(tasks).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = DistilledTrunk(_backbone, tasks, StepBudget(anchor=100, edge=20, weights=10), teacher, eval_every=10)
    assert method.train_steps == 30  # the teachers' 100 stage-0 steps + 30 = the controller's 130
    method.fit(data, data[:1], device=CPU, verbose=False)
    distill = method.result["auxiliary_loss"]
    assert len(distill) == 30 and np.mean(distill[-5:]) < 0.75 * distill[0], distill
    # the teacher is only read: same weights and BatchNorm statistics, mode restored
    assert _states_equal(before, teacher.state_dict()) and teacher.training
    model = method.model_for([0.3, 0.7])
    plain = shared_network(_backbone, tasks)
    x = data[0][0][:1]
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert count_flops(model, x) == count_flops(plain, x) and model.flops() == count_flops(plain, x)
    assert method.size() == count_params(plain) and not any(a is m for a in method.adaptors.modules() for m in model.modules())
    assert set(_outputs(model, x)) == {"t0", "t1"}


def test_distilled_trunk_without_distillation_is_hard_sharing_training():
    tasks, data = _tasks(), _batches(n_batches=3)
    steps = StepBudget(anchor=3, edge=2, weights=1)  # the trunk trains total - anchor = 3 steps
    scales = [1.0, 2.0]
    # hard sharing trains for the total: 3 steps here too
    hard = HardSharing(_backbone, tasks, StepBudget(anchor=1, edge=1, weights=1), [[0.5, 0.5]], loss_scales=scales, seed=4)
    hard.fit(data, data[:1], device=CPU, verbose=False)
    runs = {}
    for weight in (0.0, 1.0):
        method = DistilledTrunk(_backbone, tasks, steps, _teacher(tasks), loss_scales=scales, seed=4, distill_weight=weight)
        method.fit(data, data[:1], device=CPU, verbose=False)
        runs[weight] = method.model_for([0.5, 0.5])
    # lambda = 0: the hook, the teachers' forward and the adaptors leave the trunk's training unchanged
    assert _states_equal(hard.models[0].state_dict(), runs[0.0].state_dict())
    # lambda > 0 changes it
    assert not _states_equal(hard.models[0].state_dict(), runs[1.0].state_dict())


def test_distilled_trunk_checks_its_teacher_and_budget():
    tasks = _tasks()
    steps = StepBudget(anchor=2, edge=1, weights=1)
    with pytest.raises(ValueError, match="one teacher stream per task"):
        DistilledTrunk(_backbone, tasks, steps, _teacher(_tasks(3)))
    with pytest.raises(ValueError, match="same backbone family"):
        DistilledTrunk(_backbone, tasks, steps, _teacher(tasks, width=0.5))
    with pytest.raises(ValueError, match="AnchorNet"):
        DistilledTrunk(_backbone, tasks, steps, shared_network(_backbone, tasks))
    with pytest.raises(ValueError, match="steps.total - steps.anchor"):
        DistilledTrunk(_backbone, tasks, StepBudget(anchor=2, edge=0, weights=0), _teacher(tasks))
    with pytest.raises(ValueError, match="2 tasks"):
        DistilledTrunk(_backbone, tasks, steps, _teacher(tasks), loss_scales=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="call fit"):
        DistilledTrunk(_backbone, tasks, steps, _teacher(tasks)).model_for([0.5, 0.5])


# ----------------------------------------------------------------------------- cross-stitch
def test_cross_stitch_with_identity_units_runs_independent_streams():
    tasks = _tasks(3)
    x = _batches(n_tasks=3, n_batches=1)[0][0][:8]
    model = cross_stitch_network(_backbone, tasks, seed=2, diagonal=1.0).eval()
    assert torch.equal(model.alpha, torch.eye(3).expand(4, 3, 3))
    with torch.no_grad():
        out = model(x)
        for stream, (name, head) in zip(model.streams, model.heads.items()):
            assert torch.allclose(out[name], head(stream(x)), atol=1e-6)
        # the paper's initialisation mixes them: 0.9 on the diagonal, 0.05 elsewhere
        stitched = cross_stitch_network(_backbone, tasks, seed=2).eval()
        assert torch.allclose(stitched.alpha[0], torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
        mixed = stitched(x)
    assert all((mixed[n] - out[n]).abs().max() > 1e-4 for n in out)


def test_cross_stitch_costs_every_stream_and_unit():
    x = torch.zeros(1, 1, 36, 36)
    stream = _backbone()
    elements = sum(int(np.prod(s.output)) for s in stream.block_shapes())
    heads = count_flops(_tasks(1)[0].build_head(stream.out_shape, []), torch.zeros(1, *stream.out_shape))
    flops = {}
    for n in (2, 3):
        model = cross_stitch_network(_backbone, _tasks(n))
        flops[n] = model.flops()
        # N streams, N heads, and per layer one [N, N] mix of N features: 2 N^2 FLOPs per feature element
        assert flops[n] == count_flops(model, x) == n * sum(block_flops(stream)) + n * heads + 2 * n * n * elements
    assert flops[2] < flops[3]
    with pytest.raises(ValueError, match="two or more task streams"):
        CrossStitch(_backbone, _tasks(1), StepBudget(1, 1, 1))
    with pytest.raises(ValueError, match="2 tasks"):
        CrossStitch(_backbone, _tasks(2), StepBudget(1, 1, 1), loss_scales=[1.0])


def test_cross_stitch_trains_its_units_and_keeps_the_best_validation_state():
    tasks, data = _tasks(), _batches(n_batches=4)
    # validation labels contradict training ones: the further training goes, the worse validation gets
    wrong = [(x, {k: (y + 1) % CLASSES for k, y in t.items()}) for x, t in data[:2]]
    method = CrossStitch(_backbone, tasks, StepBudget(anchor=6, edge=3, weights=3), eval_every=2, lr=3e-3)
    start = cross_stitch_network(_backbone, tasks).alpha.detach()
    method.fit(data, wrong, device=CPU, verbose=False)
    result, model = method.result, method.model_for([0.5, 0.5])
    assert len(result["train_loss"]) == 12  # steps.total
    assert (model.alpha.detach() - start).abs().min() > 1e-3  # every unit entry moved (Adam, 10x learning rate)
    scores = [h["val_score"] for h in result["history"]]
    assert result["best_step"] < 12 and result["best_score"] == min(scores)
    weights = method.loss_scales / 2
    assert float((weights.double().numpy() * validation_losses(model, tasks, wrong, CPU)).sum()) == pytest.approx(
        result["best_score"], rel=1e-5)
    # the units receive gradients from the task losses
    model.train().zero_grad()
    x, targets = data[0]
    out = model(x)
    sum(F.cross_entropy(out[n], targets[n]) for n in out).backward()
    assert model.alpha.grad is not None and model.alpha.grad.abs().min() > 0
    # the protocol measures it as any model: one record with its FLOPs and parameters
    records = evaluate_method(method, tasks, data[:1], np.array([[0.5, 0.5]]), [STATIC], example=x[:1])
    assert records[0].flops == model.flops() and records[0].params == count_params(model) == method.size()
