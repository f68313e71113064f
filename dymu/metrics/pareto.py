"""Multi-objective metrics over a set of models built for many preferences, and the preferences to build them for.

Conventions: ``P`` models (one per evaluation preference), ``N`` tasks. Loss arrays are ``[P, N]``
(lower is better), preference arrays ``[P, N]`` with non-negative rows (on the simplex). Every
function accepts array-likes (numpy arrays, nested lists, CPU tensors) and returns plain Python
floats or numpy arrays.

- :func:`hypervolume`: the Lebesgue measure dominated by the loss vectors, bounded by a reference point
  that the caller must state (there is no default: a hypervolume means nothing without it).
- :func:`uniformity`: EPO's measure of how well losses follow the preference that asked for them.
- :func:`controllability`: Spearman rank correlation between each task's preference and its performance.
- :func:`delta_mtl`: Maninis et al.'s mean relative change against single-task baselines, in percent.
- :func:`pareto_front`: which loss vectors no other one dominates.
- :func:`simplex_grid`, :func:`dirichlet_preferences`, :func:`pareto_rays`: evaluation preferences.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import moocore
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "hypervolume",
    "uniformity",
    "uniformity_per_preference",
    "controllability",
    "controllability_per_task",
    "delta_mtl",
    "relative_changes",
    "pareto_front",
    "simplex_grid",
    "dirichlet_preferences",
    "pareto_rays",
]

# Above this many points a regular simplex grid is a mistake (20 tasks at 10 divisions is 20 million).
_MAX_GRID_POINTS = 1_000_000


def _as_matrix(values: ArrayLike, name: str) -> np.ndarray:
    """A finite float64 ``[P, N]`` array, or a ValueError that names ``name``."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [P, N] (one row per model), got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column (task), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def _matching_pair(a: ArrayLike, a_name: str, b: ArrayLike, b_name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_matrix(a, a_name), _as_matrix(b, b_name)
    if x.shape != y.shape:
        raise ValueError(f"{a_name} {x.shape} and {b_name} {y.shape} must have the same shape [P, N]")
    return x, y


def _check_preferences(preferences: np.ndarray, name: str = "preferences") -> None:
    if np.any(preferences < 0):
        raise ValueError(f"{name} must be non-negative (points of the simplex)")
    if np.any(preferences.sum(axis=1) <= 0):
        raise ValueError(f"every row of {name} must have a positive sum")


def hypervolume(losses: ArrayLike, reference: Sequence[float]) -> float:
    """Hypervolume of a set of loss vectors (all objectives minimised) with respect to ``reference``.

    The volume of the region of loss space that is dominated by at least one of the points and
    dominates ``reference``. Higher is better. Only points that strictly dominate the reference
    (every loss strictly below the reference's coordinate) contribute; any other point, and any
    point dominated by another one, adds nothing. An empty set has hypervolume 0.

    Args:
        losses: ``[P, N]`` loss vectors, one per model.
        reference: the reference point, ``N`` finite numbers. Required: state it with every number.

    Raises:
        ValueError: ``losses`` is not 2-D or holds NaN/inf; ``reference`` has the wrong length or is not finite.

    Example:
        >>> hypervolume([[1.0, 2.0], [2.0, 1.0]], reference=[3.0, 3.0])  # two 2x1 rectangles overlapping on 1x1
        3.0
    """
    points = np.asarray(losses, dtype=np.float64)
    if not (points.ndim == 2 and points.shape[0] == 0):  # an empty set is allowed, and has no values to check
        points = _as_matrix(points, "losses")
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 1 or ref.shape[0] != points.shape[1]:
        raise ValueError(
            f"reference must be a sequence of {points.shape[1]} numbers (one per objective), got shape {ref.shape}"
        )
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference contains NaN or inf")
    # Filtering here keeps the documented rule independent of how the backend treats boundary points.
    inside = points[np.all(points < ref, axis=1)]
    if inside.shape[0] == 0:
        return 0.0
    return float(moocore.hypervolume(np.ascontiguousarray(inside), ref=ref))


