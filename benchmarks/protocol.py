"""The evaluation protocol of the CPU benchmarks (``multifashion``, ``fashion_digits``), in one module.

What is measured, for every method (a :class:`benchmarks.methods.Method`) and every seed:

Preferences
    Two tasks: the 25 rays Pareto HyperNetworks evaluates (:func:`dymu.metrics.pareto_rays`: angles evenly
    spaced from 0.1 to pi/2 - 0.1, ``r = (cos, sin)`` normalised to sum 1). More tasks: 20 preferences from
    Dirichlet(1), uniform on the simplex, drawn with the fixed seed :data:`PREFERENCE_SEED` (the same
    preferences for every method and every seed). See :func:`evaluation_preferences`.

Settings
    A method whose cost can change (``Method.dynamic_cost``: the controller and its variants) is asked for
    a model at ``c = 0`` and ``c = 1`` (resource preference, no budget enforced) and at the FLOP budgets
    ``{minimum, 0.5, 1}`` (fractions of the anchor's FLOPs; "minimum" is the cheapest tree: one stream plus
    the heads). A budget below the minimum cannot be met by any tree: that setting is skipped and the skip
    is recorded (on ``multifashion`` the minimum is 0.52, so 0.5 is skipped there). A method with one
    fixed cost is evaluated once per preference (:data:`STATIC`). See :func:`settings_for`.

Test data and model selection
    Every method selects its models on validation data only (inside ``Method.fit``). The test split is
    read once per distinct built model (:func:`evaluate_method`): models that are the same network (the
    controller's tree at ``budget = 1`` is its ``c = 0`` tree; a static method returns one model for
    every preference) are evaluated once and their result reused.

Loss space and hypervolume (:func:`loss_space`)
    The hypervolume is taken over raw test losses. ``multifashion``: reference point (2, 2), as Pareto
    HyperNetworks reports (close to the loss of guessing among 10 classes, ln 10 = 2.30). Other benchmarks
    mix losses of different kinds and scales (cross-entropy, per-pixel cross-entropy, squared error), so
    [choice] the reference point is every task's loss of the best predictor that ignores its input
    (:func:`input_blind_losses`: class frequencies, per pixel for dense targets; the mean target), fitted to
    and measured on the training split: the same for every method and seed, and a model contributes
    wherever it beats chance on every task. (A fixed multiple of the single-task losses, 2x, left every
    controller model outside the reference box on ``fashion_digits`` in a trial run: a task with a tiny
    preference weight loses more than twice its single-task loss, and one such task out of six is enough.)
    Uniformity sees the raw losses on ``multifashion`` and the losses divided by the single-task test losses
    of the same run and seed elsewhere, so that loss scales (a squared error of 0.02 beside a cross-entropy
    of 0.5) do not decide it. The reference point is stated beside every number.

Metrics per setting (:func:`summarise`)
    ``hv``: hypervolume of the loss vectors of the models built for the evaluation preferences.
    ``uniformity``: EPO's mean uniformity (:func:`dymu.metrics.uniformity`) of those losses (see above).
    ``controllability``: mean over tasks of the Spearman correlation between ``r_i`` and task ``i``'s
    primary metric over the preferences (``controllability_loss``: the same with the negated test
    loss); ``None`` where undefined, e.g. for a method whose model does not change with the preference.
    ``delta_mtl``: the Delta_MTL (percent, primary metrics, :func:`dymu.metrics.delta_mtl`) of each
    built model against the single-task (anchor stream) test metrics of the same run and seed, averaged
    over the evaluation preferences (0 for the single-task baseline by definition).
    ``mean_flops``, ``params``: FLOPs (per image, ``FlopCounterMode``) and parameters of the models
    actually run. For a method that plans its trees (the controller) the mean is over
    :data:`N_COST_PREFERENCES` (1000) Dirichlet(1) preferences (seed :data:`COST_SEED`) from the plan,
    without building the modules; for a method of fixed cost it is the mean over its built models.
    ``size``: parameters the method stores to serve every preference (:meth:`Method.size`).
    ``train_seconds``: wall time of ``Method.fit``.

Seeds (:func:`aggregate`)
    Every number above is computed per seed, then reported as its mean and standard deviation over
    seeds (sample standard deviation; ``None`` with a single seed).

Targets (:func:`check_targets`)
    The issue's targets, each with the numbers it was decided on: the controller's hypervolume and
    uniformity above PHN's and PHN-BN's (means over seeds, at ``c = 0`` and at ``c = 1``), its mean FLOPs
    falling as ``c`` rises, and its total training time below that of the per-preference hard-sharing
    models.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import dymu
from dymu.results import finite_or_none
from dymu.evaluation import evaluate_model
from dymu.metrics import (
    controllability,
    count_flops,
    count_params,
    delta_mtl,
    dirichlet_preferences,
    hypervolume,
    pareto_rays,
    uniformity,
)
from dymu.tasks import Task

from .methods import Method

__all__ = [
    "PREFERENCE_SEED",
    "COST_SEED",
    "N_RAYS",
    "N_DIRICHLET",
    "N_COST_PREFERENCES",
    "HV_REFERENCE",
    "INPUT_BLIND_RULE",
    "EVAL_CS",
    "EVAL_BUDGETS",
    "COST_CURVE_CS",
    "HEADLINE_SETTING",
    "METRICS",
    "Setting",
    "STATIC",
    "LossSpace",
    "ModelRecord",
    "evaluation_preferences",
    "cost_preferences",
    "settings_for",
    "controller_of",
    "loss_space",
    "input_blind_losses",
    "evaluate_method",
    "planned_cost",
    "summarise",
    "aggregate",
    "check_targets",
    "describe",
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
#: benchmarks with an absolute reference point in raw loss space
HV_REFERENCE: dict[str, tuple[float, ...]] = {"multifashion": (2.0, 2.0)}
#: resource preferences every dynamic method is evaluated at
EVAL_CS = (0.0, 1.0)
#: FLOP budgets (fractions of the anchor's FLOPs); "min" is the cheapest tree's
EVAL_BUDGETS: tuple[float | str, ...] = ("min", 0.5, 1.0)
#: resource preferences of the mean-cost curve (does the cost fall as c rises?)
COST_CURVE_CS = tuple(float(c) for c in np.linspace(0.0, 1.0, 11))
#: the setting whose numbers are a dynamic method's headline (its top-level fields)
HEADLINE_SETTING = "c=0"
#: the per-setting scalar metrics
METRICS = (
    "hv",
    "uniformity",
    "controllability",
    "controllability_loss",
    "delta_mtl",
    "mean_flops",
    "params",
    "mean_flops_eval",
    "params_eval",
    "n_models",
)


# ----------------------------------------------------------------------------------- preferences
def evaluation_preferences(n_tasks: int, n: int | None = None, seed: int = PREFERENCE_SEED) -> np.ndarray:
    """The evaluation preferences ``[P, N]``: PHN's rays for two tasks, Dirichlet(1) draws otherwise.

    Args:
        n_tasks: N.
        n: how many (default 25 rays for two tasks, 20 draws otherwise).
        seed: the Dirichlet draws' seed (unused for two tasks).
    """
    if n_tasks < 2:
        raise ValueError(f"a multi-task benchmark needs at least 2 tasks, got {n_tasks}")
    if n_tasks == 2:
        return pareto_rays(N_RAYS if n is None else n)
    return dirichlet_preferences(N_DIRICHLET if n is None else n, n_tasks, alpha=1.0, seed=seed)


def cost_preferences(n_tasks: int, n: int = N_COST_PREFERENCES, seed: int = COST_SEED) -> np.ndarray:
    """``[n, N]`` Dirichlet(1) preferences the mean cost of a planned method is taken over."""
    return dirichlet_preferences(n, n_tasks, alpha=1.0, seed=seed)


# -------------------------------------------------------------------------------------- settings
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


def controller_of(method: Method) -> dymu.Controller | None:
    """The trained :class:`dymu.Controller` behind a method (the controller and its variants), else None."""
    ctrl = getattr(method, "controller", None)
    return ctrl if isinstance(ctrl, dymu.Controller) else None


def settings_for(
    method: Method,
    *,
    budgets: Sequence[float | str] = EVAL_BUDGETS,
    cs: Sequence[float] = EVAL_CS,
    min_budget: float | None = None,
) -> tuple[list[Setting], list[dict[str, Any]]]:
    """The settings a method is evaluated at, and those skipped (with the reason).

    A dynamic method gets ``c`` in ``cs`` and every budget in ``budgets`` (``"min"`` is the method's
    minimum budget: its controller's, or ``min_budget``); a budget below the minimum is skipped. A static
    method gets :data:`STATIC` only.

    Raises:
        ValueError: a dynamic method with budgets but no known minimum budget.
    """
    if not method.dynamic_cost:
        return [STATIC], []
    settings = [Setting(f"c={_fmt(c)}", c=float(c)) for c in cs]
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
                    "name": f"budget={_fmt(b)}",
                    "reason": f"below the minimum budget {lowest:.4f} (one stream plus the heads): no tree meets it",
                })
                continue
            settings.append(Setting(f"budget={_fmt(b)}", budget=b))
    return settings, skipped


def _fmt(value: float) -> str:
    return f"{float(value):g}"


# ------------------------------------------------------------------------------------ loss space
@dataclass(frozen=True)
class LossSpace:
    """How test losses are compared: the hypervolume's reference point and the losses uniformity sees.

    Attributes:
        reference: the hypervolume reference point, in raw test-loss units (the hypervolume is always taken
            over raw test losses).
        single_task_loss: ``[N]`` the single-task test losses of the run and seed.
        normalise_uniformity: whether uniformity sees the losses divided by ``single_task_loss`` (so that loss
            kinds of different scales do not decide it) or the raw losses.
        rule: a sentence saying how the reference point was chosen.
    """

    reference: tuple[float, ...]
    single_task_loss: tuple[float, ...]
    normalise_uniformity: bool
    rule: str

    def uniformity_losses(self, losses: np.ndarray) -> np.ndarray:
        """``[P, N]`` raw test losses as uniformity sees them."""
        losses = np.asarray(losses, dtype=np.float64)
        return losses / np.asarray(self.single_task_loss) if self.normalise_uniformity else losses

    @property
    def units(self) -> str:
        return "test loss"

    def as_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "reference": list(self.reference),
            "rule": self.rule,
            "uniformity_losses": "test loss / single-task test loss" if self.normalise_uniformity else "test loss",
            "single_task_loss": list(self.single_task_loss),
        }


def loss_space(benchmark: str, single_task_loss: Sequence[float], input_blind_loss: Sequence[float] | None = None) -> LossSpace:
    """The hypervolume reference point and uniformity losses of ``benchmark`` (see the module docstring).

    ``multifashion``: (2, 2), raw losses. Elsewhere the reference point is ``input_blind_loss`` (see
    :func:`input_blind_losses`) and uniformity sees the losses divided by the single-task test losses.

    Raises:
        ValueError: a reference point of the wrong length or not finite and positive, a missing
            ``input_blind_loss``, or single-task losses that are not finite and positive where they divide.
    """
    st = tuple(float(v) for v in single_task_loss)
    if benchmark in HV_REFERENCE:
        ref = HV_REFERENCE[benchmark]
        if len(ref) != len(st):
            raise ValueError(f"{benchmark}: the reference point {ref} has {len(ref)} coordinates for {len(st)} tasks")
        return LossSpace(tuple(ref), st, False, f"fixed reference point {ref} in test-loss space (as Pareto HyperNetworks reports)")
    if input_blind_loss is None:
        raise ValueError(f"{benchmark}: its reference point is the input-blind predictors' losses; pass input_blind_loss")
    ref = tuple(float(v) for v in input_blind_loss)
    if len(ref) != len(st) or not all(math.isfinite(v) and v > 0 for v in ref):
        raise ValueError(f"{benchmark}: the input-blind losses {ref} must be {len(st)} finite numbers > 0")
    if not all(math.isfinite(v) and v > 0 for v in st):
        raise ValueError(f"{benchmark}: the single-task test losses {st} must be finite and > 0 to normalise by them")
    return LossSpace(ref, st, True, INPUT_BLIND_RULE)


INPUT_BLIND_RULE = (
    "reference point = every task's loss of the best predictor that ignores the input (class frequencies, per "
    "pixel for dense targets, under cross-entropy; the mean target under squared error), fitted to and measured "
    "on the training split: a model counts where it beats chance on every task. This is what the reference "
    "(2, 2) of the two 10-class cross-entropies of multifashion is close to (ln 10 = 2.30); a fixed multiple of "
    "the single-task losses (2x) left every controller model outside the box on the six mixed tasks of "
    "fashion_digits (a task with a tiny preference weight loses more than that)"
)


@torch.no_grad()
def input_blind_losses(tasks: Sequence[Task], data: Iterable) -> list[float]:
    """Per task, the loss on ``data`` of the best predictor that ignores its input, fitted to ``data``'s targets.

    Cross-entropy tasks (``F.cross_entropy``): the empirical class frequencies as predicted probabilities,
    per position for dense targets ``[B, H, W]``. Squared-error tasks (``F.mse_loss``): the mean target, per
    element. The loss is the task's own loss function applied to that constant prediction.

    Raises:
        ValueError: a task with another loss function, or ``data`` without batches.
    """
    import torch.nn.functional as F

    for task in tasks:
        if task.loss not in (F.cross_entropy, F.mse_loss):
            raise ValueError(f"task {task.name!r}: input-blind losses are defined for cross-entropy and squared error, "
                             f"not {getattr(task.loss, '__name__', task.loss)!r}")
    counts: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    for _, targets in data:
        for task in tasks:
            y = targets[task.name]
            if task.loss is F.cross_entropy:
                k = int(y.max()) + 1
                onehot = F.one_hot(y.long(), k).movedim(-1, 1).double().sum(0)  # [K, ...]
                old = counts.get(task.name)
                if old is not None and old.shape[0] < k:
                    old = torch.cat([old, old.new_zeros(k - old.shape[0], *old.shape[1:])])
                if old is not None and old.shape[0] > k:
                    onehot = torch.cat([onehot, onehot.new_zeros(old.shape[0] - k, *onehot.shape[1:])])
                counts[task.name] = onehot if old is None else old + onehot
            else:
                sums[task.name] = y.double().sum(0) + sums.get(task.name, 0)
        seen += int(next(iter(targets.values())).shape[0])
    if seen == 0:
        raise ValueError("input_blind_losses: the data yielded no batch")
    predictions = {}
    for task in tasks:
        if task.loss is F.cross_entropy:
            freq = counts[task.name] / counts[task.name].sum(0, keepdim=True)
            predictions[task.name] = freq.clamp_min(1e-12).log().float()
        else:
            predictions[task.name] = (sums[task.name] / seen).float()
    totals = {t.name: 0.0 for t in tasks}
    for _, targets in data:
        batch = int(next(iter(targets.values())).shape[0])
        for task in tasks:
            y = targets[task.name]
            pred = predictions[task.name].unsqueeze(0).expand(batch, *predictions[task.name].shape)
            if task.loss is F.cross_entropy and pred.shape[1] <= int(y.max()):
                raise ValueError(f"task {task.name!r}: a class appears in the second pass that the first did not see")
            totals[task.name] += float(task.loss(pred, y.long() if task.loss is F.cross_entropy else y)) * batch
    return [totals[t.name] / seen for t in tasks]


# ------------------------------------------------------------------------------------ evaluation
@dataclass
class ModelRecord:
    """One built model on the test split.

    Attributes:
        setting: the :class:`Setting` name it was built for.
        preference: ``[N]`` the task preference.
        losses: ``[N]`` its test loss per task (task order).
        primary: ``[N]`` its primary metric per task.
        metrics: ``{task: {metric: value}}`` everything measured.
        flops: FLOPs of one image through it; params: its parameter count.
        info: how it was built (the controller's ``c`` used, tree, whether shrunk), where known.
    """

    setting: str
    preference: list[float]
    losses: list[float]
    primary: list[float]
    metrics: dict[str, dict[str, float]]
    flops: int
    params: int
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting, "preference": self.preference, "losses": self.losses, "primary": self.primary,
            "flops": self.flops, "params": self.params, "info": self.info,
        }


def _model_key(model: nn.Module, preference: np.ndarray) -> tuple:
    """Models with equal keys are the same network. A controller's model is identified by its tree and, when
    the weight hypernet adapted it, by the preference and ``c`` the adaptation was computed for (without the
    weight hypernet a tree's network is the anchor's blocks whatever the request); any other model by its
    identity (a static method hands out one stored object)."""
    info = getattr(model, "info", None)
    if isinstance(info, Mapping) and "tree" in info and "c" in info and "weight_hypernet" in info:
        tree = info["tree"]
        assignment = tuple(tuple(row) for row in (tree["assignment"] if isinstance(tree, Mapping) else tree.assignment))
        if not info["weight_hypernet"]:
            return ("tree", assignment)
        return ("plan", tuple(np.round(preference, 12)), float(info["c"]), assignment)
    return ("object", id(model))


def _slim_info(model: nn.Module) -> dict[str, Any]:
    info = getattr(model, "info", None)
    if not isinstance(info, Mapping):
        return {}
    keep = {k: info[k] for k in ("c", "shrunk", "budget") if k in info}
    if "tree" in info:
        tree = info["tree"]
        keep["tree"] = tree["assignment"] if isinstance(tree, Mapping) else [list(r) for r in tree.assignment]
    return keep


def evaluate_method(
    method: Method,
    tasks: Sequence[Task],
    test: Iterable,
    preferences: np.ndarray,
    settings: Sequence[Setting],
    *,
    device: torch.device | str = "cpu",
    example: torch.Tensor,
    log: Callable[[str], None] | None = None,
) -> list[ModelRecord]:
    """Build ``method``'s model for every (setting, preference), and measure it on ``test``.

    The test data is read once per distinct model (see :func:`_model_key`); a model seen before reuses its
    measurements. ``example`` is one input ``[1, C, H, W]`` the FLOPs are counted on.

    Returns:
        one :class:`ModelRecord` per (setting, preference), settings outer, preferences inner.
    """
    device = torch.device(device)
    names = [t.name for t in tasks]
    seen: dict[tuple, tuple[nn.Module, dict, int, int]] = {}
    records: list[ModelRecord] = []
    total = len(settings) * len(preferences)
    start = time.time()
    evaluated = 0
    for s_index, setting in enumerate(settings):
        for p_index, pref in enumerate(np.asarray(preferences, dtype=np.float64)):
            model = method.model_for(pref, c=setting.c, budget=setting.budget)
            key = _model_key(model, pref)
            if key not in seen:
                model = model.to(device)
                metrics = evaluate_model(model, tasks, test, device)
                flops = count_flops(model, example.to(device))
                # the model is kept alive beside its key so that an object's id cannot be reused
                seen[key] = (model, metrics, flops, count_params(model))
                evaluated += 1
            _, metrics, flops, params = seen[key]
            records.append(ModelRecord(
                setting=setting.name,
                preference=[float(v) for v in pref],
                losses=[float(metrics[n]["loss"]) for n in names],
                primary=[float(metrics[t.name][t.primary]) for t in tasks],
                metrics={n: {k: float(v) for k, v in metrics[n].items()} for n in names},
                flops=int(flops),
                params=int(params),
                info=_slim_info(model),
            ))
            done = s_index * len(preferences) + p_index + 1
            if log is not None and (done == total or done % max(1, math.ceil(total / 4)) == 0):
                elapsed = time.time() - start
                eta = elapsed / done * (total - done)
                log(f"evaluated {done}/{total} requests ({evaluated} distinct models) in {elapsed:.0f} s, ETA {eta:.0f} s")
    return records


def planned_cost(
    method: Method,
    settings: Sequence[Setting],
    preferences: np.ndarray,
    *,
    curve_cs: Sequence[float] = COST_CURVE_CS,
) -> dict[str, Any] | None:
    """Mean FLOPs and parameters of the trees a planning method picks for ``preferences`` ``[K, N]``.

    Uses the controller's :meth:`~dymu.Controller.plan` (no module is built). Returns None for a method
    without a controller. Result: ``{"n_preferences", "settings": {name: {"mean_flops", "params",
    "flops_fraction"}}, "curve": {"c": [...], "mean_flops": [...]}, "anchor_flops", "anchor_params"}``.
    """
    ctrl = controller_of(method)
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
        out["settings"][setting.name] = {
            "mean_flops": flops,
            "params": float(np.mean([p.params for p in plans])),
            "flops_fraction": flops / table.anchor_flops,
            "shrunk_fraction": float(np.mean([p.shrunk for p in plans])),
        }
    curve = [float(np.mean([ctrl.plan(p, None, c=float(c)).flops for p in preferences])) for c in curve_cs]
    out["curve"] = {"c": [float(c) for c in curve_cs], "mean_flops": curve}
    return out


# -------------------------------------------------------------------------------------- summaries
def summarise(
    records: Sequence[ModelRecord],
    tasks: Sequence[Task],
    space: LossSpace,
    single_task: Mapping[str, Mapping[str, float]],
    cost: Mapping[str, Any] | None = None,
    *,
    subset: Sequence[Sequence[float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The protocol's numbers of one method and seed, per setting.

    Args:
        records: the method's :class:`ModelRecord` s (any settings).
        tasks: the tasks (order of the loss columns).
        space: the loss space (reference point, normalisation).
        single_task: ``{task: {"loss": ..., primary: ...}}`` the single-task test metrics of the run.
        cost: :func:`planned_cost`'s result, whose per-setting means become ``mean_flops`` / ``params``;
            without it those are the means over the built models (``mean_flops_eval`` / ``params_eval``).
        subset: preferences; when given, ``hv_subset`` is the hypervolume of the models built for just
            these preferences (to compare with a method evaluated on a subset).

    Returns:
        ``{setting: {metric: value}}`` with the keys of :data:`METRICS` (``None`` where undefined) plus
        ``mean_loss`` / ``mean_primary`` per task.
    """
    names = [t.name for t in tasks]
    directions = {t.name: t.higher_is_better for t in tasks}
    st_primary = {t.name: float(single_task[t.name][t.primary]) for t in tasks}
    usable = [n for n in names if st_primary[n] != 0]  # a zero baseline has no relative change
    out: dict[str, dict[str, Any]] = {}
    for setting in dict.fromkeys(r.setting for r in records):
        rows = [r for r in records if r.setting == setting]
        prefs = np.array([r.preference for r in rows])
        losses = np.array([r.losses for r in rows])
        primary = np.array([r.primary for r in rows])
        moved = space.uniformity_losses(losses)
        with warnings.catch_warnings():
            # a method whose model ignores the preference has constant metrics: controllability is undefined
            warnings.simplefilter("ignore", RuntimeWarning)
            if len(rows) >= 2:
                ctrl_metric = controllability(prefs, primary, [t.higher_is_better for t in tasks], task_names=names)
                ctrl_loss = controllability(prefs, losses, False, task_names=names)
            else:
                ctrl_metric = ctrl_loss = float("nan")
        deltas = [
            delta_mtl({n: row[k] for k, n in enumerate(names) if n in usable}, {n: st_primary[n] for n in usable},
                      {n: directions[n] for n in usable})
            for row in primary
        ] if usable else [float("nan")]
        flops_eval = float(np.mean([r.flops for r in rows]))
        params_eval = float(np.mean([r.params for r in rows]))
        planned = (cost or {}).get("settings", {}).get(setting)
        summary: dict[str, Any] = {
            "hv": hypervolume(losses, space.reference),
            "uniformity": uniformity(moved, prefs),
            "controllability": finite_or_none(ctrl_metric),
            "controllability_loss": finite_or_none(ctrl_loss),
            "delta_mtl": finite_or_none(float(np.mean(deltas))),
            "mean_flops": planned["mean_flops"] if planned else flops_eval,
            "params": planned["params"] if planned else params_eval,
            "mean_flops_eval": flops_eval,
            "params_eval": params_eval,
            "n_models": len(rows),
            "mean_loss": {n: float(losses[:, k].mean()) for k, n in enumerate(names)},
            "mean_primary": {n: float(primary[:, k].mean()) for k, n in enumerate(names)},
        }
        if subset is not None:
            wanted = {tuple(np.round(np.asarray(p, dtype=np.float64), 9)) for p in subset}
            keep = [i for i, p in enumerate(prefs) if tuple(np.round(p, 9)) in wanted]
            summary["hv_subset"] = hypervolume(losses[keep], space.reference) if keep else None
        out[setting] = summary
    return out


def aggregate(per_seed: Sequence[Any]) -> Any:
    """Mean and standard deviation over seeds of every number in equally shaped nested dicts.

    Numbers become ``{"mean": ..., "std": ..., "n": seeds with a value}``: the mean and sample standard
    deviation over the seeds where the value is defined (not None or NaN); ``std`` is None with fewer
    than two such seeds and both are None with none. Dicts are aggregated key by key (keys of the first
    seed); anything else (strings, lists) is taken from the first seed.
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


# ----------------------------------------------------------------------------------------- targets
def _mean(methods: Mapping[str, Any], name: str, setting: str, metric: str) -> float | None:
    try:
        return methods[name]["settings"][setting][metric]["mean"]
    except (KeyError, TypeError):
        return None


def _static_setting(methods: Mapping[str, Any], name: str) -> str:
    settings = methods.get(name, {}).get("settings", {})
    return STATIC.name if STATIC.name in settings else HEADLINE_SETTING


def _compare(target: str, ours: float | None, theirs: float | None, labels: tuple[str, str],
             extra: dict | None = None) -> dict[str, Any]:
    met = None if ours is None or theirs is None else bool(ours > theirs)
    entry = {"target": target, "met": met, labels[0]: ours, labels[1]: theirs}
    if met is None:
        entry["why_undecided"] = "a method or number is missing from this run"
    entry.update(extra or {})
    return entry


def check_targets(
    methods: Mapping[str, Any], *, controller: str = "dymu", hv_reference: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """The issue's targets, decided on the means over seeds of the aggregated ``methods``.

    ``methods[name]`` is a method's aggregated result: ``{"settings": {setting: {metric: {"mean", ...}}},
    "train_seconds": {"mean", ...}, "cost_curve": {"c": [...], "mean_flops": {"mean": [...]}}, ...}``;
    hard sharing may carry ``"train_seconds_all_preferences"`` (its time for every evaluation preference,
    extrapolated when it was trained on a subset). Each target is ``{"target": text, "met": True / False /
    None (undecided: a number is missing), and the numbers it was decided on}``.
    """
    targets: list[dict[str, Any]] = []
    ref = {"hv_ref": list(hv_reference)} if hv_reference is not None else {}
    for metric in ("hv", "uniformity"):
        for setting in EVAL_CS:
            s = f"c={_fmt(setting)}"
            for rival in ("phn", "phn_bn"):
                theirs = _mean(methods, rival, _static_setting(methods, rival), metric)
                targets.append(_compare(
                    f"{controller} {metric} at {s} > {rival} {metric} (mean over seeds)",
                    _mean(methods, controller, s, metric), theirs, (controller, rival),
                    ref if metric == "hv" else None,
                ))
    curve = methods.get(controller, {}).get("cost_curve")
    if curve:
        cs = list(curve["c"])
        flops = [v for v in curve["mean_flops"]]
        falls = all(b <= a * (1 + 1e-9) for a, b in zip(flops, flops[1:])) and flops[-1] < flops[0]
        targets.append({
            "target": f"{controller} mean FLOPs fall as c rises (mean over seeds and over the cost preferences; "
                      "non-increasing along the c grid and lower at c=1 than at c=0)",
            "met": bool(falls),
            "c": cs,
            "mean_flops": flops,
            "c0_to_c1_ratio": flops[-1] / flops[0] if flops[0] else None,
        })
    else:
        targets.append({"target": f"{controller} mean FLOPs fall as c rises", "met": None,
                        "why_undecided": "no cost curve in this run"})
    ours = (methods.get(controller, {}).get("train_seconds") or {}).get("mean")
    hs = methods.get("hard_sharing", {})
    theirs = (hs.get("train_seconds_all_preferences") or hs.get("train_seconds") or {}).get("mean") if hs else None
    entry: dict[str, Any] = {
        "target": f"{controller} total training time < the per-preference hard-sharing models' total (mean over seeds)",
        "met": None if ours is None or theirs is None else bool(ours < theirs),
        f"{controller}_seconds": ours,
        "hard_sharing_seconds": theirs,
    }
    if entry["met"] is None:
        entry["why_undecided"] = "a method or number is missing from this run"
    if hs.get("trained_preferences_note"):
        entry["note"] = hs["trained_preferences_note"]
    targets.append(entry)
    return targets


def describe(space: LossSpace, preferences: np.ndarray, settings: Sequence[Setting], skipped: Sequence[Mapping],
             n_cost: int) -> dict[str, Any]:
    """The protocol as run, for the results file."""
    n_tasks = preferences.shape[1]
    return {
        "preferences": (
            f"{len(preferences)} Pareto HyperNetworks rays (angles 0.1 .. pi/2 - 0.1)" if n_tasks == 2
            else f"{len(preferences)} Dirichlet(1) preferences, seed {PREFERENCE_SEED}"
        ),
        "evaluation_preferences": preferences.tolist(),
        "settings_dynamic": [s.as_dict() for s in settings],
        "settings_skipped": list(skipped),
        "settings_static": "one model per preference, evaluated once per distinct model",
        "headline_setting": f"{HEADLINE_SETTING} for dynamic methods, 'static' for the others",
        "loss_space": space.as_dict(),
        "uniformity": "EPO uniformity, mean over preferences, of the test losses"
                      + (" divided by the single-task test losses" if space.normalise_uniformity else ""),
        "controllability": "mean over tasks of Spearman(r_i, primary metric of task i) over the preferences; "
                           "controllability_loss uses the negated test loss",
        "delta_mtl": "per built model: Maninis et al.'s Delta_MTL (percent, primary metrics) against the single-task "
                     "anchor streams' test metrics of the same run and seed; averaged over the evaluation preferences",
        "cost": f"mean FLOPs (per image, FlopCounterMode) and parameters: over {n_cost} Dirichlet(1) preferences "
                f"(seed {COST_SEED}) from the controller's plan for planning methods, over the built models otherwise",
        "model_selection": "validation split only; the test split is read once per distinct built model",
        "seeds": "every number per seed, then mean and sample standard deviation over seeds",
    }
