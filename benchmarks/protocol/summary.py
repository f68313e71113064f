"""The protocol's numbers of one method and seed, per setting, and their aggregation over seeds.

Per setting (:func:`summarise`, keys :data:`METRICS`), for the CPU benchmarks and the paper pipelines alike:

``hv`` / ``hv_ref``
    hypervolume of the models' test losses in the run's :class:`~benchmarks.protocol.LossSpace`, and the
    reference point it was taken against (in the same units).
``uniformity``
    EPO's mean uniformity (:func:`dymu.metrics.uniformity`) of the losses as the loss space shows them.
``controllability`` / ``controllability_loss``
    mean over tasks of the Spearman correlation between ``r_i`` and task ``i``'s primary metric (or its
    negated test loss) over the preferences; ``None`` where undefined (a model that ignores the preference).
``delta_mtl`` / ``delta_mtl_per_model``
    Delta_MTL (percent, primary metrics, :func:`dymu.metrics.delta_mtl`) of each model against the
    single-task test metrics of the same run and seed, and its mean; tasks whose baseline is 0 are left out.
``mean_flops`` / ``params`` (and their ``_fraction`` of the anchor's)
    the planned mean over the cost preferences where a :func:`~benchmarks.protocol.planned_cost` is given,
    else the mean over the built models (always kept as ``mean_flops_eval`` / ``params_eval``).
``controllability_per_task``
    ``{task: Spearman correlation}`` (``None`` where undefined): the mean hides a task the preference does
    not reach.
``preference_loss_per_model``
    per model, the preference-weighted normalised loss ``sum_i r_i L_i / L_i(single task)`` (lower is
    better; 1 for the single-task streams): what a user who states ``r`` pays, on one scale for every
    task set; :mod:`~benchmarks.protocol.equal_cost` compares methods on it.
``distinct_trees``, ``fallback_fraction``
    how many different trees the preferences got (None without trees), and the share of models whose tree
    the planner merged after the hypernet (``info["shrunk"]``; None where unknown).
``mean_nodes``, ``n_models``, ``mean_loss``, ``mean_primary``
    tree size (None without trees), model count, per-task means.

>>> import torch
>>> import dymu
>>> import torch.nn.functional as F
>>> from benchmarks.protocol import LossSpace, ModelRecord
>>> tasks = [dymu.Task(n, head=lambda shape: torch.nn.Identity(), loss=F.mse_loss) for n in ("a", "b")]
>>> records = [ModelRecord("c=0", [0.75, 0.25], [1.0, 3.0], [1.0, 3.0], {}, 100, 10),
...            ModelRecord("c=0", [0.25, 0.75], [3.0, 1.0], [3.0, 1.0], {}, 100, 10)]
>>> space = LossSpace((4.0, 4.0), (2.0, 2.0), False, "example")
>>> single = {"a": {"loss": 2.0}, "b": {"loss": 2.0}}
>>> out = summarise(records, tasks, space, single)["c=0"]
>>> out["hv"], out["hv_ref"], out["delta_mtl"]     # two boxes of 3 x 1 overlapping in 1 x 1
(5.0, [4.0, 4.0], 0.0)
>>> aggregate([{"hv": 1.0}, {"hv": 3.0}])["hv"]["mean"]
2.0
>>> control = control_of(tasks, records)   # the preferred task has the lower loss (the primary metric here)
>>> round(control["controllability"], 6), control["distinct_trees"]   # no "tree" in the records' info: 0 known
(1.0, 0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dymu.metrics import controllability, controllability_per_task, delta_mtl, uniformity
from dymu.results import finite_or_none
from dymu.tasks import Task

from .loss_space import LossSpace, hv_of
from .records import ModelRecord

__all__ = ["METRICS", "summarise", "aggregate", "preference_losses", "controllability_scores", "control_of", "control_text"]

#: the per-setting numbers of :func:`summarise` (besides the per-task ``mean_loss`` / ``mean_primary``)
METRICS = (
    "hv",
    "hv_ref",
    "uniformity",
    "controllability",
    "controllability_loss",
    "controllability_per_task",
    "delta_mtl",
    "delta_mtl_per_model",
    "mean_flops",
    "params",
    "flops_fraction",
    "params_fraction",
    "mean_flops_eval",
    "params_eval",
    "mean_nodes",
    "distinct_trees",
    "fallback_fraction",
    "preference_loss_per_model",
    "n_models",
)


def controllability_scores(tasks: Sequence[Task], prefs: np.ndarray, primary: np.ndarray, losses: np.ndarray) -> tuple[float, float, list[float]]:
    """Spearman controllability of ``[P, N]`` primary metrics (mean and ``[N]`` per task) and of the negated
    losses (NaN when undefined)."""
    names = [t.name for t in tasks]
    if len(prefs) < 2:
        return float("nan"), float("nan"), [float("nan")] * len(tasks)
    directions = [t.higher_is_better for t in tasks]
    with warnings.catch_warnings():
        # a method whose model ignores the preference has constant metrics: controllability is undefined
        warnings.simplefilter("ignore", RuntimeWarning)
        by_metric = controllability(prefs, primary, directions, task_names=names)
        by_loss = controllability(prefs, losses, False, task_names=names)
        per_task = controllability_per_task(prefs, primary, directions, task_names=names)
    return by_metric, by_loss, [float(v) for v in per_task]


def control_of(tasks: Sequence[Task], rows: Sequence[ModelRecord]) -> dict[str, Any]:
    """How the models of ``rows`` (one setting, one record per preference) follow the preference:
    ``{"controllability": mean Spearman of the primary metrics (None when undefined: the models ignore the
    preference), "per_task": [N] (None where undefined), "distinct_trees"}``."""
    mean, _, per_task = controllability_scores(tasks, np.array([r.preference for r in rows]),
                                               np.array([r.primary for r in rows]), np.array([r.losses for r in rows]))
    return {"controllability": float(mean) if np.isfinite(mean) else None,
            "per_task": [float(v) if np.isfinite(v) else None for v in per_task],
            "distinct_trees": _distinct_trees(rows) or 0}


def control_text(value: float | None) -> str:
    """A controllability of :func:`control_of` as printed: three decimals, or ``undefined`` for None."""
    return "undefined" if value is None else f"{value:.3f}"


def preference_losses(prefs: np.ndarray, losses: np.ndarray, single_task_losses: Sequence[float]) -> np.ndarray:
    """``[P]`` the preference-weighted normalised loss ``sum_i r_i L_i / L_i(single task)`` of ``[P, N]`` losses.

    >>> preference_losses(np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([[2.0, 1.0], [2.0, 9.0]]), [1.0, 1.0]).tolist()
    [1.5, 2.0]
    """
    base = np.asarray(single_task_losses, dtype=np.float64)
    if base.shape != (losses.shape[1],) or not (base > 0).all():
        raise ValueError(f"single-task losses must be {losses.shape[1]} positive numbers, got {base.tolist()}")
    return (np.asarray(prefs, dtype=np.float64) * np.asarray(losses, dtype=np.float64) / base).sum(axis=1)


def _distinct_trees(rows: Sequence[ModelRecord]) -> int | None:
    trees = [r.info.get("tree") for r in rows]
    if any(t is None for t in trees):
        return None
    return len({tuple(tuple(layer) for layer in t) for t in trees})


def _fallback_fraction(rows: Sequence[ModelRecord]) -> float | None:
    flags = [r.info.get("shrunk") for r in rows]
    return None if any(f is None for f in flags) else float(np.mean([bool(f) for f in flags]))


def _deltas(tasks: Sequence[Task], primary: np.ndarray, single_task: Mapping[str, Mapping[str, float]]) -> list[float]:
    """Delta_MTL of every row of ``[P, N]`` primary metrics; tasks with a zero baseline are left out."""
    st = {t.name: float(single_task[t.name][t.primary]) for t in tasks}
    usable = [k for k, t in enumerate(tasks) if st[t.name] != 0]  # a zero baseline has no relative change
    if not usable:
        return [float("nan")] * len(primary)
    names = [tasks[k].name for k in usable]
    directions = {tasks[k].name: tasks[k].higher_is_better for k in usable}
    return [delta_mtl({n: row[k] for n, k in zip(names, usable)}, {n: st[n] for n in names}, directions) for row in primary]


def _hv_subset(space: LossSpace, prefs: np.ndarray, losses: np.ndarray, subset: Sequence[Sequence[float]]) -> float | None:
    wanted = {tuple(np.round(np.asarray(p, dtype=np.float64), 9)) for p in subset}
    keep = [i for i, p in enumerate(prefs) if tuple(np.round(p, 9)) in wanted]
    return hv_of(space, losses[keep]) if keep else None


def _fraction(value: float, whole: float | None) -> float | None:
    return value / whole if whole else None


def summarise(
    records: Sequence[ModelRecord],
    tasks: Sequence[Task],
    space: LossSpace,
    single_task: Mapping[str, Mapping[str, float]],
    cost: Mapping[str, Any] | None = None,
    *,
    subset: Sequence[Sequence[float]] | None = None,
    anchor: tuple[float, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """The protocol's numbers of one method and seed, per setting (see the module docstring).

    Args:
        records: the method's :class:`ModelRecord` s (any settings).
        tasks: the tasks (order of the loss columns).
        space: the loss space (reference point, normalisation).
        single_task: ``{task: {"loss": ..., primary: ...}}`` the single-task test metrics of the run.
        cost: :func:`~benchmarks.protocol.planned_cost`'s result, whose per-setting means become
            ``mean_flops`` / ``params``; without it those are the means over the built models.
        subset: preferences; when given, ``hv_subset`` is the hypervolume of the models built for just
            these preferences (to compare with a method evaluated on a subset).
        anchor: the anchor's (FLOPs, parameters) the fractions are of (default: ``cost``'s; without
            either the fractions are None).

    Returns:
        ``{setting: {metric: value}}`` with the keys of :data:`METRICS` (``None`` where undefined) plus
        ``mean_loss`` / ``mean_primary`` per task (and ``hv_subset`` with ``subset``).
    """
    names = [t.name for t in tasks]
    st_losses = [float(single_task[n]["loss"]) for n in names]
    if anchor is None and cost is not None and "anchor_flops" in cost:
        anchor = (cost["anchor_flops"], cost["anchor_params"])
    out: dict[str, dict[str, Any]] = {}
    for setting in dict.fromkeys(r.setting for r in records):
        rows = [r for r in records if r.setting == setting]
        prefs = np.array([r.preference for r in rows])
        losses = np.array([r.losses for r in rows])
        primary = np.array([r.primary for r in rows])
        ctrl_metric, ctrl_loss, ctrl_per_task = controllability_scores(tasks, prefs, primary, losses)
        deltas = _deltas(tasks, primary, single_task)
        flops_eval = float(np.mean([r.flops for r in rows]))
        params_eval = float(np.mean([r.params for r in rows]))
        planned = (cost or {}).get("settings", {}).get(setting)
        mean_flops = planned["mean_flops"] if planned else flops_eval
        params = planned["params"] if planned else params_eval
        nodes = [r.n_nodes for r in rows]
        summary: dict[str, Any] = {
            "hv": hv_of(space, losses),
            "hv_ref": list(space.reference),
            "uniformity": uniformity(space.uniformity_losses(losses), prefs),
            "controllability": finite_or_none(ctrl_metric),
            "controllability_loss": finite_or_none(ctrl_loss),
            "controllability_per_task": {n: finite_or_none(v) for n, v in zip(names, ctrl_per_task)},
            "delta_mtl": finite_or_none(float(np.mean(deltas))),
            "delta_mtl_per_model": [finite_or_none(d) for d in deltas],
            "mean_flops": mean_flops,
            "params": params,
            "flops_fraction": _fraction(mean_flops, anchor[0] if anchor else None),
            "params_fraction": _fraction(params, anchor[1] if anchor else None),
            "mean_flops_eval": flops_eval,
            "params_eval": params_eval,
            "mean_nodes": None if None in nodes else float(np.mean(nodes)),
            "distinct_trees": _distinct_trees(rows),
            "fallback_fraction": _fallback_fraction(rows),
            "preference_loss_per_model": preference_losses(prefs, losses, st_losses).tolist(),
            "n_models": len(rows),
            "mean_loss": {n: float(losses[:, k].mean()) for k, n in enumerate(names)},
            "mean_primary": {n: float(primary[:, k].mean()) for k, n in enumerate(names)},
        }
        if subset is not None:
            summary["hv_subset"] = _hv_subset(space, prefs, losses, subset)
        out[setting] = summary
    return out


def aggregate(per_seed: Sequence[Any]) -> Any:
    """Mean and standard deviation over seeds of every number in equally shaped nested dicts.

    Numbers become ``{"mean": ..., "std": ..., "n": seeds with a value}``: the mean and sample standard
    deviation over the seeds where the value is defined (not None or NaN); ``std`` is None with fewer
    than two such seeds and both are None with none. Dicts are aggregated key by key (keys of the first
    seed); anything else (strings, lists) is taken from the first seed.

    Raises:
        ValueError: no seed.
    """
    if not per_seed:
        raise ValueError("aggregate needs at least one seed")
    first = per_seed[0]
    if isinstance(first, Mapping):
        return {k: aggregate([s.get(k) if isinstance(s, Mapping) else None for s in per_seed]) for k in first}
    if isinstance(first, bool) or not (first is None or isinstance(first, (int, float, np.integer, np.floating))):
        return first
    values = [float(v) for v in per_seed if v is not None and math.isfinite(float(v))]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    return {"mean": float(np.mean(values)), "std": std, "n": len(values)}
