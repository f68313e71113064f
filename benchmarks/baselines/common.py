"""Pieces shared by the baselines: networks built from a backbone factory, loss scales, validation, and
the training loop of a static multi-task network (hard sharing, the static affinity tree).

Every baseline network is a :class:`dymu.DerivedModel`: the blocks of one or more backbones arranged as an
:class:`affinity.Tree` (hard sharing is the tree with one node per layer) plus one head per task, run with
:func:`dymu.anchor.run_tree` so that every node is computed once per forward. The models the baselines
hand out therefore have the same interface (``model(x) -> {task: pred}``, ``model.flops()``) as the
controller's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from affinity.tree import Tree
from dymu.anchor import frozen_batchnorm_statistics
from dymu.backbones.base import BlockBackbone
from dymu.derived import DerivedModel
from dymu.evaluation import evaluate_model
from dymu.loop import KeepBest, StepInfo, TrainLoop
from dymu.metrics import block_cost_table
from dymu.resume import Checkpointing
from dymu.tasks import Task, check_tasks
from dymu.training import adam, to_device

__all__ = [
    "BackboneFactory",
    "AuxiliaryLoss",
    "node_key",
    "fresh_backbone",
    "block_flops",
    "tree_network",
    "shared_network",
    "take_batches",
    "validation_losses",
    "untrained_loss_scales",
    "as_loss_scales",
    "weighted_task_loss",
    "default_eval_every",
    "train_static",
]

BackboneFactory = Callable[[], BlockBackbone]

#: an extra training term of :func:`train_static`: ``(x [B, ...], outputs {task: prediction}) -> scalar``
AuxiliaryLoss = Callable[[Tensor, Mapping[str, Tensor]], Tensor]


def node_key(layer: int, node: int) -> str:
    """The key of node ``(layer, node)`` in a :class:`~dymu.DerivedModel` (``"l{layer}_s{node}"``)."""
    return f"l{layer}_s{node}"


def fresh_backbone(backbone_factory: BackboneFactory, seed: int | None = None) -> BlockBackbone:
    """Call the factory and check it returned a :class:`~dymu.backbones.BlockBackbone` (not
    :func:`dymu.registry.build_backbone`, which rebuilds a registered backbone from its recipe).

    With ``seed`` the backbone is initialised from ``torch.manual_seed(seed)`` in a forked RNG, leaving
    the global RNG alone (for backbones built only to read their shapes and costs).
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fresh_backbone(backbone_factory)
    backbone = backbone_factory()
    if not isinstance(backbone, BlockBackbone):
        raise ValueError(
            f"backbone_factory must return a dymu.backbones.BlockBackbone, got {type(backbone).__name__}"
        )
    return backbone


def block_flops(backbone: BlockBackbone) -> list[int]:
    """FLOPs of one sample through each block of ``backbone`` at its built input size: ``[L]``."""
    shapes = backbone.block_shapes()
    return [cost.flops for cost in block_cost_table(backbone.blocks, [s.input for s in shapes])]


def tree_network(backbone_factory: BackboneFactory, tasks: Sequence[Task], tree: Tree, seed: int = 0) -> DerivedModel:
    """A freshly initialised multi-task network with the architecture ``tree``, in train mode.

    Node ``(l, i)`` is block ``l`` of its own backbone built for node id ``i`` (so different nodes of one
    layer start from different random weights), followed by one head per task built from the backbone's
    output shape. All initialisation draws from ``torch.manual_seed(seed)`` inside a forked RNG: the same
    seed gives the same network and the global RNG is left alone.

    Raises:
        ValueError: the tree's tasks or depth do not match the tasks or the backbone.
    """
    tasks = check_tasks(tasks)
    names = [t.name for t in tasks]
    if list(tree.tasks) != names:
        raise ValueError(f"the tree's tasks {list(tree.tasks)} differ from the tasks {names} (same order needed)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        node_ids = sorted({node for row in tree.assignment for node in row})
        backbones = {node: fresh_backbone(backbone_factory) for node in node_ids}
        template = backbones[node_ids[0]]
        if template.n_blocks != tree.n_layers:
            raise ValueError(f"the tree has {tree.n_layers} layers but the backbone {template.n_blocks} blocks")
        nodes = {
            node_key(layer, node): backbones[node].blocks[layer]
            for layer in range(tree.n_layers)
            for node in tree.nodes(layer)
        }
        heads = {t.name: t.build_head(template.out_shape, template.skip_shapes) for t in tasks}
    model = DerivedModel(
        tree, nodes, heads, template.skip_layers, (template.in_channels, *template.input_size)
    )
    # one forward gives lazy layers in heads their shapes before any parameter is enumerated
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, template.in_channels, *template.input_size))
    return model.train()


