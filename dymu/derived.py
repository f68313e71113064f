"""Derived tree models: the plain ``nn.Module`` that ``build_model`` returns."""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from affinity.tree import Tree

from .adaptation import Adaptation, AdaptedHead, write_adaptations
from .anchor import AnchorNet, run_tree
from .metrics.cost import count_flops, count_params
from .solo import solo_adaptation, solo_tasks, with_solo

__all__ = ["DerivedModel", "copy_module", "derive_model", "recalibrate_batchnorm"]


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

    def export(self, path: str | os.PathLike, *, fold: bool = True, example: Tensor | None = None) -> Path:
        """Write this model as a ``torch.export`` program (``.pt2``) that runs with torch alone.

        ``torch.export.load(path).module()(x [B, C, H, W])`` gives ``{task: prediction}`` for any batch
        size ``B >= 1``, in a process that never imports dymu. ``fold=True`` ships a copy with
        BatchNorm folded into the convolution or linear layer before it (:func:`dymu.export.fold_batchnorm`;
        outputs equal this model's to float32 rounding); ``fold=False`` ships this model's operations
        as they are (outputs identical). ``example`` is the input to trace with (default: two zero
        images of :attr:`input_shape`). The file is written atomically; this model is not modified.

        >>> import tempfile
        >>> tree = Tree(["a", "b"], [[0, 0]])
        >>> model = DerivedModel(
        ...     tree,
        ...     {"l0_s0": nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())},
        ...     {"a": nn.Linear(4 * 6 * 6, 2), "b": nn.Linear(4 * 6 * 6, 3)},
        ...     input_shape=(1, 8, 8),
        ... ).eval()
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     program = torch.export.load(model.export(Path(folder) / "model.pt2", fold=False)).module()
        >>> x = torch.rand(5, 1, 8, 8)
        >>> out, want = program(x), model(x)
        >>> {task: (tuple(y.shape), torch.equal(y, want[task])) for task, y in out.items()}
        {'a': ((5, 2), True), 'b': ((5, 3), True)}
        """
        from .export import export_derived

        return export_derived(self, path, fold=fold, example=example)

    def extra_repr(self) -> str:
        return f"tasks={list(self.tree.tasks)}, nodes={self.tree.n_nodes}, layers={self.tree.n_layers}"


# Attribute values a copy may share with the original: nothing can change them in place. Exact types
# (a set lookup, not isinstance): subclasses take the general deepcopy path.
_ATOMS = frozenset({int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size,
                    torch.memory_format, torch.layout})


def _immutable(value: object) -> bool:
    kind = type(value)
    return kind in _ATOMS or (kind is tuple and all(_immutable(v) for v in value))


def _copy_tensor(tensor: Tensor, memo: dict[int, Any]) -> Tensor:
    done = memo.get(id(tensor))
    if done is not None:
        return done
    if type(tensor) is nn.Parameter and not tensor.__dict__:
        copied: Tensor = nn.Parameter(tensor.detach().clone(), tensor.requires_grad)
    elif type(tensor) is Tensor and not tensor.requires_grad and not tensor.__dict__:
        copied = tensor.clone()
    else:  # tensor subclasses, lazy parameters, tensors carrying attributes: the general protocol
        return copy.deepcopy(tensor, memo)
    memo[id(tensor)] = copied
    return copied


_PLAIN: dict[type, bool] = {}


def _plain_class(cls: type) -> bool:
    """Whether ``cls`` copies as its ``__dict__`` (no ``__deepcopy__``, ``__getstate__`` or
    ``__reduce__`` of its own; a ``__setstate__`` is called, as deepcopy does)."""
    plain = _PLAIN.get(cls)
    if plain is None:
        plain = _PLAIN[cls] = (
            getattr(cls, "__deepcopy__", None) is None
            and cls.__getstate__ is nn.Module.__getstate__
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
        )
    return plain


