"""What the plots show of a trained controller (:mod:`benchmarks.plots` draws it): the trees it plans for
contrasting preferences, and its planned cost over the simplex.

>>> [label for label, _ in contrasting_preferences(["top_left", "bottom_right"])]
['top_left-0.9', 'equal', 'bottom_right-0.9']
>>> contrasting_preferences(["a", "b", "c"])[0]
('a-0.75', [0.75, 0.125, 0.125])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import dymu
from dymu.anchor import tree_losses
from dymu.solo import with_solo

from .config import RunConfig
from .protocol import EVAL_CS, cost_preferences, format_number

__all__ = ["contrasting_preferences", "controller_views", "supernet_effect"]


def contrasting_preferences(names: Sequence[str]) -> list[tuple[str, list[float]]]:
    """A few preferences that should give different trees: the centre and near-corners."""
    n = len(names)
    if n == 2:
        return [(f"{names[0]}-0.9", [0.9, 0.1]), ("equal", [0.5, 0.5]), (f"{names[1]}-0.9", [0.1, 0.9])]
    heavy = lambda k: [0.75 if i == k else 0.25 / (n - 1) for i in range(n)]  # noqa: E731
    return [(f"{names[0]}-0.75", heavy(0)), ("equal", [1.0 / n] * n), (f"{names[-1]}-0.75", heavy(n - 1))]


def controller_views(ctrl: dymu.Controller, config: RunConfig) -> dict[str, Any]:
    """What the plots show of one controller: trees for contrasting preferences, and cost over the simplex."""
    names = ctrl.task_names
    n = len(names)
    table = ctrl.cost_table
    trees = []
    for label, pref in contrasting_preferences(names):
        for c in EVAL_CS:
            plan = ctrl.plan(pref, c=c)
            trees.append({"label": label, "preference": pref, "c": c, "tree": plan.tree.to_dict(), "flops": plan.flops,
                          "flops_fraction": plan.flops / table.anchor_flops})
    views: dict[str, Any] = {
        "trees": trees,
        "block_flops": list(table.block_flops),
        "anchor_flops": table.anchor_flops,
        "min_flops": table.min_flops,
    }
    if n == 2:
        r1 = np.linspace(0.0, 1.0, 41)
        views["cost_map"] = {
            "r1": r1.tolist(),
            **{f"c={format_number(c)}": [ctrl.plan([float(a), float(1 - a)], c=c).flops for a in r1] for c in EVAL_CS},
        }
    else:
        corners = [[1.0 if i == k else 0.0 for i in range(n)] for k in range(n)]
        prefs = cost_preferences(n, min(config.cost_preferences, 500))
        entropy = (-(prefs * np.log(np.clip(prefs, 1e-12, 1))).sum(axis=1) / np.log(n)).tolist()
        views["cost_corners"] = {
            "labels": list(names) + ["centre"],
            **{f"c={format_number(c)}": [ctrl.plan(p, c=c).flops for p in corners + [[1.0 / n] * n]] for c in EVAL_CS},
        }
        views["cost_scatter"] = {
            "entropy": entropy,
            **{f"c={format_number(c)}": [ctrl.plan(p, c=c).flops for p in prefs] for c in EVAL_CS},
        }
    return views


def supernet_effect(ctrl: dymu.Controller, teacher: torch.nn.Module, test, device: torch.device) -> dict[str, Any] | None:
    """Per-task test loss of the anchor tree and of the cheapest tree (the uniform preference's at the
    minimum budget), built from the stage-0 streams (``teacher``: before the supernet stage) and from the
    controller's anchor (after it, as :meth:`dymu.Controller.build_model` runs the tree: solo streams where a task is
    alone on its own, :mod:`dymu.solo`): ``{tree: {"assignment", "before": [N], "after": [N]}}``, with
    ``"after_supernet_alone"`` when the controller has solo streams. None when the controller has no supernet
    stage. No adaptation: this is what the stage changed."""
    record = ctrl.stages.get("supernet") or {}
    trees = record.get("trees")
    if not trees:
        return None
    out: dict[str, Any] = {}
    for name, tree in trees.items():
        assignment = tuple(tuple(row) for row in tree["assignment"])
        losses = {}
        # "after" as build_model serves the tree: a task alone on its own stream runs its solo stream (dymu.solo)
        runs = [("before", teacher), ("after", with_solo(ctrl.anchor, ctrl.solo, assignment))]
        if ctrl.solo is not None:
            runs.append(("after_supernet_alone", ctrl.anchor))
        for when, anchor in runs:
            anchor.eval()
            losses[when] = tree_losses(anchor, ctrl.tasks, assignment, test, device).tolist()
        out[name] = {"assignment": tree["assignment"], **losses}
    out["kept_stage0"] = bool(record.get("kept_stage0"))
    return out
