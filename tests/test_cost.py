import pytest
import torch
from torch import nn

from dymu.backbones.lenet import lenet
from dymu.metrics.cost import BlockCost, block_cost_table, count_flops, count_params


def test_conv2d_flops_are_twice_the_macs():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    # Output 2 x 8 x 10 x 10 elements, each 3 * 3 * 3 multiply-adds.
    assert count_flops(conv, torch.zeros(2, 3, 10, 10)) == 2 * (2 * 8 * 10 * 10) * (3 * 3 * 3)
    strided = nn.Conv2d(4, 6, kernel_size=5, stride=2, padding=2, bias=False)
    assert count_flops(strided, torch.zeros(1, 4, 16, 16)) == 2 * (6 * 8 * 8) * (4 * 5 * 5)


def test_grouped_conv_flops():
    depthwise = nn.Conv2d(8, 8, kernel_size=3, padding=1, groups=8)
    assert count_flops(depthwise, torch.zeros(1, 8, 6, 6)) == 2 * (8 * 6 * 6) * (1 * 3 * 3)


def test_linear_flops_are_twice_the_macs():
    linear = nn.Linear(5, 7)
    assert count_flops(linear, torch.zeros(4, 5)) == 2 * 4 * 5 * 7


def test_norm_pool_and_activations_are_not_counted():
    module = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    assert count_flops(module, torch.randn(2, 3, 8, 8)) == 0


def test_count_flops_passes_kwargs():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x, repeat=1):
            for _ in range(repeat):
                y = self.linear(x)
            return y

    assert count_flops(Scaled(), torch.zeros(1, 3), repeat=3) == 3 * 2 * 3 * 2


def test_count_flops_restores_every_submodule_mode_and_leaves_no_grad():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5))
    net.train()
    net[1].eval()  # a frozen BN inside a training net must stay frozen
    before = net[1].running_mean.clone()
    count_flops(net, torch.randn(4, 1, 5, 5))
    assert net.training and net[0].training and not net[1].training and net[2].training
    assert torch.equal(net[1].running_mean, before)
    assert all(p.grad is None for p in net.parameters())
    net.eval()
    count_flops(net, torch.randn(1, 1, 5, 5))
    assert not any(m.training for m in net.modules())


def test_count_params_exact():
    assert count_params(nn.Conv2d(3, 8, 3)) == 8 * 3 * 9 + 8
    assert count_params(nn.Conv2d(3, 8, 3, bias=False)) == 8 * 3 * 9
    assert count_params(nn.BatchNorm2d(8)) == 16  # running statistics are buffers, not parameters
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    assert count_params(net) == (4 * 3 + 3) + (3 * 2 + 2)
    net[0].requires_grad_(False)
    assert count_params(net, trainable_only=True) == 3 * 2 + 2
    assert count_params(net) == 15 + 8


def test_count_params_counts_shared_weights_once():
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, nn.ReLU(), shared)) == 20


def small_conv_chain():
    torch.manual_seed(0)
    return [
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)),
    ]


def test_block_cost_table_sums_to_the_whole_chain():
    blocks = small_conv_chain()
    table = block_cost_table(blocks, [(3, 12, 12), (8, 6, 6), (16, 6, 6)])
    assert [c.index for c in table] == [0, 1, 2]
    assert [c.output_shape for c in table] == [(8, 6, 6), (16, 6, 6), (10,)]
    assert table[0] == BlockCost(0, (3, 12, 12), (8, 6, 6), 2 * (8 * 12 * 12) * 27, 8 * 27 + 8 + 16)
    assert table[2].flops == 2 * 16 * 10
    chain = nn.Sequential(*blocks)
    assert sum(c.flops for c in table) == count_flops(chain, torch.zeros(1, 3, 12, 12))
    assert sum(c.params for c in table) == count_params(chain)


def test_block_cost_table_on_a_backbone():
    backbone = lenet()
    shapes = backbone.block_shapes()
    table = block_cost_table(backbone.blocks, [s.input for s in shapes])
    assert [c.output_shape for c in table] == [s.output for s in shapes]
    assert sum(c.flops for c in table) == count_flops(backbone, torch.zeros(1, 1, 36, 36))
    assert sum(c.params for c in table) == count_params(backbone)


def test_block_cost_table_errors():
    blocks = small_conv_chain()
    with pytest.raises(ValueError, match="3 blocks but 2 input shapes"):
        block_cost_table(blocks, [(3, 12, 12), (8, 6, 6)])
    with pytest.raises(ValueError, match=r"block 1 \(Sequential\) fails on input shape \(3, 6, 6\)"):
        block_cost_table(blocks, [(3, 12, 12), (3, 6, 6), (16, 6, 6)])
    with pytest.raises(ValueError, match="non-positive"):
        block_cost_table(blocks[:1], [(3, 0, 12)])
