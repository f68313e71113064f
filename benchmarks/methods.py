"""The interface every compared method implements, and the controller wrapped in it (as itself, as its
single-task streams, and without its weight hypernet); the baselines live in :mod:`benchmarks.baselines`.

A method is trained once (:meth:`Method.fit`) and then asked for the model it would run for a task
preference and, where it can vary its cost, a resource preference ``c`` or a FLOP budget
(:meth:`Method.model_for`). The protocol (:mod:`benchmarks.protocol`) evaluates those models on the
test split, counts their FLOPs, and compares methods on the same data, seeds and step budgets.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import dymu
from dymu.metrics import count_params
from dymu.supernet import frozen_copy

__all__ = ["Method", "StepBudget", "ControllerMethod", "AnchorStreams", "SingleTask", "WithoutWeightHypernet"]


@dataclass(frozen=True)
class StepBudget:
    """Optimisation steps shared by all methods of one run, so that comparisons are fair.

    Attributes:
        anchor: steps of each single-task stream (stage 0); also the steps of every static model
            (one hard-sharing model per preference, the static affinity tree).
        edge, weights: the controller's stages 1 and 2.
        batch_size: examples per step, the same for every method.
        supernet: steps of the controller's supernet stage (between stages 0 and 1; 0: none).

    Hypernetwork baselines (PHN, PHN-BN) get ``total`` steps: as many as the controller takes in total.
    """

    anchor: int
    edge: int
    weights: int
    batch_size: int = 128
    supernet: int = 0

    @property
    def total(self) -> int:
        return self.anchor + self.supernet + self.edge + self.weights


class Method(abc.ABC):
    """A multi-task method under comparison.

    Attributes:
        name: the key of the method in result files (``"dymu"``, ``"phn"``, ...).
        dynamic_cost: whether its cost can change with the request (only the controller's can).
        train_seconds: wall time of :meth:`fit`, set by it.
    """

    name: str = "method"
    dynamic_cost: bool = False

    def __init__(self) -> None:
        self.train_seconds = float("nan")

    @abc.abstractmethod
    def fit(self, train: Iterable, val: Iterable, *, device: torch.device, verbose: bool = True) -> None:
        """Train on ``train`` (batches ``(x, {task: y})``), selecting models on ``val`` only."""

    @abc.abstractmethod
    def model_for(self, preference: np.ndarray, *, c: float | None = None, budget: float | None = None) -> nn.Module:
        """The network run for ``preference`` ``[N]`` (on the simplex): ``module(x) -> {task: pred}``, in eval mode."""

    def size(self) -> int:
        """Parameters this method must store to serve every preference (a controller's anchor and
        hypernets, PHN's hypernet, the sum of all per-preference models)."""
        return sum(count_params(m) for m in self.stored_modules())

    @abc.abstractmethod
    def stored_modules(self) -> Sequence[nn.Module]:
        """The modules whose parameters :meth:`size` counts."""


class ControllerMethod(Method):
    """The dymu controller (or one of its ablations) as a :class:`Method`.

    Args:
        make_controller: builds a fresh, untrained :class:`dymu.Controller`.
        steps: the step budget.
        edge_config, weight_config: stage configs (ablation switches live in the regulariser config);
            their ``steps`` are replaced by the budget's.
        use_weight_hypernet: False gives the paper's "without weight hypernet" baseline.
        name: result key.
    """

    dynamic_cost = True

    def __init__(
        self,
        make_controller,
        steps: StepBudget,
        *,
        edge_config: dymu.EdgeConfig | None = None,
        weight_config: dymu.WeightConfig | None = None,
        supernet_config: dymu.SupernetConfig | None = None,
        use_weight_hypernet: bool = True,
        name: str = "dymu",
        anchor_from: ControllerMethod | None = None,
    ):
        super().__init__()
        self.make_controller = make_controller
        self.steps = steps
        self.edge_config = edge_config or dymu.EdgeConfig()
        self.weight_config = weight_config or dymu.WeightConfig()
        self.supernet_config = supernet_config or dymu.SupernetConfig()
        #: the stage-0 single-task streams, frozen (the supernet stage fine-tunes the anchor in place)
        self.teacher: dymu.anchor.AnchorNet | None = None
        self.use_weight_hypernet = use_weight_hypernet
        self.name = name
        self.anchor_from = anchor_from
        self.controller: dymu.Controller | None = None

    def fit(self, train, val, *, device, verbose=True) -> None:
        from dataclasses import replace

        start = time.time()
        ctrl = self.make_controller().to(device)
        if self.anchor_from is not None and self.anchor_from.controller is not None:
            # ablations share the trained anchor (stage 0 is identical); its time is counted here too
            source = self.anchor_from.controller
            ctrl.anchor.load_state_dict(source.anchor.state_dict())
            ctrl.loss_scales = source.loss_scales.clone()
            ctrl.calibration = source.calibration
            ctrl.affinity = source.affinity
            ctrl.edge.set_affinity(source.edge.affinity)
            ctrl.stages.update({k: v for k, v in source.stages.items() if k in ("anchor", "affinity", "supernet")})
            self.teacher = self.anchor_from.teacher
            start -= source.stages["anchor"]["seconds"] + source.stages.get("supernet", {}).get("seconds", 0.0)
        else:
            ctrl.fit_anchor(train, val, steps=self.steps.anchor, device=device, verbose=verbose)
            ctrl.fit_affinity(train, device=device)
            self.teacher = frozen_copy(ctrl.anchor)
            if self.steps.supernet > 0:
                ctrl.fit_supernet(train, val, config=replace(self.supernet_config, steps=self.steps.supernet),
                                  device=device, verbose=verbose)
        ctrl.fit_edge(train, val, config=replace(self.edge_config, steps=self.steps.edge), device=device, verbose=verbose)
        if self.use_weight_hypernet:
            ctrl.fit_weights(train, val, config=replace(self.weight_config, steps=self.steps.weights), device=device, verbose=verbose)
        self.controller = ctrl
        self.train_seconds = time.time() - start

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        if self.controller is None:
            raise ValueError(f"{self.name}: call fit() first")
        return self.controller.build_model(
            list(map(float, preference)), budget, c=c, use_weight_hypernet=self.use_weight_hypernet
        )

    def stored_modules(self):
        ctrl = self.controller
        mods = [ctrl.anchor, ctrl.edge]
        if self.use_weight_hypernet:
            mods.append(ctrl.weight)
        return mods


class AnchorStreams(nn.Module):
    """The anchor's streams as one multi-task module: ``x [B, C, H, W] -> {task: prediction}``."""

    def __init__(self, anchor: nn.Module):
        super().__init__()
        self.anchor = anchor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.anchor.forward_single(x)


class SingleTask(Method):
    """The single-task baseline: the trained controller's anchor streams (selected on validation in stage 0).

    It trains nothing of its own: ``fit`` only records the anchor's training time.
    """

    name = "single_task"

    def __init__(self, source: ControllerMethod):
        super().__init__()
        self.source = source
        self.module: AnchorStreams | None = None

    def fit(self, train, val, *, device, verbose=True) -> None:
        ctrl = self.source.controller
        if ctrl is None:
            raise ValueError("single_task: fit the controller first")
        self.module = AnchorStreams(self.source.teacher if self.source.teacher is not None else ctrl.anchor).eval()
        self.train_seconds = float(ctrl.stages["anchor"]["seconds"])

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        if self.module is None:
            raise ValueError("single_task: call fit() first")
        return self.module

    def stored_modules(self):
        return [self.module.anchor]


class WithoutWeightHypernet(Method):
    """The trained controller with its trees built from the anchor's own BatchNorm (the paper's
    "without weight hypernet" baseline): the same anchor and edge hypernet, so it needs no training of its
    own; its training time is that of stages 0 and 1."""

    name = "dymu_no_weight_hypernet"
    dynamic_cost = True

    def __init__(self, source: ControllerMethod):
        super().__init__()
        self.source = source

    @property
    def controller(self) -> dymu.Controller | None:
        return self.source.controller

    def fit(self, train, val, *, device, verbose=True) -> None:
        ctrl = self.controller
        if ctrl is None:
            raise ValueError(f"{self.name}: fit the controller first")
        self.train_seconds = float(ctrl.stages["anchor"]["seconds"] + ctrl.stages["edge"]["seconds"])

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        return self.controller.build_model(list(map(float, preference)), budget, c=c, use_weight_hypernet=False)

    def stored_modules(self):
        return [self.controller.anchor, self.controller.edge]