def copy_module(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """``copy.deepcopy(module)``, about four times faster for ordinary modules.

    Every parameter and buffer is a fresh tensor (nothing aliases ``module``'s storage), submodules are
    copied recursively, attributes nothing can change in place (numbers, strings, tuples of them,
    dtypes, devices) are shared, empty hook registries are recreated, and anything else goes through
    ``copy.deepcopy`` with the same ``memo`` (so modules or tensors used twice stay shared in the copy,
    as with ``deepcopy``). A module class with copy or pickling hooks of its own (a parametrised
    module, say) is copied by ``copy.deepcopy`` itself. ``deepcopy`` spends most of a block's copy reconstructing the dozen hook
    dictionaries and the attributes of every submodule through the pickle protocol, which dominated
    ``build_model``.

    >>> block = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    >>> twin = copy_module(block)
    >>> twin[0].weight.data_ptr() != block[0].weight.data_ptr(), torch.equal(twin[0].weight, block[0].weight)
    (True, True)
    """
    memo = {} if memo is None else memo
    done = memo.get(id(module))
    if done is not None:
        return done
    cls = type(module)
    if not _plain_class(cls):
        return copy.deepcopy(module, memo)
    copied = cls.__new__(cls)
    memo[id(module)] = copied
    state: dict[str, Any] = {}
    for name, value in module.__dict__.items():
        if name in ("_parameters", "_buffers"):
            state[name] = {k: None if t is None else _copy_tensor(t, memo) for k, t in value.items()}
        elif name == "_modules":
            state[name] = {k: None if m is None else copy_module(m, memo) for k, m in value.items()}
        elif _immutable(value):
            state[name] = value
        elif type(value) in (dict, OrderedDict, set, list) and not value:
            state[name] = type(value)()
        else:
            state[name] = copy.deepcopy(value, memo)
    copied.__setstate__(state)  # what deepcopy ends with (torch's modules fill in attributes of old versions there)
    return copied


def derive_model(
    anchor: AnchorNet,
    tree: Tree,
    adaptation: Adaptation | None = None,
    info: Mapping[str, Any] | None = None,
    solo: AnchorNet | None = None,
) -> DerivedModel:
    """Copy the tree's nodes and heads out of the anchor and write the weight hypernet's adaptations
    into them (:mod:`dymu.adaptation`: the same function training applies functionally).

    Args:
        anchor: the trained anchor.
        tree: the architecture; node ids are anchor streams.
        adaptation: the weight hypernet's output for this request and tree, or None for the anchor's
            own weights.
        info: how the model was built, kept as ``model.info``.
        solo: the controller's solo streams (:mod:`dymu.solo`), or None: a task alone on its own stream
            runs its solo stream and head, unadapted; ``info["solo_tasks"]`` names those tasks.
    """
    chosen = solo_tasks(tree.assignment) if solo is not None else ()
    anchor = with_solo(anchor, solo, tree.assignment)
    node_deltas, head_adaptation = solo_adaptation(tree.assignment, solo is not None,
                                                   adaptation.node if adaptation is not None else None,
                                                   adaptation.head if adaptation is not None else None)
    # each node and head copied on its own (as training sees them: a node's adaptation changes that
    # node only, even where a user's backbone shares a module between blocks)
    nodes: dict[str, nn.Module] = {}
    for layer in range(tree.n_layers):
        for node in tree.nodes(layer):
            block = copy_module(anchor.block(layer, node))
            deltas = node_deltas(layer, node) if node_deltas is not None else None
            if deltas is not None:
                write_adaptations(block, anchor.layout, layer, deltas)
            block.requires_grad_(True)
            nodes[_key(layer, node)] = block
    heads: dict[str, nn.Module] = {}
    for k, name in enumerate(anchor.task_names):
        head = copy_module(anchor.heads[name])
        packed = head_adaptation(k) if head_adaptation is not None else None
        heads[name] = (head if packed is None else AdaptedHead(head, packed)).requires_grad_(True)
    backbone = anchor.backbone
    info = {**(info or {}), "solo_tasks": [anchor.task_names[k] for k in chosen]}
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
