"""A static branched multi-task network from task affinities (Vandenhende et al.'s recipe), trained once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from affinity.branching import branching_tree, tree_cost
from affinity.rsa import AffinityResult
from affinity.tree import Tree
from dymu.derived import DerivedModel
from dymu.tasks import Task

from ..methods import StepBudget
from ..protocol.training_budget import allocation
from .base import SingleModelBaseline
from .common import BackboneFactory, block_flops, fresh_backbone, tree_network

__all__ = ["StaticTree"]


class StaticTree(SingleModelBaseline):
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
        lr, weight_decay, eval_every, val_batches, scale_batches, name: as for
            :class:`~benchmarks.baselines.base.Baseline`.

    Attributes:
        tree: the architecture (known from construction on; node ids are canonical).
        layer_flops: FLOPs of one sample through each block (the costs the tree was chosen with).
        model, result: as for :class:`~benchmarks.baselines.base.SingleModelBaseline`.

    One model serves every preference: ``model_for(r)`` returns the same network for any ``r``, and
    ignores ``c`` and ``budget`` (its cost is fixed).
    """

    name = "static_tree"
    model: DerivedModel | None

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
        super().__init__(backbone_factory, tasks, steps, loss_scales, seed, lr=lr, weight_decay=weight_decay,
                         eval_every=eval_every, val_batches=val_batches, scale_batches=scale_batches, name=name)
        self.extra_share = float(extra_share)
        self.layer_flops = block_flops(fresh_backbone(backbone_factory, seed))
        self.tree: Tree = branching_tree(affinity, self.task_names, extra_share=self.extra_share, layer_costs=self.layer_flops)

    @property
    def tree_flops(self) -> float:
        """FLOPs of one sample through the tree's blocks (heads excluded)."""
        return tree_cost(self.tree, self.layer_flops)

    def _fit(self, train: Iterable, val: Iterable, device: torch.device, verbose: bool) -> None:
        model = tree_network(self.backbone_factory, self.tasks, self.tree, self.seed).to(device)
        val_batches = self._validation_batches(val, device, lambda: model)
        self.result = self._train_static(model, train, val_batches, self.equal_preference_weights(),
                                         steps=allocation("static_tree", self.steps).steps, device=device,
                                         desc=self.name, verbose=verbose)
        model.info.update({"method": self.name, "extra_share": self.extra_share, "tree": self.tree.to_dict()})
        self.model = model

