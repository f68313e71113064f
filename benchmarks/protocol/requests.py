"""What every method is asked for: the evaluation preferences, the cost preferences, and the settings
(resource preference ``c`` or FLOP budget) a request is made at.

The seeds are fixed here, once, for the CPU benchmarks and the paper pipelines alike: every training seed
and every run meets the same preferences.

>>> evaluation_preferences(2).shape       # Pareto HyperNetworks' 25 rays
(25, 2)
>>> prefs = evaluation_preferences(3, 4)  # Dirichlet(1) draws, seed PREFERENCE_SEED
>>> prefs.shape, bool(abs(prefs.sum(axis=1) - 1).max() < 1e-12)
((4, 3), True)
>>> [s.name for s in cs_settings((0.0, 1.0))]
['c=0', 'c=1']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import dymu
from dymu.metrics import dirichlet_preferences, pareto_rays

__all__ = [
    "PREFERENCE_SEED",
    "COST_SEED",
    "N_RAYS",
    "N_DIRICHLET",
    "N_COST_PREFERENCES",
    "EVAL_CS",
    "EVAL_BUDGETS",
    "COST_CURVE_CS",
    "HEADLINE_SETTING",
    "Setting",
    "STATIC",
    "format_number",
    "evaluation_preferences",
    "cost_preferences",
    "controller_of",
    "cs_settings",
    "settings_for",
]

#: seed of the Dirichlet(1) evaluation preferences (more than two tasks)
PREFERENCE_SEED = 2022
#: seed of the Dirichlet(1) preferences the mean cost is taken over
COST_SEED = 1000
#: two tasks: Pareto HyperNetworks' rays
N_RAYS = 25
#: more tasks: Dirichlet(1) preferences
N_DIRICHLET = 20
#: preferences the controller's mean cost is averaged over
N_COST_PREFERENCES = 1000
#: resource preferences every dynamic method is evaluated at (the paper: c in {0, 1})
EVAL_CS = (0.0, 1.0)
#: FLOP budgets (fractions of the anchor's FLOPs, heads included); "min" is the cheapest tree's
EVAL_BUDGETS: tuple[float | str, ...] = ("min", 0.4, 0.5, 0.6, 0.8, 1.0)
#: resource preferences of the mean-cost curve (does the cost fall as c rises?)
COST_CURVE_CS = tuple(float(c) for c in np.linspace(0.0, 1.0, 11))
#: the setting whose numbers are a dynamic method's headline (its top-level fields)
HEADLINE_SETTING = "c=0"


def format_number(value: float) -> str:
    """A setting's number as it appears in its name: ``0.0 -> "0"``, ``0.5 -> "0.5"``."""
    return f"{float(value):g}"


def evaluation_preferences(n_tasks: int, n: int | None = None, seed: int = PREFERENCE_SEED) -> np.ndarray:
    """The evaluation preferences ``[P, N]``: PHN's rays for two tasks, Dirichlet(1) draws otherwise.

    Args:
        n_tasks: N.
        n: how many (default 25 rays for two tasks, 20 draws otherwise).
        seed: the Dirichlet draws' seed (unused for two tasks).

    Raises:
        ValueError: fewer than two tasks.
    """
    if n_tasks < 2:
        raise ValueError(f"a multi-task benchmark needs at least 2 tasks, got {n_tasks}")
    if n_tasks == 2:
        return pareto_rays(N_RAYS if n is None else n)
    return dirichlet_preferences(N_DIRICHLET if n is None else n, n_tasks, alpha=1.0, seed=seed)


def cost_preferences(n_tasks: int, n: int = N_COST_PREFERENCES, seed: int = COST_SEED) -> np.ndarray:
    """``[n, N]`` Dirichlet(1) preferences the mean cost of a planned method is taken over."""
    return dirichlet_preferences(n, n_tasks, alpha=1.0, seed=seed)


@dataclass(frozen=True)
class Setting:
    """One request kind: a resource preference ``c``, a FLOP ``budget`` (fraction of the anchor's), or
    neither (:data:`STATIC`: a method of fixed cost)."""

    name: str
    c: float | None = None
    budget: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "c": self.c, "budget": self.budget}


STATIC = Setting("static")


def cs_settings(cs: Sequence[float] = EVAL_CS) -> list[Setting]:
    """One setting per resource preference, named ``"c=<c>"``."""
    return [Setting(f"c={format_number(c)}", c=float(c)) for c in cs]


def controller_of(source: Any) -> dymu.Controller | None:
    """The trained :class:`dymu.Controller` behind ``source``: a controller itself, or a method with a
    ``controller`` attribute (the controller and its variants); None otherwise."""
    if isinstance(source, dymu.Controller):
        return source
    ctrl = getattr(source, "controller", None)
    return ctrl if isinstance(ctrl, dymu.Controller) else None


def settings_for(
    method: Any,
    *,
    budgets: Sequence[float | str] = EVAL_BUDGETS,
    cs: Sequence[float] = EVAL_CS,
    min_budget: float | None = None,
) -> tuple[list[Setting], list[dict[str, Any]]]:
    """The settings a method (a :class:`benchmarks.methods.Method`) is evaluated at, and those skipped
    (with the reason).

    A dynamic method gets ``c`` in ``cs`` and every budget in ``budgets`` (``"min"`` is the method's
    minimum budget: its controller's, or ``min_budget``); a budget below the minimum is skipped. A method
    with a ``budget_settings`` attribute (one fixed model per budget) gets exactly those budgets. A static
    method gets :data:`STATIC` only.

    Raises:
        ValueError: a dynamic method with budgets but no known minimum budget.
    """
    own = getattr(method, "budget_settings", None)
    if own is not None:
        # a method of one fixed model per budget (the static trees at equal cost) is asked at those budgets only
        return [Setting(f"budget={format_number(b)}", budget=float(b)) for b in own], []
    if not method.dynamic_cost:
        return [STATIC], []
    settings = cs_settings(cs)
    skipped: list[dict[str, Any]] = []
    if budgets:
        ctrl = controller_of(method)
        lowest = ctrl.min_budget if ctrl is not None else min_budget
        if lowest is None:
            raise ValueError(f"method {method.name!r}: budgets need its minimum budget (no controller found; pass min_budget)")
        for b in budgets:
            if b == "min":
                settings.append(Setting("budget=min", budget=float(lowest)))
                continue
            b = float(b)
            if b < lowest - 1e-12:
                skipped.append({
                    "name": f"budget={format_number(b)}",
                    "reason": f"below the minimum budget {lowest:.4f} (one stream plus the heads): no tree meets it",
                })
                continue
            settings.append(Setting(f"budget={format_number(b)}", budget=b))
    return settings, skipped
