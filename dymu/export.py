"""Models you can ship: BatchNorm folded into the layer before it, and ``torch.export`` programs.

* :func:`fold_batchnorm` returns an eval-mode copy in which every BatchNorm that directly follows a
  convolution or a linear layer is folded into that layer's weight and bias (and replaced by
  ``nn.Identity``), wherever the fold is exact.
* :func:`export_model` writes a ``.pt2`` program that runs with torch alone:
  ``torch.export.load(path).module()(x)`` gives ``{task: tensor}`` for any batch size.
* :func:`export_derived` does the same for a :class:`~dymu.DerivedModel`, making the example input
  from the model's ``input_shape``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> folded = fold_batchnorm(net)
    >>> type(folded[1]).__name__
    'Identity'
    >>> x = torch.rand(2, 1, 8, 8)
    >>> torch.allclose(folded(x), net(x), atol=1e-6)
    True
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.fx
from torch import Tensor, nn

__all__ = ["fold_batchnorm", "export_model", "export_derived", "foldable_pairs"]

_BatchNorm = nn.modules.batchnorm._BatchNorm
# Transposed convolutions keep output channels in dim 1 of the weight: not folded here.
_Layer = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _OneLevelTracer(torch.fx.Tracer):
    """Traces a module's own forward, treating every child as an opaque call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _child_call_order(parent: nn.Module) -> list[tuple[str, str]] | None:
    """``(layer child, BatchNorm child)`` name pairs where the layer's output feeds only that BatchNorm.

    ``nn.Sequential`` is read from its order; any other module's forward is traced one level deep
    with ``torch.fx`` (so ``self.bn1(self.conv1(x))`` in a residual block is recognised, and a conv
    whose output is also used elsewhere is not). Modules that cannot be traced are left alone.
    """
    children = dict(parent.named_children())
    # tracing costs ~0.1 ms a module: only parents holding both a layer and a BatchNorm can have a pair
    if not any(isinstance(c, _Layer) for c in children.values()) or not any(isinstance(c, _BatchNorm) for c in children.values()):
        return None
    if type(parent) is nn.Sequential:
        names = list(children)
        return [(a, b) for a, b in zip(names, names[1:])]
    try:
        graph = _OneLevelTracer().trace(parent)
    except Exception:  # data-dependent control flow, several inputs the tracer cannot proxy, ...
        return None
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op == "call_module" and user.args and user.args[0] is node and len(user.args) == 1 and not user.kwargs:
            # a child called twice (weights reused inside one forward) cannot take one fold
            if calls[node.target] == 1 and calls[user.target] == 1 and "." not in str(node.target):
                pairs.append((str(node.target), str(user.target)))
    return pairs


def _exact(layer: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(layer, _Layer) or not isinstance(bn, _BatchNorm):
        return False
    if bn.running_mean is None or bn.running_var is None or bn.training:
        return False  # batch statistics: the output depends on the batch, no fixed affine map
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn.num_features != channels:
        return False
    # BatchNorm1d after Linear normalises features (dim 1); BatchNorm{k}d after Conv{k}d channels.
    if isinstance(layer, nn.Linear):
        return isinstance(bn, nn.BatchNorm1d)
    dims = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
    return isinstance(bn, dims[type(layer)])


def foldable_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Qualified names ``(layer, batchnorm)`` of every exact fold :func:`fold_batchnorm` would make.

    A pair qualifies when the BatchNorm is in eval mode with running statistics, directly follows a
    ``Conv{1,2,3}d``/``Linear`` of matching width inside one parent, and neither module (nor the
    layer's parameters) is used anywhere else in ``module``.
    """
    uses = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False))
    param_uses = Counter(id(p) for _, p in module.named_parameters(remove_duplicate=False))
    found = []
    for prefix, parent in module.named_modules():
        pairs = _child_call_order(parent)
        if not pairs:
            continue
        children = dict(parent.named_children())
        for a, b in pairs:
            layer, bn = children[a], children[b]
            if not _exact(layer, bn) or uses[id(layer)] != 1 or uses[id(bn)] != 1:
                continue
            if any(param_uses[id(p)] != 1 for p in layer.parameters(recurse=False)):
                continue  # tied weights: folding would change the other user
            base = f"{prefix}." if prefix else ""
            found.append((base + a, base + b))
    return found


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: _BatchNorm) -> None:
    # float64 keeps the folded weights within float32 rounding of the two-step computation
    w = layer.weight.double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)  # [C]
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(mean)
    new_w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    new_b = (bias - mean) * scale + beta
    layer.weight = nn.Parameter(new_w.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)
    layer.bias = nn.Parameter(new_b.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)


def fold_batchnorm(module: nn.Module, *, inplace: bool = False) -> nn.Module:
    """An eval-mode deep copy of ``module`` with every exact Conv/Linear + BatchNorm pair folded.

    The BatchNorm's ``y = gamma * (z - mean) / sqrt(var + eps) + beta`` on the layer's output ``z``
    becomes part of the layer: ``W' = W * s``, ``b' = (b - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)`` per output channel; the BatchNorm is replaced by ``nn.Identity``.
    Which pairs qualify: see :func:`foldable_pairs`. The copy's outputs equal ``module.eval()``'s
    to float32 rounding for inputs of any shape the original accepts; ``module`` is not modified.

    ``inplace=True`` folds ``module`` itself (and puts it in eval mode) instead of a copy: for a
    module that is already a private copy, such as a model ``build_model`` just derived.
    """
    folded = (module if inplace else copy.deepcopy(module)).eval()
    for layer_name, bn_name in foldable_pairs(folded):
        layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
        _fold_into(layer, bn)
        parent_name, _, child = bn_name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        setattr(parent, child, nn.Identity())
    return folded


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: Tensor,
    *,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` as a ``torch.export`` program to ``path`` (``.pt2``), atomically.

    Args:
        model: a module mapping ``x [B, ...]`` to a tensor or a dict ``{task: tensor [B, ...]}``;
            exported in eval mode (its own mode is restored afterwards).
        path: the file to write; a temporary file in the same folder replaces it once complete.
        example_input: one input batch ``[B, ...]`` to trace with (any batch size; 2 or more is safest).
        dynamic_batch: export dimension 0 as symbolic, so the program accepts any batch size >= 1
            (verified on torch 2.13 for every built-in backbone and head used in the tests); False
            fixes the batch to ``example_input``'s.

    Returns:
        the path written. Load with ``torch.export.load(path).module()`` — no dymu needed.
    """
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
        with torch.no_grad():
            program = torch.export.export(model, (example_input,), dynamic_shapes=dynamic_shapes)
    finally:
        model.train(was_training)
    from .checkpoint import atomic_write

    return atomic_write(path, lambda handle: torch.export.save(program, handle))


def export_derived(
    model: nn.Module, path: str | os.PathLike, *, batch: int = 2, fold: bool = True, example: Tensor | None = None
) -> Path:
    """Export a derived model (``model.input_shape = (C, H, W)``) with a dynamic batch dimension.

    ``fold=True`` folds BatchNorm into a copy first (:func:`fold_batchnorm`; ``model`` is not
    modified): fewer ops in the shipped program, same outputs to float32 rounding; ``fold=False``
    ships the model's own operations, outputs identical. The example input to trace with is
    ``example [B, C, H, W]`` or, by default, ``batch`` zeros of the model's input shape.
    """
    if example is None:
        shape: Sequence[int] | None = getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError("the model does not know its input shape (input_shape is None): pass example=x")
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        example = torch.zeros(batch, *shape, device=device)
    return export_model(fold_batchnorm(model) if fold else model, path, example)
