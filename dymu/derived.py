"""Derived tree models: the plain ``nn.Module`` that ``build_model`` returns."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from affinity.tree import Tree

from .adaptation import Adaptation, AdaptedHead, write_adaptations
from .anchor import AnchorNet, run_tree
from .metrics.cost import count_flops, count_params

__all__ = ["DerivedModel", "derive_model", "recalibrate_batchnorm"]


def _key(layer: int, node: int) -> str:
    return f"l{layer}_s{node}"


class DerivedModel(nn.Module):
    """A tree-structured multi-task network: only the used nodes, each run once per forward.

    ``forward(x [B, C, H, W]) -> {task: prediction}``. ``nodes`` holds block ``l`` of stream ``i`` under
    the key ``"l{l}_s{i}"`` (anchor weights, BatchNorm adapted by the weight hypernet); ``heads`` the
    task heads. ``tree`` is the :class:`affinity.Tree` of the architecture (node id = anchor stream).
    ``info`` records how the model was built (preferences, budget, c, predicted FLOPs).
    """

    def __init__(
        self,
        tree: Tree,
        nodes: Mapping[str, nn.Module],
        heads: Mapping[str, nn.Module],
        skip_layers: Sequence[int] = (),
        input_shape: Sequence[int] | None = None,
        info: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        expected = {_key(l, n) for l in range(tree.n_layers) for n in tree.nodes(l)}
        if set(nodes) != expected:
            raise ValueError(f"nodes {sorted(nodes)} do not match the tree's nodes {sorted(expected)}")
        if list(heads) != list(tree.tasks):
            raise ValueError(f"heads {list(heads)} do not match the tree's tasks {list(tree.tasks)}")
        self.tree = tree
        self.nodes = nn.ModuleDict(dict(nodes))
        self.heads = nn.ModuleDict(dict(heads))
        self.skip_layers = tuple(skip_layers)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.info = dict(info or {})

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.tree.tasks

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        names = self.tree.tasks
        outputs = run_tree(
            self.tree.assignment,
            x,
            lambda layer, node, inp: self.nodes[_key(layer, node)](inp),
            lambda k, last, skips: self.heads[names[k]](last, *skips),
            self.skip_layers,
        )
        return dict(zip(names, outputs))

    def flops(self, x: Tensor | None = None) -> int:
        """FLOPs of one forward on ``x`` (default: one image of the controller's input shape)."""
        if x is None:
            if self.input_shape is None:
                raise ValueError("pass an input: this model does not know its input shape")
            device = next(self.parameters()).device
            x = torch.zeros(1, *self.input_shape, device=device)
        return count_flops(self, x)

    def n_params(self) -> int:
        return count_params(self)

    def extra_repr(self) -> str:
        return f"tasks={list(self.tree.tasks)}, nodes={self.tree.n_nodes}, layers={self.tree.n_layers}"


def derive_model(
    anchor: AnchorNet,
    tree: Tree,
    adaptation: Adaptation | None = None,
    info: Mapping[str, Any] | None = None,
) -> DerivedModel:
    """Copy the tree's nodes and heads out of the anchor and write the weight hypernet's adaptations
    into them (:mod:`dymu.adaptation`: the same function training applies functionally).

    Args:
        anchor: the trained anchor.
        tree: the architecture; node ids are anchor streams.
        adaptation: the weight hypernet's output for this request and tree, or None for the anchor's
            own weights.
        info: how the model was built, kept as ``model.info``.
    """
    nodes: dict[str, nn.Module] = {}
    for layer in range(tree.n_layers):
        for node in tree.nodes(layer):
            block = copy.deepcopy(anchor.block(layer, node))
            deltas = adaptation.node(layer, node) if adaptation is not None else None
            if deltas is not None:
                write_adaptations(block, anchor.layout, layer, deltas)
            block.requires_grad_(True)
            nodes[_key(layer, node)] = block
    heads: dict[str, nn.Module] = {}
    for k, name in enumerate(anchor.task_names):
        head = copy.deepcopy(anchor.heads[name])
        packed = adaptation.head(k) if adaptation is not None else None
        heads[name] = (head if packed is None else AdaptedHead(head, packed)).requires_grad_(True)
    backbone = anchor.backbone
    model = DerivedModel(
        tree, nodes, heads, anchor.skip_layers, (backbone.in_channels, *backbone.input_size), info
    )
    return model.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics as the exact average over ``batches`` ``[B, C, H, W]``.

    Afterwards the model (in eval mode) gives each sample the same output whatever else is in its batch.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the calibration batches
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += 1
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise ValueError("recalibration needs at least one batch")
    return model.eval()
