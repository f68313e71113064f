"""Validation of task preferences and resource preferences given by users."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["normalize_preferences", "check_budget", "check_resource", "sample_preferences", "RequestSampler"]


def normalize_preferences(preferences: Mapping[str, float] | Sequence[float], tasks: Sequence[str]) -> np.ndarray:
    """Turn a mapping ``task -> weight`` or a sequence in task order into a point of the simplex ``[N]``.

    Raises:
        ValueError: naming the problem: unknown or missing task names, a wrong length, a NaN, infinite
            or negative weight, or all weights zero.
    """
    tasks = list(tasks)
    if isinstance(preferences, Mapping):
        unknown = [name for name in preferences if name not in tasks]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown} in preferences; the tasks are {tasks}")
        missing = [name for name in tasks if name not in preferences]
        if missing:
            raise ValueError(f"preferences lack task(s) {missing}; give a weight (0 is allowed) for every task of {tasks}")
        values = [preferences[name] for name in tasks]
    elif isinstance(preferences, (str, bytes)):
        raise ValueError(f"preferences must be a mapping task -> weight or a sequence of {len(tasks)} numbers, got a string")
    else:
        if isinstance(preferences, (np.ndarray, torch.Tensor)):
            preferences = np.asarray(preferences.tolist() if isinstance(preferences, torch.Tensor) else preferences).reshape(-1).tolist()
        values = list(preferences)
        if len(values) != len(tasks):
            raise ValueError(f"got {len(values)} preference weights for {len(tasks)} tasks {tasks}")
    out = np.empty(len(tasks), dtype=np.float64)
    for i, (name, value) in enumerate(zip(tasks, values)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"preference for task {name!r} is not a number: {value!r}") from None
        if math.isnan(value):
            raise ValueError(f"preference for task {name!r} is NaN")
        if math.isinf(value):
            raise ValueError(f"preference for task {name!r} is infinite")
        if value < 0:
            raise ValueError(f"preference for task {name!r} is negative ({value}); weights must be >= 0")
        out[i] = value
    total = out.sum()
    if total <= 0:
        raise ValueError(f"all preference weights are zero; at least one of {tasks} must be positive")
    return out / total


def check_budget(budget: float) -> float:
    """A budget is the fraction of the anchor's FLOPs allowed, in ``(0, 1]``."""
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a number in (0, 1], got {budget!r}") from None
    if math.isnan(budget) or not 0 < budget <= 1:
        raise ValueError(f"budget must lie in (0, 1] (a fraction of the full anchor's FLOPs), got {budget}")
    return budget


def check_resource(c: float) -> float:
    """The paper's resource preference ``c`` in ``[0, 1]`` (larger: cheaper)."""
    try:
        c = float(c)
    except (TypeError, ValueError):
        raise ValueError(f"c must be a number in [0, 1], got {c!r}") from None
    if math.isnan(c) or not 0 <= c <= 1:
        raise ValueError(f"c must lie in [0, 1], got {c}")
    return c


def sample_preferences(n_tasks: int, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """One training preference: ``r ~ Dirichlet(alpha, ..., alpha)`` ``[N]`` and ``c ~ U(0, 1)``.

    Drawn from a numpy ``Generator`` owned by the training loop, so runs are reproducible without
    global RNG state. A Dirichlet(0.2) draw can underflow to all zeros in float64; it is redrawn.
    """
    while True:
        r = rng.dirichlet(np.full(n_tasks, float(alpha)))
        if np.isfinite(r).all() and r.sum() > 0:
            return r / r.sum(), float(rng.uniform())


@dataclass(frozen=True)
class RequestSampler:
    """Draws training requests ``(r [N], budget or None, resource input)`` for the hypernets.

    ``mode="budget"``: ``r ~ Dirichlet(alpha)``, then ``budget = 1`` with probability
    ``full_budget_share``, else ``budget ~ U(min_budget, 1)``; the resource input is the budget pressure
    ``(1 - budget) / (1 - min_budget)``. ``mode="paper"``: ``r ~ Dirichlet(alpha)``, ``c ~ U(0, 1)``, no
    budget (the paper's draws, in the same order as :func:`sample_preferences`).

    >>> r, budget, s = RequestSampler(3, 1.0, "budget", 0.4, 0.0)(np.random.default_rng(0))
    >>> r.shape, 0.4 <= budget <= 1, abs(s - (1 - budget) / 0.6) < 1e-12
    ((3,), True, True)
    """

    n_tasks: int
    alpha: float
    mode: str
    min_budget: float = 0.0
    full_budget_share: float = 0.2

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, float | None, float]:
        r, c = sample_preferences(self.n_tasks, self.alpha, rng)
        if self.mode == "paper":
            return r, None, c
        if c < self.full_budget_share:
            return r, 1.0, 0.0
        budget = self.min_budget + (1.0 - self.min_budget) * float(rng.uniform())
        return r, budget, (1.0 - budget) / (1.0 - self.min_budget)