def uniformity_per_preference(losses: ArrayLike, preferences: ArrayLike) -> np.ndarray:
    """EPO's uniformity ``mu_r`` of every model: ``[P]`` values, at most 1.

    For a preference ``r`` and loss vector ``L``: ``Lhat_j = r_j L_j / sum_i r_i L_i`` and
    ``mu_r = 1 - KL(Lhat || uniform) = 1 - sum_j Lhat_j log(N Lhat_j)`` (natural log). ``mu_r = 1``
    exactly when all ``r_j L_j`` are equal, i.e. the losses are inversely proportional to the
    preference; its minimum is ``1 - log N``, when one term carries everything. A zero
    ``r_j L_j`` (a task with zero preference, or zero loss) contributes ``0 log 0 = 0``.

    Args:
        losses: ``[P, N]`` non-negative losses.
        preferences: ``[P, N]`` non-negative preferences; rows need not be normalised (``Lhat`` is
            invariant to the scale of ``r``).

    Raises:
        ValueError: shapes differ; NaN/inf; negative values; a row whose ``sum_i r_i L_i`` is 0.
    """
    loss, pref = _matching_pair(losses, "losses", preferences, "preferences")
    if np.any(loss < 0):
        raise ValueError("uniformity needs non-negative losses")
    _check_preferences(pref)
    weighted = pref * loss
    totals = weighted.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        rows = np.flatnonzero(totals[:, 0] <= 0).tolist()
        raise ValueError(f"uniformity: sum_i r_i L_i is 0 for rows {rows}; Lhat is undefined there")
    lhat = weighted / totals
    n_tasks = loss.shape[1]
    safe = np.where(lhat > 0, lhat, 1.0)  # log(1) = 0 implements 0 log 0 = 0
    kl = np.sum(lhat * np.log(n_tasks * safe), axis=1)
    return 1.0 - kl


def uniformity(losses: ArrayLike, preferences: ArrayLike) -> float:
    """Mean EPO uniformity over preferences (higher is better, 1 at most); see :func:`uniformity_per_preference`.

    Example:
        >>> uniformity([[1.0, 3.0]], [[0.75, 0.25]])  # r_j L_j = 0.75 for both tasks
        1.0
    """
    return float(np.mean(uniformity_per_preference(losses, preferences)))


def _directions(higher_is_better: bool | Sequence[bool], n_tasks: int) -> np.ndarray:
    if isinstance(higher_is_better, (bool, np.bool_)):
        return np.full(n_tasks, bool(higher_is_better))
    flags = list(higher_is_better)
    if len(flags) != n_tasks:
        raise ValueError(f"higher_is_better needs one flag per task ({n_tasks}), got {len(flags)}")
    return np.array([bool(f) for f in flags])


