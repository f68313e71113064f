"""Block-structured backbones: reference parameter counts, shapes, chaining, width multipliers, heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dymu.backbones import (
    BlockBackbone,
    deeplab_head,
    deeplab_mobilenet_v2,
    deeplab_resnet34,
    linear_head,
    mobilenet_v2,
    resnet9,
    resnet9_head,
    resnet18,
    resnet34,
)
from dymu.backbones.mobilenet import make_divisible

# factory name -> (builder(width_mult) at a small input, number of blocks)
SMALL = {
    "resnet18": (lambda w: resnet18(width_mult=w, input_size=(32, 32)), 9),
    "resnet18_cifar": (lambda w: resnet18(width_mult=w, stem="cifar", input_size=(16, 16)), 9),
    "resnet34": (lambda w: resnet34(width_mult=w, input_size=(32, 32)), 17),
    "mobilenet_v2": (lambda w: mobilenet_v2(width_mult=w, input_size=(32, 32)), 17),
    "mobilenet_v2_no_last_conv": (lambda w: mobilenet_v2(width_mult=w, input_size=(32, 32), last_conv=False), 17),
    "resnet9": (lambda w: resnet9(width_mult=w, input_size=(16, 16)), 4),
    "deeplab_mobilenet_v2": (lambda w: deeplab_mobilenet_v2(width_mult=w, input_size=(64, 64)), 18),
    "deeplab_resnet34": (lambda w: deeplab_resnet34(width_mult=w, input_size=(64, 64)), 18),
}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def chain(backbone: BlockBackbone, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    for block in backbone.blocks:
        x = block(x)
        outputs.append(x)
    return outputs


@pytest.fixture(scope="module")
def small_backbones() -> dict[str, BlockBackbone]:
    torch.manual_seed(0)
    return {name: build(1.0) for name, (build, _) in SMALL.items()}


@pytest.mark.parametrize(
    "build, head, expected",
    [
        (resnet18, linear_head(1000), 11_689_512),
        (resnet34, linear_head(1000), 21_797_672),
        (mobilenet_v2, linear_head(1000, dropout=0.2), 3_504_872),
    ],
    ids=["resnet18", "resnet34", "mobilenet_v2"],
)
def test_parameter_counts_match_the_reference_architectures(build, head, expected):
    # The meta device gives shapes and parameter counts without allocating or computing anything.
    with torch.device("meta"):
        backbone = build()
        total = n_params(backbone) + n_params(head(backbone.out_shape))
    assert total == expected


def test_output_shapes_at_224():
    with torch.device("meta"):
        r18, r34, mnet = resnet18(), resnet34(), mobilenet_v2()
        mnet_bare = mobilenet_v2(last_conv=False)
        x = torch.zeros(2, 3, 224, 224)
        assert tuple(r18(x).shape) == (2, 512, 7, 7)
        assert tuple(r34(x).shape) == (2, 512, 7, 7)
        assert tuple(mnet(x).shape) == (2, 1280, 7, 7)
        assert mnet_bare.out_shape == (320, 7, 7)
        r18_outputs = [s.output for s in r18.block_shapes()]
        mnet_channels = [s.output[0] for s in mnet_bare.block_shapes()]
    assert r18_outputs == [(64, 56, 56)] * 3 + [(128, 28, 28)] * 2 + [(256, 14, 14)] * 2 + [(512, 7, 7)] * 2
    assert mnet_channels == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]


def test_resnet_stems_set_the_resolution():
    with torch.device("meta"):
        cifar = resnet18(stem="cifar")
        imagenet = resnet18(input_size=(64, 64))
    assert cifar.input_size == (32, 32)
    assert cifar.block_shapes()[0].output == (64, 32, 32)
    assert cifar.out_shape == (512, 4, 4)
    assert imagenet.block_shapes()[0].output == (64, 16, 16)
    with pytest.raises(ValueError, match="stem"):
        resnet34(stem="tiny")


@pytest.mark.parametrize("name", list(SMALL))
def test_block_shapes_agree_with_chaining_the_blocks(name, small_backbones):
    backbone = small_backbones[name]
    assert backbone.n_blocks == SMALL[name][1]
    backbone.eval()
    x = torch.randn(2, 3, *backbone.input_size)
    with torch.no_grad():
        outputs = chain(backbone, x)
        final = backbone(x)
    shapes = backbone.block_shapes()
    assert len(shapes) == len(outputs)
    assert shapes[0].input == (3, *backbone.input_size)
    for shape, out in zip(shapes, outputs):
        assert shape.output == tuple(out.shape[1:])
    for earlier, later in zip(shapes, shapes[1:]):
        assert earlier.output == later.input
    torch.testing.assert_close(final, outputs[-1])


@pytest.mark.parametrize("name", list(SMALL))
def test_every_block_has_batchnorm(name, small_backbones):
    for index, block in enumerate(small_backbones[name].blocks):
        assert any(isinstance(m, nn.BatchNorm2d) for m in block.modules()), f"{name} block {index} has no BatchNorm2d"


@pytest.mark.parametrize("name", list(SMALL))
def test_no_block_changes_its_input(name, small_backbones):
    # A parent's output can feed several children, so a block must never write into its input.
    backbone = small_backbones[name]
    backbone.train()
    x = torch.randn(2, 3, *backbone.input_size)
    with torch.no_grad():
        for block in backbone.blocks:
            before = x.clone()
            y = block(x)
            assert torch.equal(x, before)
            x = y


@pytest.mark.parametrize("name", list(SMALL))
def test_half_width_has_fewer_parameters_and_still_chains(name, small_backbones):
    build, n_blocks = SMALL[name]
    half = build(0.5)
    assert half.n_blocks == n_blocks
    assert n_params(half) < 0.5 * n_params(small_backbones[name])
    half.eval()
    x = torch.randn(2, 3, *half.input_size)
    with torch.no_grad():
        outputs = chain(half, x)
    assert [s.output for s in half.block_shapes()] == [tuple(o.shape[1:]) for o in outputs]


def test_mobilenet_width_multiplier_rounds_channels_to_multiples_of_8():
    assert [make_divisible(v) for v in (16, 12.0, 11.2, 4.0, 33.0, 36.0)] == [16, 16, 16, 8, 32, 40]
    with torch.device("meta"):
        half = mobilenet_v2(width_mult=0.5, input_size=(64, 64))
        wide = mobilenet_v2(width_mult=1.4, input_size=(64, 64))
    half_channels = [s.output[0] for s in half.block_shapes()]
    assert half_channels == [8, 16, 16, 16, 16, 16, 32, 32, 32, 32, 48, 48, 48, 80, 80, 80, 1280]
    assert all(c % 8 == 0 for c in half_channels)
    assert wide.out_shape[0] == 1792  # the last conv widens with multipliers above 1


@pytest.mark.parametrize(
    "name, head",
    [
        ("resnet18", linear_head(7)),
        ("resnet18_cifar", linear_head(7)),
        ("resnet34", linear_head(7)),
        ("mobilenet_v2", linear_head(7, dropout=0.2)),
        ("resnet9", resnet9_head(7)),
    ],
)
def test_forward_backward_reaches_every_parameter(name, head, small_backbones):
    backbone = small_backbones[name]
    backbone.train()
    classifier = head(backbone.out_shape)
    x = torch.randn(2, 3, *backbone.input_size)
    logits = classifier(backbone(x))
    assert logits.shape == (2, 7)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 3]))
    backbone.zero_grad()
    loss.backward()
    for pname, p in [*backbone.named_parameters(), *classifier.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no finite gradient for {pname}"
        p.grad = None


def test_resnet9_head_is_a_scaled_global_max_pool_linear():
    head = resnet9_head(5)((16, 3, 3)).eval()
    features = torch.randn(4, 16, 3, 3)
    expected = 0.125 * features.amax(dim=(2, 3)) @ head.linear.weight.T
    torch.testing.assert_close(head(features), expected)
    assert head.linear.bias is None
    plain = resnet9_head(5, logit_scale=1.0)((16, 3, 3))
    plain.linear.weight.data.copy_(head.linear.weight)
    torch.testing.assert_close(plain(features), expected / 0.125)


def test_linear_head_is_a_global_average_pool_linear_and_ignores_skips():
    head = linear_head(3)((8, 2, 2)).eval()
    features = torch.randn(2, 8, 2, 2)
    expected = features.mean(dim=(2, 3)) @ head.linear.weight.T + head.linear.bias
    torch.testing.assert_close(head(features), expected)
    torch.testing.assert_close(head(features, torch.randn(2, 4, 8, 8)), expected)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: linear_head(0), "num_classes"),
        (lambda: linear_head(10)((512,)), r"\(C, H, W\)"),
        (lambda: resnet9_head(10, logit_scale=0.0), "logit_scale"),
        (lambda: resnet9(width_mult=0.0), "width_mult"),
        (lambda: mobilenet_v2(in_channels=0), "in_channels"),
        (lambda: deeplab_resnet34(output_stride=4), "output_stride"),
        (lambda: deeplab_mobilenet_v2(output_stride=12), "output_stride"),
        (lambda: deeplab_head(0), "num_outputs"),
        (lambda: deeplab_head(5)((256, 4, 4)), "skip layer"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "name, skip, low_shape",
    [("deeplab_mobilenet_v2", 2, (24, 16, 16)), ("deeplab_resnet34", 3, (64, 16, 16))],
)
def test_deeplab_backbones_have_output_stride_16_and_a_stride_4_skip(name, skip, low_shape, small_backbones):
    backbone = small_backbones[name]
    assert backbone.skip_layers == (skip,)
    assert backbone.skip_shapes == [low_shape]
    assert backbone.out_shape == (256, 4, 4)  # 64 / 16
    pre_aspp = backbone.block_shapes()[-2].output
    assert pre_aspp[1:] == (4, 4) and pre_aspp[0] in (320, 512)


def test_deeplab_output_stride_8_keeps_more_resolution():
    with torch.device("meta"):
        r34 = deeplab_resnet34(input_size=(64, 64), output_stride=8)
        mnet = deeplab_mobilenet_v2(input_size=(64, 64), output_stride=8)
        plain = deeplab_resnet34(input_size=(64, 64), output_stride=32)
        nyu = deeplab_resnet34()
    assert r34.out_shape == (256, 8, 8) and mnet.out_shape == (256, 8, 8)
    assert plain.out_shape == (256, 2, 2)
    assert r34.skip_shapes == [(64, 16, 16)]
    assert nyu.out_shape == (256, 18, 24) and nyu.skip_shapes == [(64, 72, 96)]
    # Dilation changes resolutions, not weights.
    assert n_params(r34) == n_params(plain)


@pytest.mark.parametrize("name", ["deeplab_mobilenet_v2", "deeplab_resnet34"])
@pytest.mark.parametrize("separable", [False, True])
def test_deeplab_head_predicts_at_the_input_size_and_trains(name, separable, small_backbones):
    backbone = small_backbones[name]
    backbone.train()
    head = deeplab_head(5, separable=separable, channels=32)(backbone.out_shape, skip_shapes=backbone.skip_shapes)
    x = torch.randn(2, 3, 64, 64)
    features = backbone.features(x)
    skips = [features[s] for s in backbone.skip_layers]
    out = head(features[-1], *skips)
    assert out.shape == (2, 5, 64, 64)
    backbone.zero_grad()
    nn.functional.cross_entropy(out, torch.randint(0, 5, (2, 64, 64))).backward()
    for pname, p in [*backbone.named_parameters(), *head.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no finite gradient for {pname}"
        p.grad = None


def test_deeplab_head_output_size_handles_sides_not_divisible_by_4():
    with torch.device("meta"):
        backbone = deeplab_mobilenet_v2(input_size=(50, 70))
        head = deeplab_head(1, output_size=(50, 70))(backbone.out_shape, skip_shapes=backbone.skip_shapes)
        features = backbone.features(torch.zeros(1, 3, 50, 70))
        out = head(features[-1], features[backbone.skip_layers[0]])
    assert tuple(out.shape) == (1, 1, 50, 70)
