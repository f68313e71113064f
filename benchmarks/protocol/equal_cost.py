"""Dynamic against static at equal cost: does the model built for a preference beat a fixed tree of no
more FLOPs, for that preference?

For every budget ``b`` of :data:`EQUAL_COST_BUDGETS` a static affinity tree
(:func:`affinity.branching_tree`) whose FLOPs fit ``b`` (heads included, as the budget guarantee is stated)
is trained jointly on the equal preference for the same steps as every static model of the run. For
each evaluation preference ``r`` both are scored on the preference-weighted normalised test loss
``sum_i r_i L_i / L_i(single task)`` (:func:`~benchmarks.protocol.summary.preference_losses`); the
controller wins a preference when its model's is lower. A controller that follows the preference should
win most preferences: the static tree serves one compromise to everyone.

>>> ours = {"budget=0.4": {"preference_loss_per_model": [1.0, 2.0, 3.0, 4.0]}}
>>> static = {"budget=0.4": {"preference_loss_per_model": [1.5, 1.5, 3.5, 4.5]}}
>>> compare_at_equal_cost(ours, static)["budget=0.4"]["win_fraction"]
0.75
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .requests import format_number

__all__ = ["EQUAL_COST_BUDGETS", "WIN_TARGET", "budget_setting", "compare_at_equal_cost"]

#: the budgets (fractions of the anchor's FLOPs, heads included) a static tree is trained for
EQUAL_COST_BUDGETS = (0.4, 0.6, 0.8)
#: the share of preferences the controller must win at each budget
WIN_TARGET = 0.75


def budget_setting(budget: float) -> str:
    """The setting name of a budget: ``0.4 -> "budget=0.4"``."""
    return f"budget={format_number(budget)}"


def compare_at_equal_cost(
    ours: Mapping[str, Mapping[str, Any]],
    static: Mapping[str, Mapping[str, Any]],
    budgets: Sequence[float] = EQUAL_COST_BUDGETS,
) -> dict[str, dict[str, Any]]:
    """Per budget setting, how many preferences the controller wins against the static tree of that budget.

    Args:
        ours, static: one seed's :func:`~benchmarks.protocol.summarise` results of the controller and of
            the static trees (settings ``"budget=<b>"``), built for the same preferences in the same order.
        budgets: the budgets compared; a budget missing from either side is left out.

    Returns:
        ``{setting: {"wins", "n", "win_fraction", "mean_ours", "mean_static"}}`` (``win_fraction`` in [0, 1]).

    Raises:
        ValueError: the two sides evaluated different numbers of preferences.
    """
    out: dict[str, dict[str, Any]] = {}
    for budget in budgets:
        name = budget_setting(budget)
        if name not in ours or name not in static:
            continue
        a = np.asarray(ours[name]["preference_loss_per_model"], dtype=np.float64)
        b = np.asarray(static[name]["preference_loss_per_model"], dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"{name}: {a.size} preferences against {b.size}; both must be built for the same preferences")
        wins = int((a < b).sum())
        out[name] = {"wins": wins, "n": int(a.size), "win_fraction": wins / a.size if a.size else None,
                     "mean_ours": float(a.mean()), "mean_static": float(b.mean())}
    return out
