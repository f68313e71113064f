"""Hard-sharing multi-task networks, one trained per preference (the paper's "multi-task" baseline)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dymu.derived import DerivedModel
from dymu.preferences import normalize_preferences
from dymu.tasks import Task

from ..methods import StepBudget
from ..protocol.training_budget import allocation
from .base import Baseline
from .common import BackboneFactory, shared_network

__all__ = ["HardSharing"]

#: largest coordinate difference at which a requested preference counts as a trained one
PREFERENCE_TOLERANCE = 1e-6


class HardSharing(Baseline):
    """One shared backbone + N heads per preference, trained on ``sum_i r_i w_i L_i``.

    Args:
        backbone_factory, tasks, loss_scales, lr, weight_decay, val_batches, scale_batches, name: as for
            :class:`~benchmarks.baselines.base.Baseline`.
        steps: the step budget; every model trains for ``steps.total`` steps (the equal training budget,
            :data:`benchmarks.protocol.TRAINING_BUDGET_RULE`: each model alone answers its preference).
        preferences: ``[P, N]`` the preferences to train a model for (the evaluation preferences); each
            row is normalised onto the simplex.
        seed: every model starts from the same initialisation (this seed), so models differ only by
            their preference.
        eval_every: validate every this many steps (default: about ten times per model) and at the end;
            each model keeps its state with the lowest scalarised validation loss ``sum_i r_i w_i L_i``.

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
        super().__init__(backbone_factory, tasks, steps, loss_scales, seed, lr=lr, weight_decay=weight_decay,
                         eval_every=eval_every, val_batches=val_batches, scale_batches=scale_batches, name=name)
        rows = np.asarray(preferences, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] < 1:
            raise ValueError(f"preferences must be a [P, N] array with P >= 1, got shape {list(rows.shape)}")
        self.preferences = np.stack([normalize_preferences(row, self.task_names) for row in rows])
        self.models: list[DerivedModel] = []
        self.results: list[dict] = []

    def _fit(self, train: Iterable, val: Iterable, device: torch.device, verbose: bool) -> None:
        val_batches = self._validation_batches(
            val, device, lambda: shared_network(self.backbone_factory, self.tasks, self.seed).to(device))
        self.models, self.results = [], []
        for p, r in enumerate(self.preferences):
            model = shared_network(self.backbone_factory, self.tasks, self.seed)
            weights = torch.tensor(r, dtype=torch.float32) * self.loss_scales
            desc = f"{self.name} {p + 1}/{len(self.preferences)}"
            result = self._train_static(model, train, val_batches, weights, steps=allocation("hard_sharing", self.steps).steps,
                                        device=device, desc=desc, verbose=verbose)
            model.info.update({"method": self.name, "preference": r.tolist()})
            self.models.append(model)
            self.results.append(result)

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
