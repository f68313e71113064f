"""A static branched multi-task network from task affinities (Vandenhende et al.'s recipe), trained once."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from affinity.branching import branching_tree, tree_cost
from affinity.rsa import AffinityResult
from affinity.tree import Tree
from dymu.derived import DerivedModel
from dymu.preferences import normalize_preferences
from dymu.tasks import Task, check_tasks

from ..methods import Method, StepBudget
from ..protocol.training_budget import allocation
from .common import (
    BackboneFactory,
    as_loss_scales,
    block_flops,
    fresh_backbone,
    take_batches,
    train_static,
    tree_network,
    untrained_loss_scales,
)

__all__ = ["StaticTree"]


class StaticTree(Method):
    """The tree ``affinity.branching_tree(affinity, extra_share=extra_share, layer_costs=block FLOPs)``, trained from
    scratch as one multi-task network on ``sum_i w_i L_i / N`` (the equal preference).

    Args:
        backbone_factory: builds a fresh :class:`~dymu.backbones.BlockBackbone`; block ``l`` of it is one
            node of layer ``l``.
        tasks: the N tasks (the affinity's tasks, same order).
        steps: the step budget; the network trains for ``steps.total`` steps (the equal training budget,
            :data:`benchmarks.protocol.TRAINING_BUDGET_RULE`).
        affinity: an :class:`affinity.AffinityResult` (e.g. the controller's ``affinity``), or per-layer
            affinities ``[L, N, N]``.
        extra_share: in ``[0, 1]``, the share of the anchor's extra FLOPs over hard sharing that the tree may
            spend (0: hard sharing, 1: up to one backbone per task; heads excluded); see
            :func:`affinity.branching_tree`. Not a ``build_model`` budget (a fraction of the anchor's FLOPs).
        loss_scales: ``w_i`` ``[N]`` (default: ``1 / L_i`` of the untrained network on validation batches).
        seed: initialisation seed.
        lr, weight_decay, eval_every, val_batches: as for :class:`~benchmarks.baselines.HardSharing`.

    Attributes:
        tree: the architecture (known from construction on; node ids are canonical).
        layer_flops: FLOPs of one sample through each block (the costs the tree was chosen with).

    One model serves every preference: ``model_for(r)`` returns the same network for any ``r``, and
    ignores ``c`` and ``budget`` (its cost is fixed).
    """

    name = "static_tree"

    def __init__(
        self,
        backbone_factory: BackboneFactory,
        tasks: Sequence[Task],
        steps: StepBudget,
        affinity: AffinityResult | np.ndarray,
        extra_share: float,
        loss_scales: Sequence[float] | Tensor | None = None,
        seed: int = 0,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        eval_every: int | None = None,
        val_batches: int | None = None,
        scale_batches: int = 10,
        name: str = "static_tree",
    ):
        super().__init__()
        self.backbone_factory = backbone_factory
        self.tasks = check_tasks(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.steps = steps
        self.extra_share = float(extra_share)
        self.layer_flops = block_flops(fresh_backbone(backbone_factory, seed))
        self.tree: Tree = branching_tree(affinity, self.task_names, extra_share=self.extra_share, layer_costs=self.layer_flops)
        self.loss_scales = None if loss_scales is None else as_loss_scales(loss_scales, len(self.tasks))
        self.seed = int(seed)
        self.lr, self.weight_decay = lr, weight_decay
        self.eval_every, self.val_batches, self.scale_batches = eval_every, val_batches, scale_batches
        self.name = name
        self.model: DerivedModel | None = None
        self.result: dict | None = None

    @property
    def tree_flops(self) -> float:
        """FLOPs of one sample through the tree's blocks (heads excluded)."""
        return tree_cost(self.tree, self.layer_flops)

    def fit(self, train, val, *, device, verbose: bool = True) -> None:
        device = torch.device(device)
        start = time.time()
        val_batches = take_batches(val, self.val_batches)
        model = tree_network(self.backbone_factory, self.tasks, self.tree, self.seed).to(device)
        if self.loss_scales is None:
            self.loss_scales = untrained_loss_scales(model, self.tasks, val_batches[: self.scale_batches], device)
        n = len(self.tasks)
        weights = self.loss_scales / n
        self.result = train_static(
            model, self.tasks, train, val_batches, weights, steps=allocation("static_tree", self.steps).steps, device=device,
            lr=self.lr, weight_decay=self.weight_decay, eval_every=self.eval_every, desc=self.name, verbose=verbose,
        )
        model.info.update({"method": self.name, "extra_share": self.extra_share, "tree": self.tree.to_dict()})
        self.model = model
        self.train_seconds = time.time() - start

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        if self.model is None:
            raise ValueError(f"{self.name}: call fit() first")
        normalize_preferences(preference, self.task_names)  # the same checks as every method's
        return self.model.eval()

    def stored_modules(self) -> Sequence[nn.Module]:
        return [] if self.model is None else [self.model]
