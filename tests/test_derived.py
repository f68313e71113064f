"""Derived models own their weights (copy_module, the fast deepcopy build_model uses) and ship as
torch.export programs (DerivedModel.export)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dymu
from dymu.derived import copy_module
from _shipping import run_without_dymu
from _tiny import make_controller, tiny_batches


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def _storages(module: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in _tensors(module) if t.numel()}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same_state(module: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    state = module.state_dict()
    return state.keys() == snapshot.keys() and all(torch.equal(state[k], v) for k, v in snapshot.items())


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: dymu.backbones.lenet(), (1, 36, 36)),
        (lambda: dymu.backbones.resnet18(width_mult=0.25, stem="cifar"), (3, 32, 32)),
        (lambda: dymu.backbones.resnet9(width_mult=0.125), (3, 32, 32)),
        (lambda: dymu.backbones.mobilenet_v2(width_mult=0.25, input_size=(64, 64)), (3, 64, 64)),
        (lambda: dymu.backbones.deeplab_resnet34(width_mult=0.125, input_size=(64, 64)), (3, 64, 64)),
    ],
)
def test_copy_module_is_a_deepcopy_of_every_backbone(make, shape):
    torch.manual_seed(0)
    net = make().eval()
    with torch.no_grad():  # non-default statistics, so a copy that dropped them would show
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
    twin, reference = copy_module(net), copy.deepcopy(net)
    assert type(twin) is type(net) and repr(twin) == repr(reference)
    assert [n for n, _ in twin.named_modules()] == [n for n, _ in net.named_modules()]
    assert [(m.training, type(m)) for m in twin.modules()] == [(m.training, type(m)) for m in net.modules()]
    assert _same_state(twin, _snapshot(net)) and not (_storages(twin) & _storages(net))
    assert [p.requires_grad for p in twin.parameters()] == [p.requires_grad for p in net.parameters()]
    assert [n for n, _ in twin.named_buffers()] == [n for n, _ in net.named_buffers()]  # persistence kept
    assert twin.state_dict().keys() == net.state_dict().keys()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        assert torch.equal(twin(x), net(x))
        next(twin.parameters()).add_(1.0)
        assert not torch.equal(twin(x), net(x))


class _Odd(nn.Module):
    """Everything deepcopy handles that a plain block does not have."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight  # tied
        self.again = self.a  # one module under two names
        self.history: list[int] = [1, 2]
        self.table = {"k": [0]}
        self.scale = torch.tensor([2.0])  # a plain tensor attribute, not a buffer
        self.register_buffer("kept", torch.ones(3), persistent=False)
        self.calls = 0
        self.register_forward_hook(_count_calls)

    def forward(self, x):
        return self.b(self.again(x)) * self.scale + self.kept


def _count_calls(module, inputs, output):
    module.calls += 1


def test_copy_module_keeps_ties_hooks_and_copies_mutable_attributes():
    net = _Odd()
    twin = copy_module(net)
    assert twin.b.weight is twin.a.weight and twin.again is twin.a
    assert twin.a.weight is not net.a.weight
    assert twin.history == [1, 2] and twin.history is not net.history
    assert twin.table == {"k": [0]} and twin.table["k"] is not net.table["k"]
    assert torch.equal(twin.scale, net.scale) and twin.scale.data_ptr() != net.scale.data_ptr()
    assert "kept" not in twin.state_dict() and torch.equal(twin.kept, net.kept)
    x = torch.rand(2, 3)
    with torch.no_grad():
        assert torch.equal(twin(x), net(x))
    assert (twin.calls, net.calls) == (1, 1)  # the hook came along and acts on the copy
    twin.history.append(3)
    twin.scale.mul_(3)
    assert net.history == [1, 2] and float(net.scale) == 2.0


def test_derived_models_share_no_storage_with_the_anchor_or_each_other():
    ctrl = make_controller()
    anchor_state = _snapshot(ctrl.anchor)
    a = ctrl.build_model([0.2, 0.5, 0.3], 0.6)
    b = ctrl.build_model([0.2, 0.5, 0.3], 0.6)  # the same request: the cached plan and adaptation
    b_state = _snapshot(b)
    assert a.tree == b.tree and _same_state(a, b_state)
    assert not (_storages(a) & _storages(ctrl.anchor)) and not (_storages(a) & _storages(b))

    # train one model (BatchNorm statistics move too), then change every tensor of it in place
    a.train()
    optimizer = torch.optim.SGD(a.parameters(), lr=0.5)
    x, targets = tiny_batches(3, n_batches=1)[0]
    out = a(x)
    sum(task.loss(out[task.name], targets[task.name]) for task in ctrl.tasks).backward()
    optimizer.step()
    with torch.no_grad():
        for t in _tensors(a):
            t.add_(1)
    assert not _same_state(a, b_state)
    assert _same_state(ctrl.anchor, anchor_state), "training a derived model changed the controller's anchor"
    assert _same_state(b, b_state), "training one derived model changed another"
    again = ctrl.build_model([0.2, 0.5, 0.3], 0.6)
    assert _same_state(again, b_state)
    # and the other way round: training the anchor does not reach models built before
    with torch.no_grad():
        for t in _tensors(ctrl.anchor):
            if t.is_floating_point():
                t.mul_(0.5)
    assert _same_state(b, b_state)


def test_derived_model_export_runs_without_dymu(tmp_path):
    ctrl = make_controller()
    with torch.no_grad():  # non-trivial BatchNorm, so folding changes the weights
        for m in ctrl.anchor.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model = ctrl.build_model([0.2, 0.5, 0.3], 0.6)
    before = _snapshot(model)
    folded = model.export(tmp_path / "folded.pt2")
    plain = model.export(tmp_path / "plain.pt2", fold=False, example=torch.rand(3, 1, 36, 36))
    assert _same_state(model, before) and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    inputs = {"one": torch.rand(1, 1, 36, 36), "nine": torch.rand(9, 1, 36, 36)}
    with torch.no_grad():
        expected = {k: model(x) for k, x in inputs.items()}
    for path, tolerance in ((folded, 1e-5), (plain, 0.0)):
        diffs = run_without_dymu(path, inputs, expected, tmp_path)
        assert set(diffs) == set(inputs)
        for name, per_task in diffs.items():
            assert set(per_task) == set(model.tasks)
            assert max(per_task.values()) <= tolerance, (path.name, name, per_task)
    # the folded program really is folded: no batch norm left in its graph
    ops = {str(n.target) for n in torch.export.load(folded).graph.nodes}
    assert not any("batch_norm" in op for op in ops)
    assert any("batch_norm" in op for op in {str(n.target) for n in torch.export.load(plain).graph.nodes})


def test_copy_module_hands_modules_with_their_own_copy_hooks_to_deepcopy():
    from torch.nn.utils import parametrize

    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    parametrize.register_parametrization(net[0], "weight", nn.Identity())
    twin = copy_module(net)
    assert parametrize.is_parametrized(twin[0], "weight")
    original = net[0].parametrizations.weight.original
    assert twin[0].parametrizations.weight.original.data_ptr() != original.data_ptr()
    x = torch.rand(2, 3)
    with torch.no_grad():
        assert torch.equal(twin(x), net(x))
