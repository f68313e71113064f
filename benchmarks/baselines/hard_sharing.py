"""Hard-sharing multi-task networks, one trained per preference (the paper's "multi-task" baseline)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dymu.derived import DerivedModel
from dymu.preferences import normalize_preferences
from dymu.tasks import Task, check_tasks

from ..methods import Method, StepBudget
from ..protocol.training_budget import allocation
from .common import (
    BackboneFactory,
    as_loss_scales,
    shared_network,
    take_batches,
    train_static,
    untrained_loss_scales,
)

__all__ = ["HardSharing"]

#: largest coordinate difference at which a requested preference counts as a trained one
PREFERENCE_TOLERANCE = 1e-6


class HardSharing(Method):
    """One shared backbone + N heads per preference, trained on ``sum_i r_i w_i L_i``.

    Args:
        backbone_factory: builds a fresh :class:`~dymu.backbones.BlockBackbone` (the same family as the
            controller's streams).
        tasks: the N tasks.
        steps: the step budget; every model trains for ``steps.total`` steps (the equal training budget,
            :data:`benchmarks.protocol.TRAINING_BUDGET_RULE`: each model alone answers its preference).
        preferences: ``[P, N]`` the preferences to train a model for (the evaluation preferences); each
            row is normalised onto the simplex.
        loss_scales: ``w_i`` ``[N]``. Default: ``1 / L_i`` of the untrained network on (at most
            ``scale_batches``) validation batches. The protocol passes the controller's single-task scales,
            so that every method scalarises the same way.
        seed: every model starts from the same initialisation (this seed), so models differ only by
            their preference.
        lr, weight_decay: Adam (default 1e-3, 1e-5, cosine decay), as the controller's single-task streams.
        eval_every: validate every this many steps (default: about ten times per model) and at the end;
            each model keeps its state with the lowest scalarised validation loss ``sum_i r_i w_i L_i``.
        val_batches: validation batches used for model selection (default: all).

    ``model_for(r)`` returns the model trained for exactly ``r`` (within 1e-6 per coordinate);
    ``c`` and ``budget`` are ignored: a hard-sharing model has one fixed cost.
    """

    name = "hard_sharing"

    def __init__(
        self,
        backbone_factory: BackboneFactory,
        tasks: Sequence[Task],
        steps: StepBudget,
        preferences: np.ndarray | Sequence[Sequence[float]],
        loss_scales: Sequence[float] | Tensor | None = None,
        seed: int = 0,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        eval_every: int | None = None,
        val_batches: int | None = None,
        scale_batches: int = 10,
        name: str = "hard_sharing",
    ):
        super().__init__()
        self.backbone_factory = backbone_factory
        self.tasks = check_tasks(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.steps = steps
        rows = np.asarray(preferences, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] < 1:
            raise ValueError(f"preferences must be a [P, N] array with P >= 1, got shape {list(rows.shape)}")
        self.preferences = np.stack([normalize_preferences(row, self.task_names) for row in rows])
        self.loss_scales = None if loss_scales is None else as_loss_scales(loss_scales, len(self.tasks))
        self.seed = int(seed)
        self.lr, self.weight_decay = lr, weight_decay
        self.eval_every, self.val_batches, self.scale_batches = eval_every, val_batches, scale_batches
        self.name = name
        self.models: list[DerivedModel] = []
        self.results: list[dict] = []

    def fit(self, train, val, *, device, verbose: bool = True) -> None:
        device = torch.device(device)
        start = time.time()
        val_batches = take_batches(val, self.val_batches)
        if self.loss_scales is None:
            fresh = shared_network(self.backbone_factory, self.tasks, self.seed).to(device)
            self.loss_scales = untrained_loss_scales(fresh, self.tasks, val_batches[: self.scale_batches], device)
        self.models, self.results = [], []
        for p, r in enumerate(self.preferences):
            model = shared_network(self.backbone_factory, self.tasks, self.seed)
            weights = torch.tensor(r, dtype=torch.float32) * self.loss_scales
            desc = f"{self.name} {p + 1}/{len(self.preferences)}"
            result = train_static(
                model, self.tasks, train, val_batches, weights, steps=allocation("hard_sharing", self.steps).steps, device=device,
                lr=self.lr, weight_decay=self.weight_decay, eval_every=self.eval_every, desc=desc, verbose=verbose,
            )
            model.info.update({"method": self.name, "preference": r.tolist()})
            self.models.append(model)
            self.results.append(result)
        self.train_seconds = time.time() - start

    def index_of(self, preference: np.ndarray | Sequence[float]) -> int:
        """The index of the trained model for ``preference``.

        Raises:
            ValueError: the preference is invalid, or no model was trained for it.
        """
        r = normalize_preferences(preference, self.task_names)
        gaps = np.abs(self.preferences - r).max(axis=1)
        best = int(np.argmin(gaps))
        if gaps[best] > PREFERENCE_TOLERANCE:
            trained = ", ".join("(" + ", ".join(f"{v:.3f}" for v in row) + ")" for row in self.preferences[:5])
            more = f" and {len(self.preferences) - 5} more" if len(self.preferences) > 5 else ""
            raise ValueError(
                f"{self.name}: no model was trained for preference {np.round(r, 6).tolist()}; "
                f"it trains one model per given preference: {trained}{more}"
            )
        return best

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        if not self.models:
            raise ValueError(f"{self.name}: call fit() first")
        return self.models[self.index_of(preference)].eval()

    def stored_modules(self) -> Sequence[nn.Module]:
        return list(self.models)
