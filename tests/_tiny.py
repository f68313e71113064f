"""A tiny controller on a narrow LeNet, with tasks declared through the public Task spec (test helper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import dymu


class _Head(nn.Module):
    def __init__(self, shape, classes):
        super().__init__()
        c, h, w = shape
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes))

    def forward(self, x, *skips):
        return self.body(x)


def tiny_tasks(n: int = 3, classes: int = 4) -> list[dymu.Task]:
    return [
        dymu.Task(
            f"t{i}",
            head=lambda shape, classes=classes: _Head(shape, classes),
            loss=F.cross_entropy,
            metrics={"acc": dymu.metrics.accuracy},
            primary="acc",
            higher_is_better=True,
        )
        for i in range(n)
    ]


def tiny_batches(n_tasks: int = 3, n_batches: int = 3, batch: int = 16, classes: int = 4, seed: int = 0):
    """Random images whose labels depend on the image (so the tasks are learnable)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.rand(batch, 1, 36, 36, generator=g)
        quadrants = [x[:, 0, :18, :18].mean((1, 2)), x[:, 0, 18:, 18:].mean((1, 2)), x[:, 0, :18, 18:].mean((1, 2))]
        targets = {}
        for i in range(n_tasks):
            q = quadrants[i % 3]
            targets[f"t{i}"] = torch.bucketize(q, torch.tensor([0.49, 0.5, 0.51]))
        out.append((x, targets))
    return out


def make_controller(n_tasks: int = 3, seed: int = 0, width: float = 0.25, randomize_edge: bool = True) -> dymu.Controller:
    torch.manual_seed(seed)
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=width), tiny_tasks(n_tasks), seed=seed)
    data = tiny_batches(n_tasks)
    ctrl.fit_affinity(data, n_samples=32, calibration_samples=32)
    if randomize_edge:
        # An untrained edge hypernet starts at the anchor; random heads give varied trees to test on.
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for head in ctrl.edge.heads:
                head.weight.copy_(torch.randn(head.weight.shape, generator=g))
                head.bias.copy_(torch.randn(head.bias.shape, generator=g))
            for head in ctrl.weight.heads:
                head.weight.copy_(0.05 * torch.randn(head.weight.shape, generator=g))
                head.bias.copy_(0.05 * torch.randn(head.bias.shape, generator=g))
        ctrl.stages["edge"] = {"randomized": True}
    return ctrl


def trained_streams(n_tasks: int = 3, n_batches: int = 2, steps: int = 3) -> tuple[dymu.Controller, list]:
    """A tiny controller after stage 0 (``steps`` steps, selected on the first batch) and the affinity, and its
    ``n_batches`` training batches of 32."""
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(n_tasks), seed=0)
    data = tiny_batches(n_tasks, n_batches=n_batches, batch=32, seed=1)
    ctrl.fit_anchor(data, data[:1], config=dymu.AnchorConfig(steps=steps, eval_every=steps), verbose=False)
    ctrl.fit_affinity(data, n_samples=64, calibration_samples=16)
    return ctrl, data


def after_supernet(config: dymu.SupernetConfig, val: bool = False):
    """A tiny controller (:func:`trained_streams`, 3 tasks) after a supernet stage of ``config`` (validated on the first
    batch when ``val``): ``(controller, its training batches, its stage-0 streams)``."""
    from dymu.supernet import frozen_copy

    ctrl, data = trained_streams(3, n_batches=3, steps=4)
    stage0 = frozen_copy(ctrl.anchor)
    ctrl.fit_supernet(data, data[:1] if val else None, config=config, verbose=False)
    return ctrl, data, stage0
