"""Cost over preferences: the mean FLOPs and parameters of the trees a controller plans, without building them.

The CPU benchmarks and the paper pipelines both report it (``cost`` in their results): one function,
:func:`planned_cost`, whatever the settings asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .requests import COST_CURVE_CS, Setting, controller_of

__all__ = ["planned_cost", "COST_BUDGETS", "COST_BAND"]

#: budgets whose planned mean cost over the cost preferences is checked against the band below
COST_BUDGETS = (0.3, 0.5, 0.7, 0.9)
#: the mean planned FLOPs at budget ``b`` must lie in ``[COST_BAND * b, b]`` of the anchor's (the budget is
#: a guarantee from above; a budget far from used wastes what the user offered)
COST_BAND = 0.8


def planned_cost(
    source: Any,
    settings: Sequence[Setting],
    preferences: np.ndarray,
    *,
    curve_cs: Sequence[float] = COST_CURVE_CS,
    curve_budgets: Sequence[float] = COST_BUDGETS,
) -> dict[str, Any] | None:
    """Mean FLOPs and parameters of the trees a controller picks for ``preferences`` ``[K, N]``.

    Args:
        source: a :class:`dymu.Controller`, or a method holding one (``method.controller``).
        settings: the requests (``c`` or ``budget``) to cost.
        preferences: ``[K, N]`` the preferences the mean is taken over.
        curve_cs: the resource preferences of the cost curve (empty: no curve).
        curve_budgets: the budgets of the budget curve (those below the controller's minimum are listed
            in ``"skipped"``).

    Uses the controller's :meth:`~dymu.Controller.plan` (no module is built). Returns None for a source
    without a controller. Result: ``{"n_preferences", "anchor_flops", "anchor_params", "min_flops",
    "settings": {name: {"mean_flops", "params", "flops_fraction", "params_fraction", "shrunk_fraction"}},
    "curve": {"c": [...], "mean_flops": [...]}, "budget_curve": {"budget": [...], "flops_fraction": [...],
    "fallback_fraction": [...], "skipped": [...]}}``: does the mean cost follow the budget, and how often
    did the planner have to merge after the hypernet.
    """
    ctrl = controller_of(source)
    if ctrl is None:
        return None
    table = ctrl.cost_table
    out: dict[str, Any] = {
        "n_preferences": int(len(preferences)),
        "anchor_flops": int(table.anchor_flops),
        "anchor_params": int(table.anchor_params),
        "min_flops": int(table.min_flops),
        "settings": {},
    }
    for setting in settings:
        plans = [ctrl.plan(p, setting.budget, c=setting.c) for p in preferences]
        flops = float(np.mean([p.flops for p in plans]))
        params = float(np.mean([p.params for p in plans]))
        out["settings"][setting.name] = {
            "mean_flops": flops,
            "params": params,
            "flops_fraction": flops / table.anchor_flops,
            "params_fraction": params / table.anchor_params,
            "shrunk_fraction": float(np.mean([p.shrunk for p in plans])),
        }
    curve = [float(np.mean([ctrl.plan(p, None, c=float(c)).flops for p in preferences])) for c in curve_cs]
    out["curve"] = {"c": [float(c) for c in curve_cs], "mean_flops": curve}
    reachable = [float(b) for b in curve_budgets if b * table.anchor_flops >= table.min_flops]
    fractions, fallbacks = [], []
    for budget in reachable:
        plans = [ctrl.plan(p, budget) for p in preferences]
        fractions.append(float(np.mean([p.flops for p in plans])) / table.anchor_flops)
        fallbacks.append(float(np.mean([p.fallback for p in plans])))
    out["budget_curve"] = {"budget": reachable, "flops_fraction": fractions, "fallback_fraction": fallbacks,
                           "skipped": [float(b) for b in curve_budgets if float(b) not in reachable]}
    return out
