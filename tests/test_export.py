"""dymu.export: BatchNorm folding (exact where it applies, never elsewhere) and torch.export programs
that load and run in a fresh interpreter without dymu."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dymu
from dymu.backbones.resnet import BasicBlock
from dymu.export import export_derived, export_model, fold_batchnorm, foldable_pairs
from _shipping import run_isolated, run_without_dymu

BN = nn.modules.batchnorm._BatchNorm


def _randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, BN):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return module.eval()


def _n_bn(module: nn.Module) -> int:
    return sum(isinstance(m, BN) for m in module.modules())


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = max(1.0, float(a.abs().max()))
    assert float((a - b).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize(
    "name, make, shape",
    [
        ("lenet", lambda: dymu.backbones.lenet(), (1, 36, 36)),
        ("resnet18 basic blocks", lambda: dymu.backbones.resnet18(width_mult=0.25, stem="cifar"), (3, 32, 32)),
        ("resnet9", lambda: dymu.backbones.resnet9(width_mult=0.125), (3, 32, 32)),
        ("mobilenet inverted residuals", lambda: dymu.backbones.mobilenet_v2(width_mult=0.25, input_size=(64, 64)), (3, 64, 64)),
        ("deeplab resnet34 + ASPP", lambda: dymu.backbones.deeplab_resnet34(width_mult=0.125, input_size=(64, 64)), (3, 64, 64)),
    ],
)
def test_fold_removes_every_batchnorm_of_the_backbones_and_keeps_outputs(name, make, shape):
    torch.manual_seed(0)
    net = _randomize_bn(make())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    assert _n_bn(net) > 0 and _n_bn(folded) == 0, name
    x = torch.rand(3, *shape)
    with torch.no_grad():
        _assert_close(folded(x), net(x))
    # the input is untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert _n_bn(net) > 0


def test_fold_deeplab_decoder_head():
    head = _randomize_bn(dymu.backbones.deeplab_head(3, channels=16, low_channels=8)((32, 4, 4), skip_shapes=[(8, 16, 16)]))
    folded = fold_batchnorm(head)
    assert _n_bn(folded) == 0
    final, low = torch.rand(2, 32, 4, 4), torch.rand(2, 8, 16, 16)
    with torch.no_grad():
        _assert_close(folded(final, low), head(final, low))


def test_fold_linear_batchnorm1d():
    net = _randomize_bn(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 2)))
    folded = fold_batchnorm(net)
    assert isinstance(folded[1], nn.Identity)
    x = torch.randn(4, 5)
    with torch.no_grad():
        _assert_close(folded(x), net(x))


class _ConvUsedTwice(nn.Module):
    """The conv's output feeds the BatchNorm and the residual sum: folding would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv1(x)
        return self.bn1(y) + y


def test_fold_skips_pairs_where_it_would_not_be_exact():
    shared = nn.Conv2d(3, 3, 3, padding=1)
    cases = {
        "bn after relu": nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.BatchNorm2d(3)),
        "conv shared by two places": nn.Sequential(shared, nn.BatchNorm2d(3), shared),
        "conv output used twice": _ConvUsedTwice(),
        "no running stats": nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3, track_running_stats=False)),
        "transposed conv": nn.Sequential(nn.ConvTranspose2d(3, 3, 3), nn.BatchNorm2d(3)),
    }
    x = torch.rand(2, 3, 8, 8)
    for name, net in cases.items():
        net = _randomize_bn(net) if name != "no running stats" else net.eval()
        assert foldable_pairs(net.eval()) == [], name
        folded = fold_batchnorm(net)
        assert _n_bn(folded) == _n_bn(net), name
        with torch.no_grad():
            _assert_close(folded(x), net(x))


def test_fold_finds_attribute_pairs_of_a_basic_block():
    block = _randomize_bn(BasicBlock(4, 8, stride=2))
    assert sorted(foldable_pairs(block)) == [("conv1", "bn1"), ("conv2", "bn2"), ("shortcut.0", "shortcut.1")]


def _controller() -> dymu.Controller:
    torch.manual_seed(0)
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), "fashion_digits")
    _randomize_bn(ctrl.anchor)
    return ctrl


def test_folded_derived_model_matches(tmp_path):
    ctrl = _controller()
    model = ctrl.build_model([1.0] * 6, 0.5)
    folded = fold_batchnorm(model)
    assert _n_bn(folded) == 0 and folded.tree == model.tree
    x = torch.rand(5, 1, 36, 36)
    with torch.no_grad():
        a, b = model(x), folded(x)
    assert set(a) == set(b)
    for task in a:
        _assert_close(b[task], a[task])


def test_export_derived_runs_with_torch_alone_at_any_batch(tmp_path):
    ctrl = _controller()
    model = ctrl.build_model([1.0] * 6, 0.5)
    path = export_derived(model, tmp_path / "ship" / "model.pt2")
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["model.pt2"]  # no temp file left
    inputs = {f"batch{b}": torch.rand(b, 1, 36, 36) for b in (1, 7)}
    with torch.no_grad():
        expected = {k: {t: v.clone() for t, v in model(x).items()} for k, x in inputs.items()}
    diffs = run_without_dymu(path, inputs, expected, tmp_path)
    assert set(diffs) == set(inputs)
    for name, per_task in diffs.items():
        assert set(per_task) == set(model.tasks)
        assert max(per_task.values()) < 1e-4, (name, per_task)


def test_export_unfolded_program_is_identical_and_a_failed_export_keeps_the_old_file(tmp_path):
    ctrl = _controller()
    model = ctrl.build_model([1.0] * 6, None, c=0.0)
    path = export_model(model, tmp_path / "m.pt2", torch.rand(2, 1, 36, 36))
    x = torch.rand(3, 1, 36, 36)
    program = torch.export.load(path).module()
    with torch.no_grad():
        want, got = model(x), program(x)
    assert all(torch.equal(want[t], got[t]) for t in model.tasks)
    good = path.read_bytes()

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot trace")

    with pytest.raises(RuntimeError):
        export_model(Broken(), path, x)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]


def test_fold_inplace_folds_the_module_itself():
    net = _randomize_bn(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))).train()
    x = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        want = net.eval()(x)
    net.train()
    assert fold_batchnorm(net, inplace=True) is net
    assert not net.training and isinstance(net[1], nn.Identity)
    with torch.no_grad():
        _assert_close(net(x), want)


def test_the_isolated_interpreter_really_cannot_import_dymu(tmp_path):
    # what every "runs without dymu" test above relies on
    with pytest.raises(AssertionError, match="No module named 'dymu'"):
        run_isolated("import dymu", tmp_path)
    assert run_isolated("import torch; print(torch.__version__)", tmp_path).stdout.strip() == torch.__version__
