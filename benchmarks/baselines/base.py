"""What every trained baseline shares: its training settings, their checks, and the start of its training.

Each baseline (:class:`~benchmarks.baselines.HardSharing`, :class:`~benchmarks.baselines.PHN`, ...) is one
idea about how to serve many preferences with a fixed-cost network; how it is fed (tasks, step budget, loss
scales, seed, optimiser, validation) is the same for all of them, so that the protocol compares the ideas
and not their settings. :class:`Baseline` holds those settings once; :class:`SingleModelBaseline` adds what
the baselines that train one network for every preference share.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dymu.preferences import normalize_preferences
from dymu.tasks import Task, check_tasks

from ..methods import Method, StepBudget
from .common import BackboneFactory, as_loss_scales, take_batches, train_static, untrained_loss_scales

__all__ = ["Baseline", "SingleModelBaseline"]


class Baseline(Method):
    """A method trained from a backbone factory under the shared step budget, loss scales and seed.

    Args:
        backbone_factory: builds a fresh :class:`~dymu.backbones.BlockBackbone` (the same family as the
            controller's streams); each baseline says what it builds from it.
        tasks: the N tasks.
        steps: the step budget; each baseline says how many steps it trains for under the equal training
            budget (:data:`benchmarks.protocol.TRAINING_BUDGET_RULE`).
        loss_scales: ``w_i`` ``[N]``, finite and positive (:func:`~benchmarks.baselines.common.as_loss_scales`).
            Default: ``1 / L_i`` of the untrained network on (at most ``scale_batches``) validation batches.
            The protocol passes the controller's single-task scales, so that every method scalarises the
            same way.
        seed: initialisation seed.
        lr, weight_decay: Adam (the baselines' default 1e-3, 1e-5, cosine decay), as the controller's
            single-task streams.
        eval_every: validate every this many steps (default None: about ten times per run) and at the end;
            the state with the lowest scalarised validation loss is kept (model selection on validation only).
        val_batches: validation batches used for model selection (None: all).
        scale_batches: at most this many of those batches estimate the default loss scales.
        name: the key of the method in result files.

    There are no defaults here: every baseline's constructor keeps its own public defaults.

    ``train_seconds`` is the wall time of :meth:`fit`, validation batches and loss scales included.
    """

    def __init__(
        self,
        backbone_factory: BackboneFactory,
        tasks: Sequence[Task],
        steps: StepBudget,
        loss_scales: Sequence[float] | Tensor | np.ndarray | None,
        seed: int,
        *,
        lr: float,
        weight_decay: float,
        eval_every: int | None,
        val_batches: int | None,
        scale_batches: int,
        name: str,
    ):
        super().__init__()
        self.backbone_factory = backbone_factory
        self.tasks = check_tasks(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.steps = steps
        # checked now, so that a wrong count fails at construction and not after other methods have trained
        self.loss_scales: Tensor | None = None if loss_scales is None else as_loss_scales(loss_scales, len(self.tasks))
        self.seed = int(seed)
        self.lr, self.weight_decay = lr, weight_decay
        self.eval_every, self.val_batches, self.scale_batches = eval_every, val_batches, scale_batches
        self.name = name

    def fit(self, train: Iterable, val: Iterable, *, device: torch.device | str, verbose: bool = True) -> None:
        # timed here, the same way for every baseline, so that their train_seconds compare
        start = time.time()
        self._fit(train, val, torch.device(device), verbose)
        self.train_seconds = time.time() - start

    @abc.abstractmethod
    def _fit(self, train: Iterable, val: Iterable, device: torch.device, verbose: bool) -> None:
        """The training of :meth:`fit` (which times it), on ``device``."""

    def _validation_batches(self, val: Iterable, device: torch.device, untrained: Callable[[], nn.Module]) -> list:
        """The validation batches of model selection (``val_batches`` of ``val``); when no loss scales were
        given, also sets them from the network ``untrained()`` on the first ``scale_batches`` of them.

        ``untrained`` is only called when the scales are needed: a baseline that builds its network later
        (one per preference) does not build one more for nothing.
        """
        batches = take_batches(val, self.val_batches)
        if self.loss_scales is None:
            self.loss_scales = untrained_loss_scales(untrained(), self.tasks, batches[: self.scale_batches], device)
        return batches

    def _train_static(
        self, model: nn.Module, train: Iterable, val_batches: Sequence, weights: Tensor, *, steps: int,
        device: torch.device, desc: str, verbose: bool, **extras: Any,
    ) -> dict[str, Any]:
        """:func:`~benchmarks.baselines.common.train_static` with this baseline's optimiser and validation
        settings; ``extras`` are its training-only keywords (``auxiliary``, ``param_groups``, ...)."""
        return train_static(
            model, self.tasks, train, val_batches, weights, steps=steps, device=device, lr=self.lr,
            weight_decay=self.weight_decay, eval_every=self.eval_every, desc=desc, verbose=verbose, **extras,
        )


class SingleModelBaseline(Baseline):
    """A baseline that trains one network on the equal preference ``sum_i w_i L_i / N`` and serves it for
    every preference: ``model_for(r)`` checks ``r`` as every method does and returns that network, ignoring
    ``c`` and ``budget`` (its cost is fixed).

    Attributes:
        model: the trained network (None before :meth:`fit`).
        result: :func:`~benchmarks.baselines.common.train_static`'s result (None before :meth:`fit`).
    """

    model: nn.Module | None = None
    result: dict | None = None

    def equal_preference_weights(self) -> Tensor:
        """``w_i / N`` ``[N]``: the loss scales at the equal preference (set once :meth:`fit` has begun)."""
        if self.loss_scales is None:
            raise ValueError(f"{self.name}: the loss scales are set by fit()")
        return self.loss_scales / len(self.tasks)

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        if self.model is None:
            raise ValueError(f"{self.name}: call fit() first")
        normalize_preferences(preference, self.task_names)  # the same checks as every method's
        return self.model.eval()

    def stored_modules(self) -> Sequence[nn.Module]:
        return [] if self.model is None else [self.model]