def shared_network(backbone_factory: BackboneFactory, tasks: Sequence[Task], seed: int = 0) -> DerivedModel:
    """Hard parameter sharing: one backbone (one node per layer) and a head per task."""
    backbone_layers = fresh_backbone(backbone_factory, seed).n_blocks
    return tree_network(backbone_factory, tasks, Tree.shared([t.name for t in check_tasks(tasks)], backbone_layers), seed)


def take_batches(data: Iterable, limit: int | None = None) -> list:
    """The first ``limit`` batches of ``data`` (all of them when ``limit`` is None), as a list.

    Raises:
        ValueError: ``data`` yields no batch.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"the number of validation batches must be >= 1, got {limit}")
    batches = list(data if limit is None else islice(data, limit))
    if not batches:
        raise ValueError("the validation data yielded no batch")
    return batches


def validation_losses(model: nn.Module, tasks: Sequence[Task], batches: Iterable, device: torch.device) -> np.ndarray:
    """Mean loss of every task over ``batches`` (model in eval mode): ``[N]``, task order."""
    metrics = evaluate_model(model, tasks, batches, device)
    return np.array([metrics[t.name]["loss"] for t in tasks], dtype=np.float64)


@torch.no_grad()
def untrained_loss_scales(model: nn.Module, tasks: Sequence[Task], batches: Iterable, device: torch.device) -> Tensor:
    """``w_i = 1 / L_i`` with ``L_i`` task ``i``'s mean loss of the untrained multi-task ``model`` over
    ``batches``: ``[N]``. (The controller's :meth:`dymu.Controller.set_loss_scales` divides by its trained
    single-task streams' losses instead; the baselines use those when they get the controller's scales.)

    The model runs in train mode, on batch statistics as it will at the first training step, with its
    BatchNorm running statistics left untouched; its train/eval mode is restored afterwards.
    """
    names = [t.name for t in tasks]
    sums, count = np.zeros(len(tasks)), 0
    was = model.training
    model.train()
    try:
        with frozen_batchnorm_statistics(model):
            for batch in batches:
                x, targets = to_device(batch, device, names)
                outputs = model(x)
                size = x.shape[0]
                sums += [float(t.loss(outputs[t.name], targets[t.name])) * size for t in tasks]
                count += size
    finally:
        model.train(was)
    if count == 0:
        raise ValueError("estimating the loss scales needs at least one batch")
    losses = sums / count
    if not np.isfinite(losses).all():
        raise ValueError(f"an initial loss is not finite: {dict(zip(names, losses.tolist()))}")
    return 1.0 / torch.tensor(losses, dtype=torch.float32).clamp_min(1e-6)


def as_loss_scales(loss_scales: Sequence[float] | Tensor | np.ndarray, n_tasks: int) -> Tensor:
    """Check user-given loss scales: ``n_tasks`` finite positive numbers, returned as a float32 ``[N]`` tensor."""
    if isinstance(loss_scales, Tensor):
        loss_scales = loss_scales.detach().cpu().double().numpy()
    scales = torch.as_tensor(np.asarray(loss_scales, dtype=np.float64).reshape(-1), dtype=torch.float32)
    if scales.numel() != n_tasks:
        raise ValueError(f"got {scales.numel()} loss scales for {n_tasks} tasks")
    if not torch.isfinite(scales).all() or (scales <= 0).any():
        raise ValueError(f"loss scales must be finite and > 0, got {scales.tolist()}")
    return scales


def weighted_task_loss(
    outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], tasks: Sequence[Task], weights: Tensor,
    info: StepInfo | None = None,
) -> Tensor:
    """Linear scalarisation ``sum_i weights[i] * L_i`` (a scalar float32 tensor); tasks of weight 0 are not
    even computed. With ``info`` (a training step) each ``L_i`` is checked to be finite
    (:meth:`dymu.loop.StepInfo.check_loss`). (dymu's stage loops have their own, private.)"""
    total = outputs[tasks[0].name].new_zeros((), dtype=torch.float32)
    for k, task in enumerate(tasks):
        if float(weights[k]) > 0:
            loss = task.loss(outputs[task.name], targets[task.name]).float()
            if info is not None:
                info.check_loss(loss, task.name)
            total = total + weights[k] * loss
    return total


def default_eval_every(steps: int, eval_every: int | None) -> int:
    """``eval_every`` checked, or about ten validations per run when it is None."""
    if eval_every is None:
        return max(1, math.ceil(steps / 10))
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    return int(eval_every)


def train_static(
    model: nn.Module,
    tasks: Sequence[Task],
    train: Iterable,
    val_batches: Sequence,
    weights: Tensor,
    *,
    steps: int,
    device: torch.device,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    cosine: bool = True,
    eval_every: int | None = None,
    desc: str = "static",
    verbose: bool = True,
    checkpointing: Checkpointing | None = None,
    auxiliary: AuxiliaryLoss | None = None,
    auxiliary_modules: nn.Module | None = None,
    param_groups: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train one fixed multi-task network on ``sum_i weights[i] * L_i`` and keep its best validation state.

    Adam (``lr``, ``weight_decay``) with cosine decay to 0 over ``steps``; every ``eval_every`` steps and
    at the end the scalarised validation loss ``sum_i weights[i] * L_i^val`` over ``val_batches`` is
    measured, and the state with the lowest one is loaded back at the end (model selection on validation
    only). The model is left in eval mode on ``device``. ``checkpointing``: resume checkpoints named
    after ``desc`` (see :class:`dymu.resume.Checkpointing`).

    Training-only extras (the distilled trunk's adaptors, the cross-stitch units' learning rate):

    * ``auxiliary(x, outputs)``: a scalar added to each step's training loss (not to the validation score,
      so model selection stays on the task losses alone); ``x`` is the batch's input ``[B, ...]`` on
      ``device`` and ``outputs`` the model's ``{task: prediction}`` of this step.
    * ``auxiliary_modules``: modules trained with the model (its parameters join the optimiser, it moves
      to ``device`` and is checkpointed) but not part of it, so neither kept-best nor served.
    * ``param_groups``: Adam parameter groups replacing the default one group of every parameter of the
      model and the auxiliary modules (e.g. a group with a larger ``lr``); groups without ``lr`` or
      ``weight_decay`` take the arguments'.

    Returns:
        ``{"train_loss": [per-step scalarised training loss], "history": [{"step", "val_losses",
        "val_score"}], "best_step": int, "best_score": float}``, plus ``"auxiliary_loss": [per-step
        auxiliary term]`` with ``auxiliary``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    every = default_eval_every(steps, eval_every)
    weights = weights.to(device=device, dtype=torch.float32)
    model.to(device).train()
    extras = [] if auxiliary_modules is None else [auxiliary_modules.to(device).train()]
    if param_groups is None:
        param_groups = [{"params": [p for m in (model, *extras) for p in m.parameters()]}]
    optimizer = adam(param_groups, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cosine else None

    def step(info: StepInfo, x: Tensor, targets: dict[str, Tensor]) -> dict[str, float]:
        outputs = model(x)
        loss = weighted_task_loss(outputs, targets, tasks, weights, info)
        logged = {"loss": float(loss.detach())}
        if auxiliary is not None:
            extra = auxiliary(x, outputs)
            info.check_loss(extra, "auxiliary")
            logged["auxiliary"] = float(extra.detach())
            loss = loss + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return logged

    def validate(step: int) -> dict[str, Any]:
        losses = validation_losses(model, tasks, val_batches, device)
        return {"val_losses": losses.tolist(), "val_score": float((weights.cpu().double().numpy() * losses).sum())}

    keep = KeepBest.lowest(model, key="val_score", label="scalarised loss")
    state = {"model": model, "optimizer": optimizer, **({"scheduler": scheduler} if scheduler is not None else {}),
             **({"auxiliary": extras[0]} if extras else {})}
    config = {"steps": steps, "lr": lr, "weight_decay": weight_decay, "cosine": cosine, "eval_every": every,
              "weights": weights.tolist()}
    loop = TrainLoop(desc, steps, device, tasks, state=state, validate=validate, keep=keep, eval_every=every,
                     log_every=1, config=config, checkpointing=checkpointing, verbose=verbose)
    result = loop.run(train, step)
    model.eval()
    out = {"train_loss": [entry["loss"] for entry in result.log], "history": result.history,
           "best_step": keep.steps["val_score"], "best_score": keep.scores["val_score"]}
    if auxiliary is not None:
        out["auxiliary_loss"] = [entry["auxiliary"] for entry in result.log]
    return out
