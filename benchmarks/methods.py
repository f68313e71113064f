"""The interface every compared method implements, and the controller wrapped in it (as itself, as its
single-task streams, and without its weight hypernet); the baselines live in :mod:`benchmarks.baselines`.

A method is trained once (:meth:`Method.fit`) and then asked for the model it would run for a task
preference and, where it can vary its cost, a resource preference ``c`` or a FLOP budget
(:meth:`Method.model_for`). The protocol (:mod:`benchmarks.protocol`) evaluates those models on the
test split, counts their FLOPs, and compares methods on the same data, seeds and training budget
(:data:`benchmarks.protocol.TRAINING_BUDGET_RULE`: every method sees ``StepBudget.total x batch_size``
training images).
"""

from __future__ import annotations

import abc
import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import dymu
from dymu.metrics import count_params
from dymu.supernet import frozen_copy

__all__ = ["Method", "StepBudget", "ControllerMethod", "AnchorStreams", "SingleTask", "WithoutWeightHypernet"]


@dataclass(frozen=True)
class StepBudget:
    """Optimisation steps of the controller's stages; ``total`` is every method's budget.

    Attributes:
        anchor: steps of the controller's single-task streams (stage 0).
        edge, weights: the controller's stages 1 and 2.
        batch_size: examples per step, the same for every method.
        supernet: steps of the controller's supernet stage (between stages 0 and 1; 0: none).

    Under :data:`benchmarks.protocol.TRAINING_BUDGET_RULE` every other method trains for ``total`` steps
    too, counting what it depends on: PHN, PHN-BN, every hard-sharing model and every static tree for
    ``total``; the single-task streams for stage 0 plus ``total - anchor`` steps of their own
    (:func:`benchmarks.protocol.allocation` says it per method).
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

    After :meth:`checkpoint_stages`, every stage :meth:`fit` trains writes a resume checkpoint into a folder
    (:mod:`dymu.resume`) and, with ``resume=True``, continues from what an interrupted process left there: finished
    stages are loaded, not retrained, and a stage killed between two checkpoints continues with the weights an
    uninterrupted run reaches. :attr:`resumed_stages` then names the step each stage continued from, and
    :attr:`train_seconds` adds the training time those stages' checkpoints recorded in the earlier processes.
    """

    dynamic_cost = True
    #: steps between two checkpoints of a stage (and one at its end): about two minutes of the full presets' supernet
    #: stage on one CPU thread
    CHECKPOINT_EVERY = 50

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
        self.checkpoints: Path | None = None
        self.resume = False
        #: stage -> the step its checkpoint was continued from (the stage's steps: loaded finished)
        self.resumed_stages: dict[str, int] = {}
        self._carried_seconds = 0.0
        #: called with this method once stage 0 is trained (its :attr:`teacher` set), before any later stage: a check
        #: that must fail before hours of training rather than after them
        self.after_stage0: Callable[[ControllerMethod], None] | None = None

    def checkpoint_stages(self, folder: str | Path, *, resume: bool) -> None:
        """Write each stage's resume checkpoint into ``folder`` (``anchor.pt``, ``supernet.pt``, ``edge.pt``,
        ``weights.pt``); with ``resume`` continue from the checkpoints already there."""
        self.checkpoints, self.resume = Path(folder), resume

    def _stage(self, name: str, fit: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> None:
        """Run one ``Controller.fit_*`` stage, checkpointed when :meth:`checkpoint_stages` was called."""
        if self.checkpoints is not None:
            kwargs.update(checkpoint=self.checkpoints, checkpoint_every=self.CHECKPOINT_EVERY, resume=self.resume)
        started = time.time()
        result = fit(*args, **kwargs)
        if result.get("resumed_at"):
            self.resumed_stages[name] = int(result["resumed_at"])
            # the stage's recorded seconds cover every process that trained it; this one ran only the rest
            self._carried_seconds += max(0.0, float(result.get("seconds", 0.0)) - (time.time() - started))

    def fit(self, train, val, *, device, verbose=True) -> None:
        start = time.time()
        self.resumed_stages, self._carried_seconds = {}, 0.0
        ctrl = self.make_controller().to(device)
        if self.anchor_from is not None and self.anchor_from.controller is not None:
            # ablations share the trained anchor (stage 0 is identical); its time is counted here too
            source = self.anchor_from.controller
            ctrl.anchor.load_state_dict(source.anchor.state_dict())
            ctrl.solo = source.solo  # frozen after the supernet stage: shared, as the teacher is
            ctrl.own_trees = source.own_trees  # likewise
            ctrl.loss_scales = source.loss_scales.clone()
            ctrl.calibration = source.calibration
            ctrl.affinity = source.affinity
            ctrl.edge.set_affinity(source.edge.affinity)
            ctrl.stages.update({k: v for k, v in source.stages.items() if k in ("anchor", "affinity", "supernet")})
            self.teacher = self.anchor_from.teacher
            start -= source.stages["anchor"]["seconds"] + source.stages.get("supernet", {}).get("seconds", 0.0)
        else:
            self._stage("anchor", ctrl.fit_anchor, train, val, steps=self.steps.anchor, device=device, verbose=verbose)
            ctrl.fit_affinity(train, device=device)
            self.teacher = frozen_copy(ctrl.anchor)
            if self.after_stage0 is not None:
                self.after_stage0(self)
        self.fit_after_stage0(ctrl, train, val, device=device, verbose=verbose, supernet=self.anchor_from is None)
        self.train_seconds = time.time() - start + self._carried_seconds

    def fit_after_stage0(self, ctrl: dymu.Controller, train, val, *, device, verbose=True, supernet: bool = True) -> None:
        """Train ``ctrl`` (stage 0 and its affinity done) through the supernet stage (when ``supernet`` and it
        has steps), the edge and the weight hypernet (when used and it has steps) of :attr:`steps`; it becomes
        :attr:`controller`."""
        if supernet and self.steps.supernet > 0:
            self._stage("supernet", ctrl.fit_supernet, train, val, config=replace(self.supernet_config, steps=self.steps.supernet),
                        device=device, verbose=verbose)
        self._stage("edge", ctrl.fit_edge, train, val, config=replace(self.edge_config, steps=self.steps.edge), device=device,
                    verbose=verbose)
        if self.use_weight_hypernet and self.steps.weights > 0:
            self._stage("weights", ctrl.fit_weights, train, val, config=replace(self.weight_config, steps=self.steps.weights),
                        device=device, verbose=verbose)
        self.controller = ctrl

    def stage0_streams(self) -> dymu.anchor.AnchorNet:
        """The controller's single-task streams as stage 0 left them (the teacher of the distillation
        baselines, the start of the single-task baseline).

        Raises:
            ValueError: the supernet stage fine-tuned the anchor and no copy of the stage-0 streams exists
                (a controller restored without its teacher file).
        """
        ctrl = self.controller
        if ctrl is None:
            raise ValueError(f"{self.name}: call fit() first")
        if self.teacher is not None:
            return self.teacher
        supernet = ctrl.stages.get("supernet")
        if supernet and not supernet.get("kept_stage0", False):
            raise ValueError(f"{self.name}: the supernet stage fine-tuned the anchor and the stage-0 streams were not kept "
                             "(restore the teacher file beside the controller, or retrain)")
        return ctrl.anchor

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        if self.controller is None:
            raise ValueError(f"{self.name}: call fit() first")
        return self.controller.build_model(
            list(map(float, preference)), budget, c=c, use_weight_hypernet=self.use_weight_hypernet
        )

    def stored_modules(self):
        ctrl = self.controller
        mods = [ctrl.anchor, ctrl.edge] + ([ctrl.solo] if ctrl.solo is not None else [])
        mods += [ctrl.own_trees] if ctrl.own_trees is not None else []
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
    """The single-task baseline: the controller's stage-0 streams, trained on for the rest of the budget.

    Under :data:`benchmarks.protocol.TRAINING_BUDGET_RULE` the streams see ``StepBudget.total`` steps: a
    copy of the controller's stage-0 streams (its frozen ``teacher`` when it has one: a later stage may
    fine-tune ``controller.anchor`` in place) continues for ``total - anchor`` steps with stage 0's trainer
    (:func:`dymu.training.train_anchor`), which keeps each stream's best validation state. [choice] A stream
    whose stage-0 state scored better on the same validation data than every continued state keeps its
    stage-0 state: model selection covers all ``total`` steps, as it would in one uninterrupted run.
    ``train_seconds`` is stage 0's time plus the continuation's.

    Attributes:
        module: the streams as one module (after :meth:`fit`).
        continuation: ``train_anchor``'s result, and per task whether the stage-0 state was kept.
    """

    name = "single_task"

    def __init__(self, source: ControllerMethod):
        super().__init__()
        self.source = source
        self.module: AnchorStreams | None = None
        self.continuation: dict | None = None

    def fit(self, train, val, *, device, verbose=True) -> None:
        from .protocol.training_budget import allocation

        ctrl = self.source.controller
        if ctrl is None:
            raise ValueError("single_task: fit the controller first")
        start = time.time()
        stage0 = self.source.stage0_streams()
        # the controller's later stages freeze its anchor; the copy trains again
        anchor = copy.deepcopy(stage0).to(device).requires_grad_(True)
        extra = allocation(self.name, self.source.steps).part("continuation")
        if extra > 0:
            stage0_config = ctrl.stages["anchor"]["config"]
            # the continuation validates as often as stage 0 did, with the controller's seed (its own batch order)
            config = dymu.AnchorConfig(steps=extra, eval_every=int(stage0_config.get("eval_every", dymu.AnchorConfig.eval_every)),
                                       seed=ctrl.seed)
            result = dymu.training.train_anchor(anchor, ctrl.tasks, train, val, config, torch.device(device), verbose)
            kept = self._keep_better_stage0(anchor, stage0, ctrl.tasks, ctrl.stages["anchor"].get("best_val") or {}, result["best"])
            self.continuation = {"steps": extra, "best": result["best"], "kept_stage0": kept}
        self.module = AnchorStreams(anchor).eval()
        self.train_seconds = float(ctrl.stages["anchor"]["seconds"]) + (time.time() - start)

    @staticmethod
    def _keep_better_stage0(anchor: nn.Module, stage0: nn.Module, tasks, before: dict, after: dict) -> dict[str, bool]:
        """Load stage 0's stream and head back for every task whose stage-0 validation score beat the
        continuation's best (both measured on the same validation data); ``{task: kept stage 0}``."""
        kept = {}
        for i, task in enumerate(tasks):
            old, new = before.get(task.name, {}).get(task.primary), after.get(task.name, {}).get(task.primary)
            better = old is not None and (new is None or (old > new if task.higher_is_better else old < new))
            if better:
                anchor.streams[i].load_state_dict(stage0.streams[i].state_dict())
                anchor.heads[task.name].load_state_dict(stage0.heads[task.name].state_dict())
            kept[task.name] = better
        return kept

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