def controllability_per_task(
    preferences: ArrayLike,
    performance: ArrayLike,
    higher_is_better: bool | Sequence[bool],
    *,
    task_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Spearman rank correlation between ``r_i`` and task ``i``'s performance, per task: ``[N]`` in [-1, 1].

    Performance is oriented so that a positive correlation means "more preference, better task":
    a task whose metric is lower-is-better (a loss) is negated first. A task whose preference or
    performance is constant over the sampled preferences has no rank correlation: its value is NaN
    and a ``RuntimeWarning`` names it.

    Args:
        preferences: ``[P, N]`` the sampled preferences, ``P >= 2``.
        performance: ``[P, N]`` each task's metric (or loss) for the model built for each preference.
        higher_is_better: one flag for all tasks or one per task (``False`` for losses).
        task_names: names used in warnings (default: the task indices).
    """
    from scipy import stats  # imported here: scipy.stats takes about a second to import

    pref, perf = _matching_pair(preferences, "preferences", performance, "performance")
    if pref.shape[0] < 2:
        raise ValueError(f"controllability needs at least 2 preferences, got {pref.shape[0]}")
    n_tasks = pref.shape[1]
    signs = np.where(_directions(higher_is_better, n_tasks), 1.0, -1.0)
    names = [str(i) for i in range(n_tasks)] if task_names is None else [str(n) for n in task_names]
    if len(names) != n_tasks:
        raise ValueError(f"task_names needs {n_tasks} names, got {len(names)}")
    values = np.full(n_tasks, np.nan)
    for i in range(n_tasks):
        x, y = pref[:, i], signs[i] * perf[:, i]
        if np.all(x == x[0]) or np.all(y == y[0]):
            which = "preference" if np.all(x == x[0]) else "performance"
            warnings.warn(
                f"controllability: task {names[i]}'s {which} is constant over the preferences; "
                "its rank correlation is undefined (NaN) and left out of the mean",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        values[i] = float(stats.spearmanr(x, y).statistic)
    return values


def controllability(
    preferences: ArrayLike,
    performance: ArrayLike,
    higher_is_better: bool | Sequence[bool],
    *,
    task_names: Sequence[str] | None = None,
) -> float:
    """Mean over tasks of :func:`controllability_per_task`, leaving out NaN tasks (constant inputs).

    Returns NaN (after the per-task warnings) when every task is left out. 1 means every task's
    performance rises exactly in the order of its preference, -1 the reverse.

    Example:
        >>> r = [[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]]
        >>> loss = [[0.9, 0.2], [0.5, 0.5], [0.3, 0.8]]
        >>> controllability(r, loss, higher_is_better=False)
        1.0
    """
    values = controllability_per_task(preferences, performance, higher_is_better, task_names=task_names)
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return float("nan")
    return float(defined.mean())


def relative_changes(
    metrics: Mapping[str, float],
    single_task: Mapping[str, float],
    higher_is_better: bool | Mapping[str, bool],
) -> dict[str, float]:
    """Per-task signed relative change against the single-task baseline, in percent (positive = better).

    ``100 * (-1)^{g_i} (M_i - M_ST,i) / |M_ST,i|`` with ``g_i = 1`` when lower is better. The
    denominator is the baseline's magnitude so the sign keeps meaning "better" even for a negative
    baseline (for the usual positive metrics this is Maninis et al.'s formula unchanged).

    Args:
        metrics: task name to the multi-task model's metric.
        single_task: task name to the single-task baseline's metric, same keys as ``metrics``.
        higher_is_better: one flag for all tasks, or task name to its direction.

    Raises:
        ValueError: a task missing from one of the mappings (named), a non-finite value, a zero baseline.
    """
    tasks = list(metrics)
    if not tasks:
        raise ValueError("delta_mtl needs at least one task")
    missing_st = [t for t in tasks if t not in single_task]
    if missing_st:
        raise ValueError(f"delta_mtl: no single-task baseline for task(s) {missing_st}")
    extra = [t for t in single_task if t not in metrics]
    if extra:
        raise ValueError(f"delta_mtl: no multi-task metric for task(s) {extra} (they have a single-task baseline)")
    if isinstance(higher_is_better, Mapping):
        missing_dir = [t for t in tasks if t not in higher_is_better]
        if missing_dir:
            raise ValueError(f"delta_mtl: higher_is_better gives no direction for task(s) {missing_dir}")
        directions = {t: bool(higher_is_better[t]) for t in tasks}
    else:
        directions = {t: bool(higher_is_better) for t in tasks}
    changes = {}
    for task in tasks:
        value, base = float(metrics[task]), float(single_task[task])
        if not (math.isfinite(value) and math.isfinite(base)):
            raise ValueError(f"delta_mtl: task {task!r} has a non-finite metric ({value}) or baseline ({base})")
        if base == 0:
            raise ValueError(f"delta_mtl: task {task!r} has a single-task baseline of 0; the relative change is undefined")
        sign = 1.0 if directions[task] else -1.0
        changes[task] = 100.0 * sign * (value - base) / abs(base)
    return changes


def delta_mtl(
    metrics: Mapping[str, float],
    single_task: Mapping[str, float],
    higher_is_better: bool | Mapping[str, bool],
) -> float:
    """Delta_MTL (Maninis et al. 2019), in percent: the mean over tasks of :func:`relative_changes`.

    ``Delta_MTL = 100/N * sum_i (-1)^{g_i} (M_i - M_ST,i) / M_ST,i``, ``g_i = 1`` when lower is
    better. Positive means the multi-task model beats the single-task baselines on average. The
    baselines should be measured in the same run and selected on validation data.

    Example:
        >>> # mIoU 50 against 40: +25 %; depth error 0.75 against 0.5: -50 %
        >>> delta_mtl({"seg": 50.0, "depth": 0.75}, {"seg": 40.0, "depth": 0.5}, {"seg": True, "depth": False})
        -12.5
    """
    changes = relative_changes(metrics, single_task, higher_is_better)
    return float(np.mean(list(changes.values())))


def pareto_front(losses: ArrayLike) -> np.ndarray:
    """Boolean mask ``[P]`` of the rows that no other row dominates (all objectives minimised).

    Row ``a`` dominates row ``b`` when ``a <= b`` everywhere and ``a < b`` somewhere; identical rows do
    not dominate each other, so duplicates on the front are all kept.

    Example:
        >>> pareto_front([[1, 2], [2, 1], [2, 2]]).tolist()
        [True, True, False]
    """
    points = np.asarray(losses, dtype=np.float64)
    if points.size == 0:
        return np.zeros(points.shape[0] if points.ndim == 2 else 0, dtype=bool)
    points = _as_matrix(points, "losses")
    mask = np.ones(points.shape[0], dtype=bool)
    for i, point in enumerate(points):
        dominated = np.all(points <= point, axis=1) & np.any(points < point, axis=1)
        mask[i] = not dominated.any()
    return mask


def simplex_grid(n_tasks: int, divisions: int) -> np.ndarray:
    """Every preference whose coordinates are multiples of ``1/divisions``: ``[C(divisions + N - 1, N - 1), N]``.

    Includes the corners and edges of the simplex (preferences with zeros). The order is fixed,
    with the first coordinate non-decreasing.

    Example:
        >>> simplex_grid(2, 2).tolist()
        [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    """
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    if divisions < 1:
        raise ValueError(f"divisions must be >= 1, got {divisions}")
    count = math.comb(divisions + n_tasks - 1, n_tasks - 1)
    if count > _MAX_GRID_POINTS:
        raise ValueError(
            f"simplex_grid({n_tasks}, {divisions}) has {count} points (> {_MAX_GRID_POINTS}); "
            "use dirichlet_preferences for many tasks"
        )
    slots = divisions + n_tasks - 1
    rows = np.empty((count, n_tasks))
    # Stars and bars: n_tasks - 1 bars among `slots` positions; the gaps between bars are the counts.
    for row, bars in enumerate(itertools.combinations(range(slots), n_tasks - 1)):
        edges = (-1, *bars, slots)
        rows[row] = [edges[k + 1] - edges[k] - 1 for k in range(n_tasks)]
    return rows / divisions


def dirichlet_preferences(
    n: int, n_tasks: int, alpha: float | Sequence[float] = 1.0, seed: int | None = 0
) -> np.ndarray:
    """``n`` preferences drawn from Dirichlet(``alpha``): ``[n, n_tasks]``, rows on the simplex.

    ``alpha = 1`` is uniform on the simplex (the evaluation protocol's 20 preferences); the paper
    trains with ``alpha = 0.2``. The same ``seed`` gives the same preferences (``None``: fresh entropy).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    concentration = np.asarray(alpha, dtype=np.float64)
    if concentration.ndim == 0:
        concentration = np.full(n_tasks, float(concentration))
    if concentration.shape != (n_tasks,):
        raise ValueError(f"alpha must be a number or {n_tasks} numbers, got shape {concentration.shape}")
    if not np.all(np.isfinite(concentration)) or np.any(concentration <= 0):
        raise ValueError(f"alpha must be finite and > 0, got {concentration.tolist()}")
    if n_tasks == 1:
        return np.ones((n, 1))
    rng = np.random.default_rng(seed)
    samples = rng.dirichlet(concentration, size=n)
    # With tiny alphas a draw can underflow to all zeros (NaN after normalising): redraw those rows.
    bad = ~(np.all(np.isfinite(samples), axis=1) & (samples.sum(axis=1) > 0))
    while bad.any():
        samples[bad] = rng.dirichlet(concentration, size=int(bad.sum()))
        bad = ~(np.all(np.isfinite(samples), axis=1) & (samples.sum(axis=1) > 0))
    return samples / samples.sum(axis=1, keepdims=True)


def pareto_rays(n: int = 25) -> np.ndarray:
    """Pareto HyperNetworks' two-task evaluation rays: ``[n, 2]`` preferences.

    Angles evenly spaced from 0.1 to pi/2 - 0.1 (end points included), ray ``(cos a, sin a)``
    normalised to sum 1; the first ray favours task 0, the last task 1.

    Example:
        >>> pareto_rays(3).round(3).tolist()
        [[0.909, 0.091], [0.5, 0.5], [0.091, 0.909]]
    """
    if n < 2:
        raise ValueError(f"pareto_rays needs n >= 2, got {n}")
    angles = np.linspace(0.1, np.pi / 2 - 0.1, n)
    rays = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return rays / rays.sum(axis=1, keepdims=True)
